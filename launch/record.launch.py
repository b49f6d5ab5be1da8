"""Start recorder_node to record teleoperated driving as imitation-learning episodes.

Example:
  ros2 launch liquid_control record.launch.py output_dir:=~/data/run1 \
      image_topic:=/camera/image_raw compressed:=true command_topic:=/teleop/cmd_vel
Start and stop with:
  ros2 service call /recorder_node/start std_srvs/srv/Trigger
  ros2 service call /recorder_node/stop std_srvs/srv/Trigger
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory('liquid_control'), 'config',
                                  'recorder.yaml')
    arguments = [
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='Parameter file of recorder_node'),
        DeclareLaunchArgument('output_dir', default_value='~/liquid_control_data',
                              description='Dataset folder for the episodes'),
        DeclareLaunchArgument('compressed', default_value='false',
                              description='true records sensor_msgs/CompressedImage from '
                              'IMAGE_TOPIC/compressed, false sensor_msgs/Image from '
                              'IMAGE_TOPIC'),
        DeclareLaunchArgument('command_type', default_value='twist',
                              description='Teacher command: twist or twist_stamped on '
                              'command_topic, joy on joy_topic'),
        DeclareLaunchArgument('autostart', default_value='false',
                              description='Start recording at launch instead of on '
                              '~/start'),
        DeclareLaunchArgument('auto_record_speed', default_value='0.0',
                              description='Record while |linear_x| exceeds this (m/s); 0 '
                              'disables automatic recording'),
        DeclareLaunchArgument('image_topic', default_value='image_raw',
                              description='Camera topic (raw; /compressed is appended for '
                              'compressed input)'),
        DeclareLaunchArgument('imu_topic', default_value='imu/data',
                              description='sensor_msgs/Imu topic'),
        DeclareLaunchArgument('command_topic', default_value='cmd_vel',
                              description='Teacher Twist or TwistStamped topic, for '
                              'example the output of a teleop node'),
        DeclareLaunchArgument('joy_topic', default_value='joy',
                              description='sensor_msgs/Joy topic for command_type joy'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the recorder node'),
    ]
    image_topic = LaunchConfiguration('image_topic')
    recorder = Node(
        package='liquid_control',
        executable='recorder_node',
        name='recorder_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'output_dir': LaunchConfiguration('output_dir'),
                'compressed': ParameterValue(LaunchConfiguration('compressed'),
                                             value_type=bool),
                'command_type': LaunchConfiguration('command_type'),
                'autostart': ParameterValue(LaunchConfiguration('autostart'),
                                            value_type=bool),
                'auto_record_speed': ParameterValue(LaunchConfiguration('auto_record_speed'),
                                                    value_type=float),
            },
        ],
        remappings=[
            ('image_raw', image_topic),
            ('image_raw/compressed', [image_topic, '/compressed']),
            ('imu/data', LaunchConfiguration('imu_topic')),
            ('cmd_vel', LaunchConfiguration('command_topic')),
            ('joy', LaunchConfiguration('joy_topic')),
        ],
    )
    return LaunchDescription(arguments + [recorder])
