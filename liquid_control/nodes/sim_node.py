"""ROS 2 node that runs the CarRacing-v3 simulator as a closed-loop test bed.

Publishes (relative names, remap in launch):
- ``image_raw`` (sensor_msgs/Image, rgb8): the top-down camera, sensor-data QoS;
- ``imu/data`` (sensor_msgs/Imu): yaw rate and accelerations from the physics, orientation
  unknown (``orientation_covariance[0] = -1``), sensor-data QoS;
- ``odom`` (nav_msgs/Odometry): ground-truth rear axle pose and velocity, for the expert;
- ``track`` (nav_msgs/Path, transient local): the track centre line, once per episode;
- ``status`` (std_msgs/String, transient local): the episode status as one JSON object
  (seed, score, tiles visited, off-track, lap finished, ...);
- ``/clock`` (rosgraph_msgs/Clock): simulated time, 20 ms per physics step. Header stamps
  use the same time, so other nodes should run with ``use_sim_time:=true``.

Subscribes ``cmd_vel`` (geometry_msgs/Twist, or TwistStamped with ``twist_stamped``); see
``liquid_control.sim.commands`` for the mapping to throttle, brake and steering. Without a
command for ``command_timeout`` seconds (wall time) the car brakes.

The node steps the physics on its own wall-clock timer at ``rate_hz``; 50 Hz is real time.
"""

import json
import math
import sys
import time
from typing import Optional

import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, Imu
from std_msgs.msg import String
from std_srvs.srv import Trigger

from liquid_control.nodes.process import create_node, init_ros, limit_teardown, spin_until_stopped
from liquid_control.nodes.qos import command_qos, sensor_qos
from liquid_control.sim.car_racing import STEP_SECONDS, CarRacingSim
from liquid_control.sim.commands import CommandMapping
from liquid_control.sim.perturbations import CameraPerturbation

NODE_NAME = 'sim_node'
EPISODE_END_ACTIONS = ('hold', 'pause', 'reset')


def _float_descriptor(description: str, low: float, high: float) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, floating_point_range=[
        FloatingPointRange(from_value=low, to_value=high, step=0.0)])


def _int_descriptor(description: str, low: int, high: int) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, integer_range=[
        IntegerRange(from_value=low, to_value=high, step=1)])


def _latched_qos() -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _stamp(seconds: float) -> Time:
    whole = math.floor(seconds)
    return Time(sec=int(whole), nanosec=int(round((seconds - whole) * 1e9)) % 1_000_000_000)


class SimNode(Node):
    """Steps a ``CarRacingSim`` on a timer, publishes its sensors and follows ``cmd_vel``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._declare_parameters()
        self._read_parameters()

        try:
            perturbation = CameraPerturbation.from_values(self.noise_std, self.color_shift)
            mapping = CommandMapping(stale_brake=self.stale_brake)
        except ValueError as error:
            raise ParameterException(str(error), ['noise_std', 'color_shift']) from error
        self._step_seconds = STEP_SECONDS
        self.sim = CarRacingSim(seed=self.seed, image_size=(self.image_height, self.image_width),
                                perturbation=perturbation, mapping=mapping)
        self._episode = 0
        self._total_steps = 0
        self._command: Optional[tuple] = None
        self._command_received = -math.inf
        self._stale_logged = True  # nothing to report before the first command
        self._end_logged = False
        self._paused = False

        qos = sensor_qos('best_effort')
        self._image_pub = self.create_publisher(Image, 'image_raw', qos)
        self._imu_pub = self.create_publisher(Imu, 'imu/data', qos)
        self._odom_pub = self.create_publisher(Odometry, 'odom', 10)
        self._track_pub = self.create_publisher(Path, 'track', _latched_qos())
        self._status_pub = self.create_publisher(String, 'status', _latched_qos())
        self._clock_pub = None
        if self.publish_clock:
            self._clock_pub = self.create_publisher(
                ClockMsg, '/clock', QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        command_type = TwistStamped if self.twist_stamped else Twist
        self._command_sub = self.create_subscription(
            command_type, 'cmd_vel', self._on_command, command_qos())
        self.create_service(Trigger, '~/reset', self._on_reset)

        # The timer runs on the steady clock: with use_sim_time it would wait for the
        # /clock that only this timer advances.
        self._timer = self.create_timer(1.0 / self.rate_hz, self._on_step,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._publish_episode_start()
        self.get_logger().info(
            f'ready: seed {self.seed}, {self.rate_hz:g} Hz ({self.rate_hz * STEP_SECONDS:.2f}x '
            f'real time), image {self.image_width}x{self.image_height}, noise_std '
            f'{self.noise_std:g}, color_shift {list(self.color_shift)}, '
            f'commands on {self._command_sub.topic_name}')

    # Parameters

    def _declare_parameters(self) -> None:
        self.declare_parameter('seed', 0, _int_descriptor(
            'Track seed of the first episode; later episodes use seed + 1, seed + 2, ...',
            0, 2**31 - 1))
        self.declare_parameter('rate_hz', 50.0, _float_descriptor(
            'Physics steps per wall-clock second. Each step is 20 ms of simulated time, '
            'so 50 is real time. Unit: Hz.', 1.0, 1000.0))
        self.declare_parameter('image_width', 96, _int_descriptor(
            'Width of the published frame; other than 96 resizes the 96x96 render. '
            'Unit: pixels.', 8, 4096))
        self.declare_parameter('image_height', 96, _int_descriptor(
            'Height of the published frame. Unit: pixels.', 8, 4096))

        # Camera
        self.declare_parameter('noise_std', 0.0, _float_descriptor(
            'Standard deviation of Gaussian pixel noise as a fraction of full scale '
            '(0.1 = 25.5 intensity levels).', 0.0, 1.0))
        self.declare_parameter('color_shift', [0.0, 0.0, 0.0], ParameterDescriptor(
            description='Offset added to the R, G and B channels as fractions of full '
                        'scale, each in [-1, 1].'))

        # Commands
        self.declare_parameter('command_timeout', 0.5, _float_descriptor(
            'Maximum age of the last cmd_vel before the car brakes. Unit: s (wall time).',
            0.01, 60.0))
        self.declare_parameter('stale_brake', 0.8, _float_descriptor(
            'Brake (0..1) applied while cmd_vel is stale; 0.9 and above locks the wheels.',
            0.0, 1.0))
        self.declare_parameter('wait_for_command', False, ParameterDescriptor(
            description='Hold the physics until the first cmd_vel arrives, so a driver that '
                        'starts slowly does not cost score. /clock and the sensors are still '
                        'published meanwhile, so nodes on simulated time can start.',
            read_only=True))
        self.declare_parameter('twist_stamped', False, ParameterDescriptor(
            description='Subscribe to geometry_msgs/TwistStamped instead of Twist on cmd_vel.',
            read_only=True))

        # Episodes and frames
        self.declare_parameter('publish_clock', True, ParameterDescriptor(
            description='Publish simulated time on /clock.', read_only=True))
        self.declare_parameter('episode_end', 'hold', ParameterDescriptor(
            description="After a finished lap or leaving the playfield: 'hold' keeps "
                        "stepping with the brakes on, 'pause' stops stepping and publishing "
                        "(the last status stays latched), 'reset' starts the next track "
                        '(seed + 1).',
            additional_constraints='one of: hold, pause, reset'))
        self.declare_parameter('max_episode_steps', 0, _int_descriptor(
            "Steps after which an episode counts as ended (see episode_end); 0 means no "
            'limit.', 0, 10**9))
        self.declare_parameter('camera_frame_id', 'camera', ParameterDescriptor(
            description='header.frame_id of the images.'))
        self.declare_parameter('imu_frame_id', 'imu_link', ParameterDescriptor(
            description='header.frame_id of the IMU messages.'))
        self.declare_parameter('odom_frame_id', 'odom', ParameterDescriptor(
            description='header.frame_id of odom and track (the world frame).'))
        self.declare_parameter('base_frame_id', 'base_link', ParameterDescriptor(
            description='child_frame_id of odom (the rear axle).'))

    def _read_parameters(self) -> None:
        value = lambda name: self.get_parameter(name).value  # noqa: E731
        self.seed = int(value('seed'))
        self.rate_hz = float(value('rate_hz'))
        self.image_width = int(value('image_width'))
        self.image_height = int(value('image_height'))
        self.noise_std = float(value('noise_std'))
        self.color_shift = [float(v) for v in value('color_shift')]
        self.command_timeout = float(value('command_timeout'))
        self.stale_brake = float(value('stale_brake'))
        self.wait_for_command = bool(value('wait_for_command'))
        self.twist_stamped = bool(value('twist_stamped'))
        self.publish_clock = bool(value('publish_clock'))
        self.episode_end = str(value('episode_end'))
        self.max_episode_steps = int(value('max_episode_steps'))
        self.camera_frame_id = str(value('camera_frame_id'))
        self.imu_frame_id = str(value('imu_frame_id'))
        self.odom_frame_id = str(value('odom_frame_id'))
        self.base_frame_id = str(value('base_frame_id'))
        if self.episode_end not in EPISODE_END_ACTIONS:
            raise ParameterException(
                f"episode_end must be one of {', '.join(EPISODE_END_ACTIONS)}, got "
                f'{self.episode_end!r}', ['episode_end'])

    # Callbacks

    def _on_command(self, msg) -> None:
        twist = msg.twist if self.twist_stamped else msg
        self._command = (float(twist.linear.x), float(twist.angular.z))
        self._command_received = time.monotonic()
        if self._stale_logged:
            self.get_logger().info(f'following cmd_vel: linear.x {self._command[0]:.2f} m/s, '
                                   f'angular.z {self._command[1]:.2f} rad/s')
            self._stale_logged = False

    def _on_reset(self, request, response):
        self._start_episode(self.sim.seed)
        response.success = True
        response.message = f'episode restarted on seed {self.sim.seed}'
        return response

    def _on_step(self) -> None:
        if self._paused:
            return
        if self.wait_for_command and self._command is None:
            self._total_steps += 1
            self._publish_sensors()
            return
        age = time.monotonic() - self._command_received
        if self._command is not None and age <= self.command_timeout:
            self.sim.step_twist(*self._command)
        else:
            if not self._stale_logged:
                self.get_logger().warning(
                    f'cmd_vel stale (last {age:.2f} s ago, timeout {self.command_timeout:g} s): '
                    'braking')
                self._stale_logged = True
            self.sim.step_stale()
        self._total_steps += 1
        self._publish_sensors()

        status = self.sim.status()
        truncated = 0 < self.max_episode_steps <= status.steps
        if status.done or truncated:
            self._handle_episode_end(status, truncated)

    # Episodes

    def _handle_episode_end(self, status, truncated: bool) -> None:
        if not self._end_logged:
            reason = ('lap finished' if status.lap_finished else
                      'car left the playfield' if status.out_of_bounds else
                      f'step limit {self.max_episode_steps} reached')
            self.get_logger().info(
                f'episode {self._episode} (seed {status.seed}) ended: {reason}, score '
                f'{status.score:.1f}, tiles {status.tiles_visited}/{status.tiles_total}')
            self._end_logged = True
        if self.episode_end == 'reset':
            self._start_episode(self.sim.seed + 1)
        elif self.episode_end == 'pause':
            self._paused = True

    def _start_episode(self, seed: int) -> None:
        self.sim.reset(seed)
        self._episode += 1
        self._end_logged = False
        self._paused = False
        # The last frame of the old episode went out at the current stamp. The new
        # episode's first frame takes the next one, because a recorder drops a repeated stamp.
        self._total_steps += 1
        self._publish_episode_start()

    def _publish_episode_start(self) -> None:
        self._publish_track()
        self._publish_sensors()

    # Publishing

    def _sim_stamp(self) -> Time:
        return _stamp(self._total_steps * self._step_seconds)

    def _publish_sensors(self) -> None:
        stamp = self._sim_stamp()
        if self._clock_pub is not None:
            self._clock_pub.publish(ClockMsg(clock=stamp))
        self._publish_image(stamp)
        self._publish_imu(stamp)
        self._publish_odom(stamp)
        self._publish_status()

    def _publish_image(self, stamp: Time) -> None:
        frame = self.sim.frame
        msg = Image()
        msg.header.stamp = stamp
        msg.header.frame_id = self.camera_frame_id
        msg.height, msg.width = int(frame.shape[0]), int(frame.shape[1])
        msg.encoding = 'rgb8'
        msg.is_bigendian = 0
        msg.step = msg.width * 3
        msg.data = frame.tobytes()
        self._image_pub.publish(msg)

    def _publish_imu(self, stamp: Time) -> None:
        reading = self.sim.imu()
        msg = Imu()
        msg.header.stamp = stamp
        msg.header.frame_id = self.imu_frame_id
        msg.orientation_covariance[0] = -1.0  # orientation not provided
        msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z = (
            float(v) for v in reading[:3])
        msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z = (
            float(v) for v in reading[3:])
        self._imu_pub.publish(msg)

    def _publish_odom(self, stamp: Time) -> None:
        pose = self.sim.pose()
        velocity = self.sim.velocity()
        msg = Odometry()
        msg.header.stamp = stamp
        msg.header.frame_id = self.odom_frame_id
        msg.child_frame_id = self.base_frame_id
        msg.pose.pose.position.x = pose.x
        msg.pose.pose.position.y = pose.y
        msg.pose.pose.orientation.z = math.sin(pose.yaw / 2.0)
        msg.pose.pose.orientation.w = math.cos(pose.yaw / 2.0)
        # Twist in the child (body) frame, as nav_msgs/Odometry specifies.
        cos_yaw, sin_yaw = math.cos(pose.yaw), math.sin(pose.yaw)
        msg.twist.twist.linear.x = float(cos_yaw * velocity[0] + sin_yaw * velocity[1])
        msg.twist.twist.linear.y = float(-sin_yaw * velocity[0] + cos_yaw * velocity[1])
        msg.twist.twist.angular.z = self.sim.yaw_rate
        self._odom_pub.publish(msg)

    def _publish_track(self) -> None:
        msg = Path()
        msg.header.stamp = self._sim_stamp()
        msg.header.frame_id = self.odom_frame_id
        for x, y in self.sim.track.points:
            pose = PoseStamped()
            pose.header = msg.header
            pose.pose.position.x = float(x)
            pose.pose.position.y = float(y)
            pose.pose.orientation.w = 1.0
            msg.poses.append(pose)
        self._track_pub.publish(msg)

    def _publish_status(self) -> None:
        status = self.sim.status().to_dict()
        status['episode'] = self._episode
        self._status_pub.publish(String(data=json.dumps(status)))

    def shutdown(self) -> None:
        """Release the simulator."""
        self.sim.close()


def main(args=None) -> int:
    """Run the simulator node until SIGINT or SIGTERM."""
    stop = init_ros(args if args is not None else sys.argv)
    node = create_node(NODE_NAME, SimNode, (ParameterException, ValueError))
    if node is None:
        return 2
    try:
        spin_until_stopped(node, stop)
    finally:
        # No callback runs once the executor is shut down, so the simulator closes safely.
        limit_teardown(node)
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
