"""liquid-control replay: play a bag into a live policy node and record its commands.

The bag's camera and IMU topics are published with their recorded timing. A policy node
drives ``cmd_vel``: one started here as a separate process, or with ``--use-running-node``
one that is already running. Every command is written to ``OUT/commands.csv`` and a summary to
``OUT/summary.json``.

Latency: the started node runs with ``twist_stamped: true`` and ``command_stamp: frame``,
so each command carries the header stamp of the frame it was computed from. The player
stores the wall time at which it published each stamp. The latency of a frame is the time
from that publication until the first command with its stamp arrives here.
"""

import argparse
import csv
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

_logger = logging.getLogger(__name__)

NODE_MODULE = 'liquid_control.nodes.policy_node'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the replay options to ``parser``."""
    parser.add_argument('bag', type=Path, help='rosbag2 folder (sqlite3 or MCAP) or ROS 1 .bag')
    parser.add_argument('--model', type=Path,
                        help='policy checkpoint (.lcm) for the started node; required unless '
                             '--use-running-node is given')
    parser.add_argument('--out', type=Path, required=True,
                        help='output folder for summary.json, commands.csv and the node log')
    parser.add_argument('--image-topic', help='bag topic of the camera (sensor_msgs/Image or '
                        'CompressedImage); default: the only image topic in the bag')
    parser.add_argument('--imu-topic', help='bag topic of the IMU (sensor_msgs/Imu); default: '
                        'the only IMU topic in the bag, if any')
    parser.add_argument('--no-imu', action='store_true', help='do not play the IMU topic')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor (2.0 plays twice as fast); default 1.0')
    parser.add_argument('--duration', type=float,
                        help='play only the first DURATION seconds of the bag')
    parser.add_argument('--cmd-vel-topic', default='/replay/cmd_vel',
                        help='topic the commands are read from; default /replay/cmd_vel')
    parser.add_argument('--use-running-node', action='store_true',
                        help='do not start a policy node: a running one must subscribe to the '
                             'bag topics and publish TwistStamped on --cmd-vel-topic, with '
                             'command_stamp frame for latencies')
    parser.add_argument('--params-file', type=Path,
                        help='parameter YAML for the started node; default config/policy.yaml')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra parameter for the started node (repeatable)')
    parser.add_argument('--keep-stamps', action='store_true',
                        help='publish the recorded header stamps instead of the time of '
                             'publication; the started node then skips its stamp check')
    parser.add_argument('--startup-timeout', type=float, default=60.0,
                        help='seconds to wait for the node to connect; default 60')
    parser.add_argument('--tail', type=float, default=0.5,
                        help='seconds to keep recording after the last message; default 0.5')


class CommandRecorder:
    """Collect TwistStamped or Twist commands with their wall-clock arrival times."""

    def __init__(self) -> None:
        self.rows: List[dict] = []
        self.diagnostics: Dict[str, str] = {}
        self._lock = threading.Lock()

    def on_command(self, msg) -> None:
        arrived = time.time()
        twist = getattr(msg, 'twist', msg)
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec) if hasattr(msg, 'header') \
            else None
        with self._lock:
            self.rows.append({'wall_time': arrived, 'stamp': stamp,
                              'linear_x': twist.linear.x, 'angular_z': twist.angular.z})

    def on_diagnostics(self, msg, node_name: str) -> None:
        for status in msg.status:
            if status.name.startswith(node_name + ':'):
                with self._lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics['level'] = str(int.from_bytes(status.level, 'little')
                                                    if isinstance(status.level, bytes)
                                                    else status.level)

    def snapshot(self):
        with self._lock:
            return list(self.rows), dict(self.diagnostics)


def _percentile(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    import numpy as np
    return float(np.percentile(values, q))


def summarize(rows: List[dict], record, diagnostics: Dict[str, str], rate: float) -> dict:
    """Build the summary and annotate each command row with its frame and latency."""
    frames_by_stamp = {frame.stamp: frame for frame in record.frames}
    latencies = []
    used = set()
    for row in rows:
        frame = frames_by_stamp.get(row['stamp']) if row['stamp'] is not None else None
        row['frame_index'] = frame.index if frame is not None else None
        row['latency_ms'] = None
        if frame is not None and frame.index not in used:
            used.add(frame.index)
            row['latency_ms'] = (row['wall_time'] - frame.wall_time) * 1e3
            latencies.append(row['latency_ms'])

    window = [row for row in rows if record.started <= row['wall_time'] <= record.finished]
    duration = record.finished - record.started
    rate_hz = (len(window) / duration) if duration > 0 else 0.0
    # The median period measures the timer's rate. The count above also moves with commands
    # skipped or added near the window's ends, by about 1 in 20 for a 5 s bag at 20 Hz.
    periods = [(later['wall_time'] - earlier['wall_time']) * 1e3
               for earlier, later in zip(window, window[1:])]
    median_period = _percentile(periods, 50)

    def diagnostic_int(key: str) -> Optional[int]:
        value = diagnostics.get(key)
        return int(value) if value is not None and value.lstrip('-').isdigit() else None

    return {
        'commands': len(rows),
        'commands_during_playback': len(window),
        'playback_s': round(duration, 4),
        'rate_factor': rate,
        'rate_hz': round(rate_hz, 3),
        'period_ms': {'p50': median_period, 'p99': _percentile(periods, 99)},
        'rate_hz_from_median_period': (round(1e3 / median_period, 3)
                                       if median_period else None),
        'frames_published': len(record.frames),
        'frames_with_command': len(used),
        'imu_published': record.imu_messages,
        'latency_ms': {
            'p50': _percentile(latencies, 50),
            'p99': _percentile(latencies, 99),
            'max': max(latencies) if latencies else None,
            'count': len(latencies),
        },
        'deadline_misses': diagnostic_int('deadline_misses'),
        'dropped_frames': diagnostic_int('dropped_frames'),
        'invalid_frames': diagnostic_int('invalid_frames'),
        'invalid_imu': diagnostic_int('invalid_imu'),
        'invalid_outputs': diagnostic_int('invalid_outputs'),
        'zero_commands': sum(1 for row in rows if row['linear_x'] == 0.0
                             and row['angular_z'] == 0.0),
        'node_diagnostics': diagnostics,
        'interrupted': record.interrupted,
    }


def write_commands_csv(path: Path, rows: List[dict], origin: float) -> None:
    """Write one row per command: arrival time from playback start, stamp, values, latency."""
    with path.open('w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['time_s', 'stamp_s', 'linear_x', 'angular_z', 'frame_index',
                         'latency_ms'])
        for row in rows:
            stamp = row['stamp']
            writer.writerow([
                f'{row["wall_time"] - origin:.6f}',
                '' if stamp is None else f'{stamp[0] + stamp[1] * 1e-9:.9f}',
                repr(row['linear_x']), repr(row['angular_z']),
                '' if row.get('frame_index') is None else row['frame_index'],
                '' if row.get('latency_ms') is None else f'{row["latency_ms"]:.3f}'])


def _node_command(args, compressed: bool, use_imu: bool, image_topic: str,
                  imu_topic: Optional[str]) -> List[str]:
    from liquid_control.paths import config_file

    params_file = args.params_file or config_file('policy.yaml')
    command = [sys.executable, '-m', NODE_MODULE, '--ros-args',
               '--params-file', str(params_file),
               '-p', f'model_path:={Path(args.model).resolve()}',
               '-p', f'compressed:={str(compressed).lower()}',
               '-p', f'use_imu:={str(use_imu).lower()}',
               '-p', 'twist_stamped:=true', '-p', 'command_stamp:=frame',
               '-r', f'{"image_raw/compressed" if compressed else "image_raw"}:={image_topic}',
               '-r', f'cmd_vel:={args.cmd_vel_topic}']
    if imu_topic:
        command += ['-r', f'imu/data:={imu_topic}']
    if args.keep_stamps:
        command += ['-p', 'max_stamp_offset:=0.0']
    for item in args.param:
        command += ['-p', item]
    return command


def _wait_for_connection(publishers, recorder_sub, node, process, timeout: float,
                         stop) -> None:
    from liquid_control.errors import LiquidControlError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.is_set():
            raise KeyboardInterrupt
        if process is not None and process.poll() is not None:
            raise LiquidControlError(
                f'policy_node exited with code {process.returncode} during start-up; '
                'see policy_node.log in the output folder')
        connected = all(pub.get_subscription_count() > 0 for pub in publishers)
        if connected and recorder_sub.get_publisher_count() > 0:
            return
        time.sleep(0.05)
    raise LiquidControlError(f'policy node did not connect within {timeout:g} s '
                             '(--startup-timeout); check the topics and its log')


def discovery_settings(environ: Dict[str, str], use_running_node: bool) -> Dict[str, str]:
    """Return the environment variables replay sets before it starts ROS.

    Replay publishes the bag's camera on its recorded topic name. Unless the user chose a
    discovery range, or replays into a node that may run elsewhere, discovery stays on
    this machine, so a robot on the network never receives the bag's frames.
    """
    if use_running_node or 'ROS_AUTOMATIC_DISCOVERY_RANGE' in environ:
        return {}
    return {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}


def run(args: argparse.Namespace) -> int:
    """Replay the bag, record the commands and write the summary; return the exit code."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from liquid_control.errors import ConfigError
    from liquid_control.nodes.bag_player import (IMAGE_TYPES, IMU_TYPE, open_reader, pick_topic,
                                                 topic_types)
    from liquid_control.nodes.dds import apply_large_frame_profile
    from liquid_control.nodes.process import StopRequest

    if not args.use_running_node and args.model is None:
        raise ConfigError('--model is required unless --use-running-node is given')
    if args.model is not None and not Path(args.model).is_file():
        raise ConfigError(f'model not found: {args.model}')
    if not (args.rate > 0 and math.isfinite(args.rate)):
        raise ConfigError(f'--rate must be a positive number, got {args.rate}')
    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f'--duration must be a positive number of seconds, got '
                          f'{args.duration}')

    reader = open_reader(args.bag)
    types = topic_types(reader)
    image_topic = pick_topic(types, args.image_topic, IMAGE_TYPES, 'camera', '--image-topic')
    if image_topic is None:
        raise ConfigError(f'the bag {args.bag} has no sensor_msgs/Image or CompressedImage '
                          'topic')
    imu_topic = None if args.no_imu else pick_topic(types, args.imu_topic, (IMU_TYPE,), 'IMU',
                                                    '--imu-topic')
    compressed = types[image_topic].endswith('CompressedImage')
    args.out.mkdir(parents=True, exist_ok=True)

    apply_large_frame_profile()
    # From here on SIGINT and SIGTERM only set a flag: playback stops, the policy node is
    # stopped, and the summary of what was played is still written. A second signal during
    # that teardown changes nothing.
    os.environ.update(discovery_settings(os.environ, args.use_running_node))
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()
    previous_handlers = {number: signal.signal(number, lambda *_: stop.set())
                         for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _play(args, reader, image_topic, imu_topic, compressed, stop)
    finally:
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)


def _play(args: argparse.Namespace, reader, image_topic: str, imu_topic: Optional[str],
          compressed: bool, stop) -> int:
    """Start the policy node, play the bag to it and write what came back."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TwistStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from liquid_control.cli.node_process import NodeProcess
    from liquid_control.nodes.bag_player import BagPlayer
    from liquid_control.nodes.process import Spinner, stop_and_destroy

    node = rclpy.create_node('liquid_control_replay')
    recorder = CommandRecorder()
    command_sub = node.create_subscription(
        TwistStamped, args.cmd_vel_topic, recorder.on_command,
        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(DiagnosticArray, '/diagnostics',
                             lambda msg: recorder.on_diagnostics(msg, 'policy_node'), 10)
    topics = {image_topic: image_topic}
    if imu_topic:
        topics[imu_topic] = imu_topic
    player = BagPlayer(node, reader, topics, image_topic, rate=args.rate,
                       restamp=not args.keep_stamps)
    spinner = Spinner(node)

    policy = None
    try:
        if not args.use_running_node:
            command = _node_command(args, compressed, imu_topic is not None, image_topic,
                                    imu_topic)
            _logger.info('starting: %s', ' '.join(command))
            policy = NodeProcess('policy_node', command, dict(os.environ), args.out)
        process = None
        if policy is not None:
            process = policy.process
        _wait_for_connection(list(player.publishers().values()), command_sub, node, process,
                             args.startup_timeout, stop)
        _logger.info('playing %s: camera %s, IMU %s, rate x%g', args.bag, image_topic,
                     imu_topic or 'none', args.rate)
        record = player.play(stop, args.duration)
        if not stop.wait(max(args.tail, 0.0)):
            # Wait for one more diagnostics message so deadline_misses covers the whole run.
            _, before = recorder.snapshot()
            deadline = time.monotonic() + 2.5
            while (time.monotonic() < deadline and recorder.snapshot()[1] == before
                   and not stop.wait(0.05)):
                pass
    finally:
        exit_code = policy.stop() if policy else None
        stop_and_destroy(node, spinner)
        reader.close()

    rows, diagnostics = recorder.snapshot()
    summary = summarize(rows, record, diagnostics, args.rate)
    summary['bag'] = str(args.bag)
    summary['image_topic'] = image_topic
    summary['imu_topic'] = imu_topic
    summary['node_exit_code'] = exit_code
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    write_commands_csv(args.out / 'commands.csv', rows, record.started)
    latency = summary['latency_ms']
    print(f'{summary["commands"]} commands, {summary["rate_hz"]:.2f} Hz during playback, '
          f'latency p50 {_format_ms(latency["p50"])} p99 {_format_ms(latency["p99"])}, '
          f'deadline misses {summary["deadline_misses"]}; written to {args.out}')
    for problem in summary_problems(summary):
        print(f'warning: {problem}', file=sys.stderr)
    if summary['frames_published'] == 0 and not summary['interrupted']:
        print(f'error: no camera frame was played: {image_topic} has no messages in the '
              'played part of the bag; check the bag, or choose the camera topic with '
              '--image-topic', file=sys.stderr)
        return 1
    return 0 if exit_code in (0, None) else 1


def summary_problems(summary: dict) -> List[str]:
    """Return one line for each counter of the summary that shows inputs or outputs lost."""
    counters = (
        ('invalid_frames', 'frame(s) the policy node rejected as unreadable'),
        ('dropped_frames', 'frame(s) the policy node dropped'),
        ('invalid_imu', 'IMU message(s) the policy node rejected'),
        ('invalid_outputs', 'non-finite policy output(s), replaced by zero commands'),
    )
    return [f'{summary[key]} {text} (see policy_node.log)'
            for key, text in counters if summary.get(key)]


def _format_ms(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.2f} ms'
