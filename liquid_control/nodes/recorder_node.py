"""recorder_node: record camera frames, IMU and the teacher's commands as episodes.

A thin rclpy layer over ``liquid_control.data.recording``: callbacks convert messages,
the ``FrameSynchroniser`` labels frames, and the ``RecordingSession`` writes them on its
own thread. Topics (relative, remap them in launch): ``image_raw`` or
``image_raw/compressed``, ``imu/data``, and ``cmd_vel`` (Twist, TwistStamped) or ``joy``.
Services ``~/start`` and ``~/stop`` (std_srvs/Trigger); status on ``~/status``
(diagnostic_msgs/DiagnosticStatus, transient local).
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, Imu, Joy
from std_srvs.srv import Trigger

from liquid_control.data.episodes import EncodedImage, image_extension
from liquid_control.data.recording import (HISTORY_S, AutoRecordGate, FrameSynchroniser,
                                           RawImage, RecordingSession, SessionSettings)
from liquid_control.data.sync import (COMMAND_MATCHES, COMMAND_TYPES, IMU_MODES,
                                      INVALID_FRAME_POLICIES, RAW_IMAGE_FORMATS, LabelOptions,
                                      command_from_message, command_mapping)
from liquid_control.errors import ConfigError, DataError, LiquidControlError
from liquid_control.nodes.process import (CALLBACK_STOP_TIMEOUT_S, Spinner, create_node,
                                          init_ros, limit_teardown, stop_and_destroy)
from liquid_control.nodes.messages import imu_msg_to_array
from liquid_control.nodes.params import ParameterSpec
from liquid_control.nodes.qos import command_qos, sensor_qos

NODE_NAME = 'recorder_node'
SYNC_PERIOD_S = 0.01
WARN_THROTTLE_S = 2.0

# Every parameter is read-only: the recorder is configured at start-up (config/recorder.yaml).
SPECS = (
    ParameterSpec('output_dir', '~/liquid_control_data', 'Dataset folder; each episode is a '
                  'subfolder episode_NNNN, numbered after those already there.', read_only=True),
    ParameterSpec('compressed', False, "Subscribe to sensor_msgs/CompressedImage on "
                  "'image_raw/compressed' (stored as received) instead of sensor_msgs/Image on "
                  "'image_raw'.", read_only=True),
    ParameterSpec('use_imu', True, "Subscribe to sensor_msgs/Imu on 'imu/data'.",
                  read_only=True),
    ParameterSpec('command_type', 'twist', "Teacher command message: 'twist' or "
                  "'twist_stamped' on 'cmd_vel', 'joy' (sensor_msgs/Joy) on 'joy'.",
                  choices=COMMAND_TYPES, read_only=True),
    ParameterSpec('joy_linear_axis', 1, 'Joy axis index that gives linear_x.', minimum=0,
                  maximum=63, read_only=True),
    ParameterSpec('joy_angular_axis', 0, 'Joy axis index that gives angular_z.', minimum=0,
                  maximum=63, read_only=True),
    ParameterSpec('linear_scale', 1.0, 'linear_x = linear_scale * source value; a negative '
                  'scale flips the sign.', minimum=-1000.0, maximum=1000.0, read_only=True),
    ParameterSpec('angular_scale', 1.0, 'angular_z = angular_scale * source value; REP 103 '
                  'wants positive angular_z to turn left.', minimum=-1000.0, maximum=1000.0,
                  read_only=True),
    ParameterSpec('command_match', 'nearest', "'nearest': the command closest in time to the "
                  "frame; 'latest': the last command at or before it.", choices=COMMAND_MATCHES,
                  read_only=True),
    ParameterSpec('command_tolerance', 0.1, 'Maximum time between a frame and its command; '
                  'a frame without one is invalid.', unit='s', minimum=0.0, maximum=10.0,
                  read_only=True),
    ParameterSpec('imu_mode', 'interpolate', 'Interpolate the IMU between the samples around '
                  'the frame, or take the nearest sample.', choices=IMU_MODES, read_only=True),
    ParameterSpec('imu_tolerance', 0.02, 'Maximum time between a frame and an IMU sample used '
                  'for it.', unit='s', minimum=0.0, maximum=10.0, read_only=True),
    ParameterSpec('invalid_frames', 'flag', "Frames without a valid command: 'flag' stores "
                  "them with valid=0, 'skip' leaves them out.", choices=INVALID_FRAME_POLICIES,
                  read_only=True),
    ParameterSpec('use_header_stamps', True, 'Stamp frames, IMU and stamped commands with '
                  'their header stamps; false uses the time of reception for every message '
                  '(for drivers whose clock differs from this computer).', read_only=True),
    ParameterSpec('split_gap', 1.0, 'A longer time between frames starts a new episode; 0 '
                  'never splits.', unit='s', minimum=0.0, maximum=3600.0, read_only=True),
    ParameterSpec('autostart', False, 'Start recording when the node starts.', read_only=True),
    ParameterSpec('auto_record_speed', 0.0, 'Record while |linear_x| of the teacher command '
                  'exceeds this; 0 disables automatic start and stop.', unit='m/s',
                  minimum=0.0, maximum=100.0, read_only=True),
    ParameterSpec('auto_stop_delay', 1.0, 'Automatic recording stops after the speed stayed '
                  'below auto_record_speed (or no command came) for this long.', unit='s',
                  minimum=0.0, maximum=3600.0, read_only=True),
    ParameterSpec('raw_image_format', 'png', "File format of raw frames: 'png' (lossless) or "
                  "'jpeg'. Compressed frames are stored as received.",
                  choices=RAW_IMAGE_FORMATS, read_only=True),
    ParameterSpec('jpeg_quality', 90, 'JPEG quality of raw frames with raw_image_format jpeg.',
                  minimum=1, maximum=100, read_only=True),
    ParameterSpec('png_compression', 1, 'PNG compression level 0..9 of raw frames; higher is '
                  'smaller and slower.', minimum=0, maximum=9, read_only=True),
    ParameterSpec('queue_size', 64, 'Frames that may wait for the disk writer; when full, '
                  'new frames are dropped and counted.', minimum=1, maximum=100000,
                  read_only=True),
    ParameterSpec('min_free_disk_mb', 500.0, 'Recording stops, and does not start, below this '
                  'free space on the output file system.', unit='MiB', minimum=0.0,
                  maximum=1.0e12, read_only=True),
    ParameterSpec('status_period', 1.0, "Period of the status message on '~/status'.",
                  unit='s', minimum=0.05, maximum=60.0, read_only=True),
    ParameterSpec('sensor_reliability', 'best_effort', 'Reliability of the camera and IMU '
                  'subscriptions.', choices=('best_effort', 'reliable'), read_only=True),
)


def _descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.full_description(),
                                     read_only=spec.read_only)
    if spec.minimum is not None and isinstance(spec.default, float):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=spec.minimum, to_value=spec.maximum, step=0.0)]
    elif spec.minimum is not None and isinstance(spec.default, int) \
            and not isinstance(spec.default, bool):
        descriptor.integer_range = [IntegerRange(
            from_value=int(spec.minimum), to_value=int(spec.maximum), step=1)]
    if spec.choices:
        descriptor.additional_constraints = f'one of: {", ".join(spec.choices)}'
    return descriptor


@dataclass
class _Throttle:
    period_s: float
    last_s: float = -1e9

    def ready(self, now_s: float) -> bool:
        if now_s - self.last_s >= self.period_s:
            self.last_s = now_s
            return True
        return False


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def check_parameters(params: Dict[str, object]) -> None:
    """Raise ``ConfigError`` for a parameter outside its choices or an empty output_dir.

    rclpy enforces the types and the numeric ranges of ``SPECS`` but not the choices.
    """
    for spec in SPECS:
        if spec.choices and params[spec.name] not in spec.choices:
            raise ConfigError(f'invalid {spec.name} {params[spec.name]!r}: use one of '
                              f'{", ".join(spec.choices)}')
    if not str(params['output_dir']).strip():
        raise ConfigError("output_dir is empty; set it to the dataset folder, for example "
                          "'~/liquid_control_data'")


class RecorderNode(Node):
    """Records synchronised frames, IMU and teacher commands into episode folders."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for spec in SPECS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self.params: Dict[str, object] = {spec.name: self.get_parameter(spec.name).value
                                          for spec in SPECS}
        check_parameters(self.params)
        params = self.params
        self.options = LabelOptions(
            command_match=params['command_match'],
            command_tolerance_s=params['command_tolerance'],
            imu_mode=params['imu_mode'], imu_tolerance_s=params['imu_tolerance'],
            invalid_frames=params['invalid_frames'], split_gap_s=params['split_gap'],
            linear_scale=params['linear_scale'], angular_scale=params['angular_scale'],
            joy_linear_axis=params['joy_linear_axis'],
            joy_angular_axis=params['joy_angular_axis'],
            raw_image_format=params['raw_image_format'], jpeg_quality=params['jpeg_quality'])
        self.mapping = command_mapping(params['command_type'], self.options)
        self.synchroniser = FrameSynchroniser(self.options, use_imu=params['use_imu'])
        self.gate = AutoRecordGate(params['auto_record_speed'], params['auto_stop_delay'])
        self._skipped_invalid = 0
        self._without_command = 0
        self._without_imu = 0
        self._label_throttle = _Throttle(WARN_THROTTLE_S)
        self._drop_throttle = _Throttle(WARN_THROTTLE_S)
        self._reported_drops = 0
        self._clock_throttle = _Throttle(WARN_THROTTLE_S)
        # Reason of a stop that waits for the frames received before it to be labelled.
        self._stop_reason: Optional[str] = None

        self._create_interfaces()
        self.session = RecordingSession(self._session_settings(), on_event=self._on_event)
        self._log_ready()
        if self.params['autostart']:
            self._start('autostart')

    # Start-up

    def _create_interfaces(self) -> None:
        sensor = sensor_qos(self.params['sensor_reliability'])
        if self.params['compressed']:
            self.image_sub = self.create_subscription(
                CompressedImage, 'image_raw/compressed', self._on_compressed, sensor)
        else:
            self.image_sub = self.create_subscription(Image, 'image_raw', self._on_image,
                                                      sensor)
        self.imu_sub = None
        if self.params['use_imu']:
            self.imu_sub = self.create_subscription(Imu, 'imu/data', self._on_imu, sensor)
        command_type = self.params['command_type']
        message_type = {'twist': Twist, 'twist_stamped': TwistStamped, 'joy': Joy}[command_type]
        topic = 'joy' if command_type == 'joy' else 'cmd_vel'
        self.command_sub = self.create_subscription(message_type, topic, self._on_command,
                                                    command_qos())
        self.start_srv = self.create_service(Trigger, '~/start', self._on_start)
        self.stop_srv = self.create_service(Trigger, '~/stop', self._on_stop)
        status_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.status_pub = self.create_publisher(DiagnosticStatus, '~/status', status_qos)
        self.create_timer(SYNC_PERIOD_S, self._release_ready_frames)
        self.create_timer(self.params['status_period'], self._publish_status)

    def _session_settings(self) -> SessionSettings:
        params = self.params
        topics = {'image': self.image_sub.topic_name,
                  'imu': self.imu_sub.topic_name if self.imu_sub else None,
                  'command': self.command_sub.topic_name}
        metadata = {
            'source': {'kind': 'recorder', 'node': self.get_fully_qualified_name(),
                       'topics': topics, 'command_type': params['command_type'],
                       'image_transport': 'compressed' if params['compressed'] else 'raw',
                       'stamps': 'header' if params['use_header_stamps'] else 'receive time'},
            'commands': self.mapping,
            'imu': {'present': bool(params['use_imu']),
                    'units': ['rad/s'] * 3 + ['m/s^2'] * 3},
            'label_options': self.options.to_dict(),
        }
        return SessionSettings(
            output_dir=Path(str(params['output_dir'])).expanduser(), metadata=metadata,
            queue_size=params['queue_size'], min_free_disk_mb=params['min_free_disk_mb'],
            split_gap_s=params['split_gap'], raw_image_format=params['raw_image_format'],
            jpeg_quality=params['jpeg_quality'], png_compression=params['png_compression'])

    def _log_ready(self) -> None:
        logger = self.get_logger()
        logger.info(f'output_dir: {self.session.settings.output_dir}')
        logger.info(f'camera: {self.image_sub.topic_name}, imu: '
                    f'{self.imu_sub.topic_name if self.imu_sub else "off"}, command: '
                    f'{self.command_sub.topic_name} ({self.params["command_type"]})')
        options = self.options
        logger.info(f'sync: command {options.command_match} within '
                    f'{options.command_tolerance_s} s, imu {options.imu_mode} within '
                    f'{options.imu_tolerance_s} s, invalid frames {options.invalid_frames}')
        mode = 'autostart' if self.params['autostart'] else (
            f'automatic above {self.gate.speed_threshold} m/s' if self.gate.enabled
            else 'waiting for ~/start')
        logger.info(f'ready: {mode}')

    # Callbacks

    def _now_s(self) -> float:
        return time.monotonic()

    def _stamp(self, header) -> int:
        if header is not None and self.params['use_header_stamps']:
            stamp_ns = _stamp_ns(header.stamp)
            if stamp_ns > 0:
                return stamp_ns
        return self.get_clock().now().nanoseconds

    def _on_image(self, msg: Image) -> None:
        image = RawImage(msg.encoding, int(msg.height), int(msg.width), int(msg.step),
                         np.frombuffer(msg.data, dtype=np.uint8), bool(msg.is_bigendian))
        self._add_frame(self._stamp(msg.header), image)

    def _on_compressed(self, msg: CompressedImage) -> None:
        data = bytes(msg.data)
        try:
            image = EncodedImage(data, image_extension(data))
        except DataError as error:
            self._count_drop('invalid_image', f'frame dropped: {error}')
            return
        self._add_frame(self._stamp(msg.header), image)

    @property
    def _accepting_frames(self) -> bool:
        return self.session.recording and self._stop_reason is None

    def _add_frame(self, stamp_ns: int, image) -> None:
        if not self._accepting_frames:
            return
        self.synchroniser.add_frame(stamp_ns, image, self._now_s())
        self._release_ready_frames()

    def _on_imu(self, msg: Imu) -> None:
        try:
            values = imu_msg_to_array(msg)
        except DataError as error:
            self._count_drop('invalid_imu', f'IMU message ignored: {error}', count=False)
            return
        stamp_ns = self._stamp(msg.header)
        if self.synchroniser.add_imu(stamp_ns, values):
            self._warn_clock_jump('IMU', stamp_ns)
        self._release_ready_frames()

    def _on_command(self, msg) -> None:
        linear_x, angular_z = command_from_message(msg, self.params['command_type'], self.mapping)
        stamp_ns = self._stamp(getattr(msg, 'header', None))
        if self.synchroniser.add_command(stamp_ns, linear_x, angular_z):
            self._warn_clock_jump('command', stamp_ns)
        self._apply_gate(self.gate.update(self._now_s(), linear_x))
        self._release_ready_frames()

    def _release_ready_frames(self) -> None:
        now_s = self._now_s()
        # Without commands the gate still has to stop recording after its delay.
        self._apply_gate(self.gate.update(now_s))
        for stamp_ns, image, labels in self.synchroniser.pop_ready(now_s):
            self._submit(stamp_ns, image, labels)
        if self._stop_reason is not None and not self.synchroniser.pending:
            self._finish_stop()
        self._report_drops()

    def _warn_clock_jump(self, stream: str, stamp_ns: int) -> None:
        if self._clock_throttle.ready(self._now_s()):
            self.get_logger().warning(
                f'{stream} stamp {stamp_ns} ns is more than {HISTORY_S:g} s older than the '
                f'newest {stream} stamp: its clock jumped back, or an earlier message was '
                f'stamped in the future. The {stream} history starts again from this message.')

    def _submit(self, stamp_ns: int, image, labels) -> None:
        self._count_missing_labels(labels)
        if not labels.valid and self.options.invalid_frames == 'skip':
            self._skipped_invalid += 1
            return
        self.session.submit(stamp_ns, image, labels)

    def _count_missing_labels(self, labels) -> None:
        missing = []
        if not labels.valid:
            self._without_command += 1
            missing.append(f'a command within {self.options.command_tolerance_s} s '
                           f'({self._without_command} frames so far)')
        if self.params['use_imu'] and labels.imu_status == 'missing':
            self._without_imu += 1
            missing.append(f'an IMU sample within {self.options.imu_tolerance_s} s '
                           f'({self._without_imu} frames so far)')
        if missing and self._label_throttle.ready(self._now_s()):
            self.get_logger().warning(
                f'frame without {" and ".join(missing)}; if those messages arrive, check '
                'that their stamps share the camera clock (parameter use_header_stamps)')

    def _count_drop(self, reason: str, message: str, count: bool = True) -> None:
        if count:
            self.session.count_drop(reason)
        if self._drop_throttle.ready(self._now_s()):
            self.get_logger().warning(message)

    def _report_drops(self) -> None:
        dropped = sum(self.session.drops.values())
        if dropped > self._reported_drops and self._drop_throttle.ready(self._now_s()):
            self.get_logger().warning(f'frames dropped: {dropped} in total '
                                      f'({dict(self.session.drops)})')
            self._reported_drops = dropped

    def _apply_gate(self, action: Optional[str]) -> None:
        if action == 'start' and not self._accepting_frames:
            self._start(f'speed above {self.gate.speed_threshold} m/s')
        elif action == 'stop' and self._accepting_frames:
            self._stop(f'speed below {self.gate.speed_threshold} m/s')

    def _start(self, reason: str) -> Tuple[bool, str]:
        if self._stop_reason is not None:
            # The frames before the stop are labelled with what has arrived so far.
            self._flush_pending()
            self._finish_stop()
        ok, message = self.session.start(reason)
        if ok:
            self.get_logger().info(f'recording: {message}')
        else:
            self.get_logger().error(f'start rejected: {message}')
        self._publish_status()
        return ok, message

    def _stop(self, reason: str) -> Tuple[bool, str]:
        """Stop taking frames; the episode ends once the frames before the stop are labelled.

        A frame's command or IMU sample may arrive just after the stop request, so the
        frames still pending wait for their labels as usual (at most
        ``synchroniser.max_wait_s``) before the session stops.
        """
        if not self._accepting_frames:
            return False, 'not recording'
        self._stop_reason = reason
        if not self.synchroniser.pending:
            self._finish_stop()
        return True, f'recording stopped ({reason})'

    def _finish_stop(self) -> None:
        reason, self._stop_reason = self._stop_reason, None
        ok, message = self.session.stop(reason)
        if ok:
            self.get_logger().info(message)
        self._publish_status()

    def _flush_pending(self) -> None:
        for stamp_ns, image, labels in self.synchroniser.pop_ready(self._now_s(), flush=True):
            self._submit(stamp_ns, image, labels)

    def _on_start(self, request, response):
        response.success, response.message = self._start('start service')
        return response

    def _on_stop(self, request, response):
        self.gate.reset()
        response.success, response.message = self._stop('stop service')
        return response

    def _on_event(self, level: str, message: str) -> None:
        # Called on the writer thread; rclpy loggers are thread-safe. Each severity needs
        # its own call site, because rclpy (Kilted) raises ValueError when one line logs
        # with two severities.
        logger = self.get_logger()
        if level == 'error':
            logger.error(message)
        elif level == 'warning':
            logger.warning(message)
        else:
            logger.info(message)

    def _publish_status(self) -> None:
        status = self.session.status()
        status['frames_without_command'] = self._without_command
        status['frames_without_imu'] = self._without_imu
        status['skipped_invalid'] = self._skipped_invalid
        message = DiagnosticStatus(name=self.get_fully_qualified_name(), hardware_id='')
        if status['recording']:
            dropped = status['frames_dropped'] > 0
            message.level = DiagnosticStatus.WARN if dropped else DiagnosticStatus.OK
            message.message = f"recording {status['episode'] or '(opening episode)'}"
        elif status['failed']:
            message.level = DiagnosticStatus.ERROR
            message.message = f"stopped: {status['stop_reason']}"
        else:
            message.level = DiagnosticStatus.OK
            message.message = 'idle'
        drops = status.pop('drops')
        values = [KeyValue(key=key, value=str(value).lower() if isinstance(value, bool)
                           else str(value)) for key, value in status.items()]
        values += [KeyValue(key=f'dropped_{reason}', value=str(count))
                   for reason, count in sorted(drops.items())]
        message.values = values
        self.status_pub.publish(message)

    def shutdown(self) -> bool:
        """Finish the current episode; call after the executor stopped.

        Returns False when the episode writer did not finish in time.
        """
        self._flush_pending()
        if self._stop_reason is not None:
            self._finish_stop()
        finished = self.session.close('shutdown')
        status = self.session.status()
        if not finished:
            self.get_logger().error('episode writer did not finish within 30 s; the last '
                                    'episode stays .partial and readable up to its last row')
        self.get_logger().info(f"stopped: {status['frames_written']} frames written, "
                               f"{status['frames_dropped']} dropped, "
                               f"{status['episodes_finished']} episode(s) finished")
        self._publish_status()
        return finished


def main(args=None) -> int:
    """Run the recorder until SIGINT or SIGTERM, then finish the current episode."""
    stop = init_ros(args if args is not None else sys.argv)
    node = create_node(NODE_NAME, RecorderNode, (LiquidControlError, ParameterException, OSError))
    if node is None:
        return 2

    spinner = Spinner(node)
    stopped = finished = False
    try:
        while spinner.is_alive() and not stop.wait(0.1):
            pass
    finally:
        # No callback adds frames once the executor has stopped, so the episode ends whole.
        spinner.stop(timeout=CALLBACK_STOP_TIMEOUT_S)
        finished = node.shutdown()
        limit_teardown(node)  # after the episode is written, however long that took
        stopped = stop_and_destroy(node, spinner)
    # NOTE: the exit code 1 of an unfinished writer is not tested: it needs a disk that
    # blocks a write for 30 s.
    return 0 if stopped and finished else 1


if __name__ == '__main__':
    sys.exit(main())
