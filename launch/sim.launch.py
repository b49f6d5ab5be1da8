"""Launch the CarRacing simulator with the expert or the policy driving it.

  ros2 launch liquid_control sim.launch.py                       # the policy drives
  ros2 launch liquid_control sim.launch.py driver:=expert record:=true output_dir:=/tmp/data

With ``record:=true`` the recorder stores the camera, the IMU and the expert's noise-free
command (``expert/cmd_vel``, a TwistStamped with the frame's stamp) as episodes. Every node
runs on the simulator's /clock.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, LaunchConfigurationEquals
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'liquid_control'


def generate_launch_description() -> LaunchDescription:
    sim_params = PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'sim.yaml'])
    policy_params = PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'policy.yaml'])
    recorder_params = PathJoinSubstitution([FindPackageShare(PACKAGE), 'config',
                                            'recorder.yaml'])
    bundled_model = PathJoinSubstitution([FindPackageShare(PACKAGE), 'models',
                                          'carracing_ncp.lcm'])
    arguments = [
        DeclareLaunchArgument('driver', default_value='policy',
                              choices=['policy', 'expert'],
                              description='Who drives: the policy node or the expert.'),
        DeclareLaunchArgument('model', default_value=bundled_model,
                              description='Policy checkpoint (.lcm); the default is the '
                                          'CarRacing model shipped with the package.'),
        DeclareLaunchArgument('seed', default_value='0',
                              description='Track seed. Tracks 0-7 trained the bundled model; '
                                          '1000 is the demo\'s unseen track.'),
        DeclareLaunchArgument('episode_end', default_value='pause',
                              choices=['pause', 'hold', 'reset'],
                              description='After the lap: pause stops the simulator, so a '
                                          'recording ends with the lap; hold brakes and '
                                          'keeps publishing; reset drives the next track.'),
        DeclareLaunchArgument('noise_std', default_value='0.0',
                              description='Camera noise, fraction of full scale.'),
        DeclareLaunchArgument('rate_hz', default_value='50.0',
                              description='Physics steps per second (50 = real time).'),
        DeclareLaunchArgument('lateral_noise_std', default_value='0.0',
                              description="Steering noise of the expert's driven command "
                                          '(m/s^2).'),
        DeclareLaunchArgument('record', default_value='false',
                              description='Record episodes while the expert drives.'),
        DeclareLaunchArgument('output_dir', default_value='~/liquid_control_data',
                              description='Dataset folder of the recorder.'),
    ]
    sim = Node(
        package=PACKAGE, executable='sim_node', name='sim_node', output='screen',
        parameters=[sim_params, {'seed': LaunchConfiguration('seed'),
                                 'noise_std': LaunchConfiguration('noise_std'),
                                 'rate_hz': LaunchConfiguration('rate_hz'),
                                 'episode_end': LaunchConfiguration('episode_end'),
                                 # The car does not move before the driver's first command.
                                 'wait_for_command': True}])
    expert = Node(
        package=PACKAGE, executable='expert_node', name='expert_node', output='screen',
        condition=LaunchConfigurationEquals('driver', 'expert'),
        parameters=[sim_params, {'label_topic': 'expert/cmd_vel',
                                 'lateral_noise_std': LaunchConfiguration('lateral_noise_std')}])
    policy = Node(
        package=PACKAGE, executable='policy_node', name='policy_node', output='screen',
        condition=LaunchConfigurationEquals('driver', 'policy'),
        parameters=[policy_params, sim_params, {'model_path': LaunchConfiguration('model')}])
    recorder = Node(
        package=PACKAGE, executable='recorder_node', name='recorder_node', output='screen',
        condition=IfCondition(LaunchConfiguration('record')),
        remappings=[('cmd_vel', 'expert/cmd_vel')],
        parameters=[recorder_params, {'use_sim_time': True, 'autostart': True,
                                      'command_type': 'twist_stamped',
                                      'output_dir': LaunchConfiguration('output_dir')}])
    return LaunchDescription(arguments + [sim, expert, policy, recorder])
