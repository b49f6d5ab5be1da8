"""Launch policy_node: camera and IMU in, cmd_vel out at the control rate.

    ros2 launch liquid_control drive.launch.py model:=/path/to/policy.lcm \
        image_topic:=/camera/image_raw imu_topic:=/imu/data cmd_vel_topic:=/cmd_vel

The module imports only the standard library at the top, so tests can read ``ARGUMENTS``
and call ``node_settings`` without ``launch`` installed. The node applies the package's
Fast DDS large-frame profile itself (see config/fastdds_large_frames.xml).
"""

import os
from typing import Dict, List, Tuple

PACKAGE = 'liquid_control'
EXECUTABLE = 'policy_node'
NODE_NAME = 'policy_node'
DEFAULT_PARAMS = os.path.join('config', 'policy.yaml')

# (name, default value, description)
ARGUMENTS = (
    ('model', '', 'Policy checkpoint (.lcm). Empty keeps model_path from params_file, '
     'which the node requires to be set.'),
    ('params_file', '', 'Parameter YAML for policy_node. Empty selects the package\'s '
     'config/policy.yaml.'),
    ('image_topic', 'camera/image_raw', 'Camera topic of sensor_msgs/Image. With '
     'compressed true, the node reads IMAGE_TOPIC/compressed, as image_transport names it.'),
    ('compressed', 'false', 'true subscribes to sensor_msgs/CompressedImage (JPEG or PNG) '
     'on IMAGE_TOPIC/compressed instead of sensor_msgs/Image on IMAGE_TOPIC, as '
     'record.launch.py does.'),
    ('imu_topic', 'imu/data', 'IMU topic (sensor_msgs/Imu); unused by models trained '
     'without IMU input.'),
    ('cmd_vel_topic', 'cmd_vel', 'Output velocity command topic (geometry_msgs/Twist, or '
     'TwistStamped when the twist_stamped parameter is true).'),
    ('enabled_on_start', '', 'false publishes zero commands until the ~/enable service '
     '(std_srvs/SetBool) is called with true; true drives from the first frame. Empty '
     'keeps the value of params_file (true in config/policy.yaml).'),
    ('use_sim_time', 'false', 'true follows /clock (simulators and bag playback).'),
    ('log_level', 'info', 'Log level of policy_node: debug, info, warn, error or fatal.'),
    ('namespace', '', 'Namespace of policy_node; relative topics resolve inside it.'),
)


def _as_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ('true', 'false'):
        raise ValueError(f"launch argument '{name}' must be true or false, got {text!r}")
    return lowered == 'true'


def node_settings(values: Dict[str, str], share_dir: str) -> Tuple[
        List[object], List[Tuple[str, str]], List[str]]:
    """Return (parameters, remappings, ros_arguments) of policy_node for argument values.

    ``values`` maps every name in ``ARGUMENTS`` to its resolved text; ``share_dir`` is the
    package's share folder, for the default parameter file.
    """
    compressed = _as_bool('compressed', values['compressed'])
    overrides = {'compressed': compressed,
                 'use_sim_time': _as_bool('use_sim_time', values['use_sim_time'])}
    if values['model']:
        overrides['model_path'] = values['model']
    if values['enabled_on_start']:
        overrides['enabled_on_start'] = _as_bool('enabled_on_start',
                                                 values['enabled_on_start'])
    params_file = values['params_file'] or os.path.join(share_dir, DEFAULT_PARAMS)
    if compressed:
        camera_remapping = ('image_raw/compressed', values['image_topic'] + '/compressed')
    else:
        camera_remapping = ('image_raw', values['image_topic'])
    remappings = [camera_remapping,
                  ('imu/data', values['imu_topic']),
                  ('cmd_vel', values['cmd_vel_topic'])]
    return [params_file, overrides], remappings, ['--log-level', values['log_level']]


def generate_launch_description():
    """Declare the arguments and start policy_node with them."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    share_dir = get_package_share_directory(PACKAGE)

    def start_node(context):
        values = {name: LaunchConfiguration(name).perform(context)
                  for name, _, _ in ARGUMENTS}
        parameters, remappings, ros_arguments = node_settings(values, share_dir)
        return [Node(package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME,
                     namespace=values['namespace'], parameters=parameters,
                     remappings=remappings, ros_arguments=ros_arguments, output='screen',
                     emulate_tty=True)]

    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    return LaunchDescription(arguments + [OpaqueFunction(function=start_node)])
