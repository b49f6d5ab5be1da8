"""ROS 2 node that drives the simulator with the pure pursuit expert.

Subscribes ``track`` (nav_msgs/Path, transient local) and ``odom`` (nav_msgs/Odometry) from
``sim_node`` and publishes a ``geometry_msgs/Twist`` on ``command_topic`` for every
odometry message. With ``label_topic`` set, the noise-free expert command also goes to that
topic, as a TwistStamped with the odometry's stamp, so a recorder pairs every frame with
the command computed from it. Steering noise (``lateral_noise_std``) perturbs only the
driven command, so the recorded labels show how the expert recovers from the deviations
that the noise causes.
"""

import json
import math
import sys
from dataclasses import fields
from typing import Optional

import numpy as np
import rclpy
from geometry_msgs.msg import Twist, TwistStamped
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from liquid_control.nodes.process import create_node, init_ros, limit_teardown, spin_until_stopped
from liquid_control.nodes.qos import command_qos
from liquid_control.sim.expert import SteeringNoise, ExpertConfig, PurePursuitExpert
from liquid_control.sim.track import Track

NODE_NAME = 'expert_node'

EXPERT_DESCRIPTIONS = {
    'lookahead_min': 'Look-ahead distance at standstill. Unit: m.',
    'lookahead_gain': 'Growth of the look-ahead distance with speed. Unit: s.',
    'lookahead_max': 'Maximum look-ahead distance. Unit: m.',
    'max_speed': 'Maximum target speed. Unit: m/s.',
    'min_speed': 'Minimum target speed, used in the sharpest corners. Unit: m/s.',
    'max_lateral_accel': 'Lateral acceleration allowed in corners. Unit: m/s^2.',
    'max_braking': 'Deceleration assumed when slowing down for a corner. Unit: m/s^2.',
    'preview_distance': 'Track length ahead checked for corners. Unit: m.',
    'curvature_smoothing': 'Track points on each side averaged into the curvature.',
}


def _descriptor(description: str, low: float = 0.0, high: float = 1000.0) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, floating_point_range=[
        FloatingPointRange(from_value=low, to_value=high, step=0.0)])


class ExpertNode(Node):
    """Publishes the pure pursuit command for every odometry message."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        defaults = ExpertConfig()
        for field in fields(ExpertConfig):
            default = getattr(defaults, field.name)
            if isinstance(default, int):
                self.declare_parameter(field.name, default, ParameterDescriptor(
                    description=EXPERT_DESCRIPTIONS[field.name]))
            else:
                self.declare_parameter(field.name, float(default),
                                       _descriptor(EXPERT_DESCRIPTIONS[field.name]))
        self.declare_parameter('command_topic', 'cmd_vel', ParameterDescriptor(
            description='Topic of the command that drives the car.', read_only=True))
        self.declare_parameter('label_topic', '', ParameterDescriptor(
            description='Topic of the noise-free expert command for a recorder; empty '
                        'disables it.', read_only=True))
        self.declare_parameter('label_stamped', True, ParameterDescriptor(
            description='Publish the label as geometry_msgs/TwistStamped stamped with the '
                        'odometry time; false publishes a Twist.', read_only=True))
        self.declare_parameter('lateral_noise_std', 0.0, _descriptor(
            'Standard deviation of the steering noise added to the driven command, as a '
            'lateral acceleration. The default expert stayed on the road with 10 and '
            'spun out on two of three tracks with 20. Unit: m/s^2.', 0.0, 100.0))
        self.declare_parameter('noise_time_constant', 0.5, _descriptor(
            'Correlation time of the steering noise (an Ornstein-Uhlenbeck process). '
            'Unit: s.', 0.001, 60.0))
        self.declare_parameter('noise_seed', 0, ParameterDescriptor(
            description='Seed of the steering noise.'))

        value = lambda name: self.get_parameter(name).value  # noqa: E731
        try:
            self.config = ExpertConfig(**{field.name: value(field.name)
                                          for field in fields(ExpertConfig)})
        except (TypeError, ValueError) as error:
            raise ParameterException(str(error), [f.name for f in fields(ExpertConfig)]) from error
        self.noise = SteeringNoise(float(value('lateral_noise_std')),
                                   float(value('noise_time_constant')),
                                   int(value('noise_seed')))
        self.expert: Optional[PurePursuitExpert] = None
        # Set while the simulator reports its episode over (status 'done'). The car then
        # brakes to a stop, so a label would teach a recorder to drive where it does not.
        self._episode_done = False

        self._command_pub = self.create_publisher(Twist, value('command_topic'), command_qos())
        self._label_pub = None
        self._label_stamped = bool(value('label_stamped'))
        if value('label_topic'):
            label_type = TwistStamped if self._label_stamped else Twist
            self._label_pub = self.create_publisher(label_type, value('label_topic'),
                                                    command_qos())
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(Path, 'track', self._on_track, latched)
        self.create_subscription(Odometry, 'odom', self._on_odom, 10)
        self.create_subscription(String, 'status', self._on_status, latched)
        self.get_logger().info(
            f'ready: commands on {self._command_pub.topic_name}, labels on '
            f'{self._label_pub.topic_name if self._label_pub else "(none)"}, max speed '
            f'{self.config.max_speed:g} m/s, steering noise {self.noise.std:g} m/s^2')

    def _on_track(self, msg: Path) -> None:
        points = np.array([(pose.pose.position.x, pose.pose.position.y) for pose in msg.poses])
        try:
            track = Track(points)
        except ValueError as error:
            self.get_logger().error(f'track message rejected: {error}')
            return
        self.expert = PurePursuitExpert(track, self.config)
        self.noise.reset()
        self.get_logger().info(f'new track: {len(track)} points, {track.length:.0f} m')

    def _on_status(self, msg: String) -> None:
        try:
            done = bool(json.loads(msg.data).get('done', False))
        except (ValueError, AttributeError) as error:
            self.get_logger().error(f'status message rejected: {error}: {msg.data[:200]!r}')
            return
        if done != self._episode_done:
            self.get_logger().info('episode over: labels paused until the next one starts'
                                   if done else 'episode running: labels resumed')
        self._episode_done = done

    def _on_odom(self, msg: Odometry) -> None:
        if self.expert is None:
            return
        pose = msg.pose.pose
        yaw = 2.0 * math.atan2(pose.orientation.z, pose.orientation.w)
        speed = float(msg.twist.twist.linear.x)
        linear_x, angular_z = self.expert.command(pose.position.x, pose.position.y, yaw, speed)
        if self._label_pub is not None and not self._episode_done:
            label = _twist(linear_x, angular_z)
            if self._label_stamped:
                label = TwistStamped(header=msg.header, twist=label)
                label.header.frame_id = msg.child_frame_id
            self._label_pub.publish(label)

        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        angular_z += linear_x * self.noise.curvature(stamp, speed)
        self._command_pub.publish(_twist(linear_x, angular_z))


def _twist(linear_x: float, angular_z: float) -> Twist:
    msg = Twist()
    msg.linear.x = float(linear_x)
    msg.angular.z = float(angular_z)
    return msg


def main(args=None) -> int:
    """Run the expert node until SIGINT or SIGTERM."""
    stop = init_ros(args if args is not None else sys.argv)
    node = create_node(NODE_NAME, ExpertNode, (ParameterException,))
    if node is None:
        return 2
    try:
        spin_until_stopped(node, stop)
    finally:
        limit_teardown(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
