"""liquid-control demo: the bundled policy drives the CarRacing simulator in closed loop.

``sim_node`` and ``policy_node`` run as separate processes that talk over DDS, headless,
on a DDS domain of their own and only on this host, so the demo never commands a robot on
the network. This process watches the simulator's status and camera, stops both nodes
after one lap or ``--seconds`` of simulated time, prints the score and writes a GIF of the
camera with the policy's VisualBackProp saliency overlaid.
"""

import argparse
import json
import logging
import os
import random
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from liquid_control.cli.node_process import NodeProcess
from liquid_control.errors import ConfigError, LiquidControlError

_logger = logging.getLogger(__name__)

DEFAULT_SEED = 1000             # tracks from 1000 on are never used for training
MAX_LAP_SECONDS = 120.0         # simulated seconds before a lap run gives up
GIF_FRAME_PERIOD_S = 0.1        # one GIF frame per 0.1 s of simulated time
GIF_SCALE = 4                   # the network input (42x48 for the bundled model) is enlarged 4x
STARTUP_TIMEOUT_S = 90.0        # wall time for each node to start (torch import is slow)
RECENT_FRAMES = 64               # camera frames kept to find a frame gap's earlier frame


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options."""
    parser.add_argument('--seconds', type=float, default=None,
                        help='simulated seconds to drive (default: one lap, at most '
                             f'{MAX_LAP_SECONDS:g} s)')
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED,
                        help=f'track seed (default {DEFAULT_SEED}, a track not used for '
                             'training)')
    parser.add_argument('--model', type=Path, default=None,
                        help='policy checkpoint (.lcm) to drive with (default: the bundled '
                             'models/carracing_ncp.lcm)')
    parser.add_argument('--out', type=Path, default=Path('liquid_control_demo'),
                        help='folder for demo.gif and the node logs (default: '
                             './liquid_control_demo)')
    parser.add_argument('--noise', type=float, default=0.0,
                        help='camera noise: standard deviation as a fraction of full scale '
                             '(default 0)')
    parser.add_argument('--no-video', action='store_true',
                        help='skip the GIF and its saliency maps')
    parser.add_argument('--json', action='store_true',
                        help='print the result as one JSON object (score, tiles_visited, '
                             'duration_s, ...)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID of the demo nodes, 0..232 (default: a random '
                             'id in 30..101)')
    parser.add_argument('--timeout', type=float, default=None,
                        help='wall-clock seconds before the run is stopped as too slow '
                             '(default: 4 x the simulated time + 60)')


# The largest domain id whose DDS ports Fast DDS can compute.
MAX_DOMAIN_ID = 232


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its result; return 0 on success."""
    from liquid_control.paths import bundled_model

    seconds = args.seconds if args.seconds is not None else MAX_LAP_SECONDS
    if not seconds > 0:
        raise ConfigError(f'--seconds {args.seconds} is invalid: give a positive number')
    if not 0.0 <= args.noise <= 1.0:
        raise ConfigError(f'--noise {args.noise} is invalid: use a fraction in [0, 1]')
    if args.domain_id is not None and not 0 <= args.domain_id <= MAX_DOMAIN_ID:
        raise ConfigError(f'--domain-id {args.domain_id} is invalid: use 0..{MAX_DOMAIN_ID} '
                          '(ROS 2 recommends 0..101 on Linux)')
    model = Path(args.model) if args.model is not None else bundled_model()
    if not model.is_file():
        raise FileNotFoundError(f'model not found: {model}. Pass --model PATH or rebuild the '
                                'bundled model with scripts/make_bundled_model.py')
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    domain_id = args.domain_id if args.domain_id is not None else random.randint(30, 101)
    timeout = args.timeout if args.timeout is not None else 4.0 * seconds + 60.0

    from liquid_control.inference import load_runner

    runner = load_runner(model)  # fails here, before any process starts, on a bad file
    env = _node_environment(domain_id)
    # A policy with a frame gap k also takes the frame k control periods earlier, so the
    # GIF's saliency needs that frame next to each sampled one.
    earlier_s = runner.policy.config.frame_gap / _demo_control_rate_hz()
    monitor = SimMonitor(domain_id, frame_period=0.0 if args.no_video else GIF_FRAME_PERIOD_S,
                         earlier_s=earlier_s)
    nodes = [NodeProcess('sim_node', _sim_command(args.seed, args.noise), env, out_dir)]
    try:
        # DDS can take seconds to match one subscription while the others already run.
        # The car waits for the first command, so starting the policy only once this
        # process receives the camera puts the whole drive in the GIF.
        _wait_for_sim(monitor, nodes[0], need_frame=not args.no_video)
        nodes.append(NodeProcess('policy_node', _policy_command(model), env, out_dir))
        status = _drive(monitor, nodes, seconds, lap=args.seconds is None, timeout=timeout)
    finally:
        for node in nodes:
            node.stop()
        monitor.close()

    result = {
        'score': round(float(status['score']), 1),
        'tiles_visited': int(status['tiles_visited']),
        'tiles_total': int(status['tiles_total']),
        'duration_s': round(float(status['sim_time']), 2),
        'lap_finished': bool(status['lap_finished']),
        'out_of_bounds': bool(status['out_of_bounds']),
        'seed': args.seed,
        'camera_noise': args.noise,
        'model': str(model),
        'commands_received': monitor.command_count,
        'video': None,
    }
    if not args.no_video:
        result['video'] = str(write_saliency_gif(
            runner, monitor.frames, out_dir / 'demo.gif',
            monitor.earlier_frames if earlier_s > 0 else None))
    _print_result(result, args.json)
    return 0


# Processes

def _node_environment(domain_id: int) -> dict:
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PYTHONUNBUFFERED'] = '1'
    env.setdefault('SDL_VIDEODRIVER', 'dummy')
    return env


def _sim_command(seed: int, noise: float) -> List[str]:
    from liquid_control.paths import config_file

    return [sys.executable, '-m', 'liquid_control.nodes.sim_node', '--ros-args',
            '--params-file', str(config_file('sim.yaml')),
            '-p', f'seed:={seed}', '-p', f'noise_std:={noise}',
            '-p', 'wait_for_command:=true', '-p', 'episode_end:=hold']


def _demo_control_rate_hz() -> float:
    """Return the policy node's control rate in the demo, from config/sim.yaml."""
    import yaml

    from liquid_control.paths import config_file

    with open(config_file('sim.yaml')) as stream:
        settings = yaml.safe_load(stream)
    return float(settings['/**/policy_node']['ros__parameters']['control_rate_hz'])


def _policy_command(model: Path) -> List[str]:
    from liquid_control.paths import config_file

    return [sys.executable, '-m', 'liquid_control.nodes.policy_node', '--ros-args',
            '--params-file', str(config_file('policy.yaml')),
            '--params-file', str(config_file('sim.yaml')),
            '-p', f'model_path:={model.resolve()}']


# Monitoring

class SimMonitor:
    """An rclpy node that keeps the simulator status, sampled frames and a command count.

    With ``earlier_s`` above 0 it also keeps, for every sampled frame, the camera frame
    received that many seconds of simulated time before it, in ``earlier_frames``.
    """

    def __init__(self, domain_id: int, frame_period: float, earlier_s: float = 0.0) -> None:
        import rclpy
        from geometry_msgs.msg import Twist
        from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,
                               qos_profile_sensor_data)
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from liquid_control.nodes.dds import apply_large_frame_profile
        from liquid_control.nodes.process import Spinner

        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        apply_large_frame_profile()
        self.frame_period = frame_period
        self.frames: List[np.ndarray] = []
        self.earlier_s = earlier_s
        self.earlier_frames: List[np.ndarray] = []
        self._recent: deque = deque(maxlen=RECENT_FRAMES)   # (stamp, message)
        self.command_count = 0
        self.status: Optional[dict] = None
        self._next_frame_time = 0.0
        self.frame_seen = False
        self._lock = threading.Lock()
        self.context = rclpy.Context()
        # Without rclpy's handlers, Ctrl-C raises KeyboardInterrupt in the main thread, so
        # the caller's cleanup stops the nodes.
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('sim_monitor', context=self.context)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, 'status', self._on_status, latched)
        self.node.create_subscription(Twist, 'cmd_vel', self._on_command, 10)
        if frame_period > 0:
            self.node.create_subscription(Image, 'image_raw', self._on_image,
                                          qos_profile_sensor_data)
        self._spinner = Spinner(self.node, name='sim-monitor')

    def _on_status(self, msg) -> None:
        with self._lock:
            self.status = json.loads(msg.data)

    def _on_command(self, msg) -> None:
        with self._lock:
            self.command_count += 1

    def _on_image(self, msg) -> None:
        from liquid_control.nodes.messages import image_msg_to_rgb

        with self._lock:
            status = self.status
            self.frame_seen = True
        # Frames count only once the car moves; until then the simulator repeats one frame.
        if status is None or status['steps'] == 0:
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self._recent.append((stamp, msg))
        if stamp < self._next_frame_time:
            return
        self._next_frame_time = stamp + self.frame_period
        self.frames.append(image_msg_to_rgb(msg))
        if self.earlier_s > 0:
            earlier = frame_before(list(self._recent), stamp - self.earlier_s)
            self.earlier_frames.append(image_msg_to_rgb(earlier))

    def sees_sim(self, need_frame: bool) -> bool:
        """Return whether a status, and with ``need_frame`` a camera frame, arrived."""
        with self._lock:
            return self.status is not None and (self.frame_seen or not need_frame)

    def latest_status(self) -> Optional[dict]:
        """Return the newest status, or None before the first."""
        with self._lock:
            return self.status

    def close(self) -> None:
        """Stop spinning and leave the DDS domain."""
        from liquid_control.nodes.process import stop_and_destroy

        stop_and_destroy(self.node, self._spinner)


def _wait_for_sim(monitor: SimMonitor, sim: NodeProcess, need_frame: bool) -> None:
    """Wait until the monitor receives the simulator's status and, if needed, its camera."""
    started = time.monotonic()
    while not monitor.sees_sim(need_frame):
        if not sim.alive():
            raise LiquidControlError(
                f'{sim.name} exited with code {sim.process.returncode}; last lines of '
                f'{sim.log_path}:\n{sim.output_tail()}')
        if time.monotonic() - started > STARTUP_TIMEOUT_S:
            missing = 'status' if monitor.latest_status() is None else 'camera'
            raise LiquidControlError(
                f'timed out after {STARTUP_TIMEOUT_S:g} s waiting for the {missing} of '
                f'{sim.name}; the machine may be too busy. Last lines of {sim.log_path}:\n'
                f'{sim.output_tail()}')
        time.sleep(0.05)
    _logger.info('simulator ready after %.1f s, starting the policy',
                 time.monotonic() - started)


def _drive(monitor: SimMonitor, nodes: List[NodeProcess], seconds: float, lap: bool,
           timeout: float) -> dict:
    """Wait until the lap ends or ``seconds`` of simulated time passed; return the status."""
    started = time.monotonic()
    moving_logged = False
    while True:
        for node in nodes:
            if not node.alive():
                raise LiquidControlError(
                    f'{node.name} exited with code {node.process.returncode}; last lines of '
                    f'{node.log_path}:\n{node.output_tail()}')
        status = monitor.latest_status()
        elapsed = time.monotonic() - started
        if status is not None and status['steps'] > 0:
            if not moving_logged:
                _logger.info('driving: the policy is in control after %.1f s', elapsed)
                moving_logged = True
            if status['done'] or status['sim_time'] >= seconds:
                return status
        elif elapsed > STARTUP_TIMEOUT_S:
            logs = '\n'.join(f'--- {n.name}:\n{n.output_tail()}' for n in nodes)
            raise LiquidControlError(
                f'the nodes did not start driving within {STARTUP_TIMEOUT_S:g} s:\n{logs}')
        if elapsed > timeout:
            target = 'the lap' if lap else f'{seconds:g} simulated seconds'
            raise LiquidControlError(
                f'{target} did not finish within {timeout:g} s of wall time (simulated time '
                f'{status["sim_time"] if status else 0:.1f} s); the machine may be too busy, '
                'or raise --timeout')
        time.sleep(0.05)


def frame_before(recent: Sequence[Tuple[float, object]], stamp: float):
    """Return the newest frame of ``(stamp, frame)`` pairs stamped at or before ``stamp``.

    When every frame is newer, return the oldest one, as a run's first steps pair the
    current frame with the first frame. Stamps are seconds in arrival order.
    """
    if not recent:
        raise ValueError('no recent frames to pick an earlier frame from')
    chosen = recent[0][1]
    for frame_stamp, frame in recent:
        # The tolerance absorbs rounding of stamps that are whole control periods apart.
        if frame_stamp > stamp + 1e-6:
            break
        chosen = frame
    return chosen


# Result

def write_saliency_gif(runner, frames: List[np.ndarray], path: Path,
                       earlier: Optional[List[np.ndarray]] = None) -> Path:
    """Write an animated GIF: each camera frame beside its VisualBackProp saliency overlay.

    For a policy with a frame gap, ``earlier`` has the camera frame the policy paired with
    each frame. Without it each frame pairs with itself, as at the first step of a run.
    """
    import cv2
    from PIL import Image

    from liquid_control.evaluation.saliency import overlay, visual_backprop

    if not frames:
        raise LiquidControlError('no camera frames arrived, so there is no video to write')
    inputs = np.stack([runner.preprocess(frame) for frame in frames])   # (N, 3, H, W)
    paired = None
    if runner.policy.config.frame_gap:
        if earlier is not None and len(earlier) != len(frames):
            raise ValueError(f'{len(earlier)} earlier frames for {len(frames)} frames; '
                             'pass one earlier frame per frame')
        paired = inputs if earlier is None else np.stack(
            [runner.preprocess(frame) for frame in earlier])
    maps = np.concatenate([
        visual_backprop(runner.policy, inputs[i:i + 64],
                        None if paired is None else paired[i:i + 64])
        for i in range(0, len(inputs), 64)])
    images = []
    for index, (camera, frame, saliency) in enumerate(zip(frames, inputs, maps)):
        blended = (overlay(frame, saliency) * 255.0).astype(np.uint8)
        height, width = blended.shape[:2]
        panel_height = height * GIF_SCALE
        right = cv2.resize(blended, (width * GIF_SCALE, panel_height),
                           interpolation=cv2.INTER_NEAREST)
        # The camera as the simulator sent it, at the same height, beside the network's
        # input with the pixels that drive its output highlighted.
        camera_width = int(round(camera.shape[1] * panel_height / camera.shape[0]))
        left = cv2.resize(camera, (camera_width, panel_height), interpolation=cv2.INTER_NEAREST)
        gap = np.full((panel_height, 4, 3), 255, np.uint8)
        large = np.ascontiguousarray(np.concatenate([left, gap, right], axis=1))
        cv2.putText(large, f't {index * GIF_FRAME_PERIOD_S:5.1f} s', (4, 14),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(large, 'saliency', (camera_width + 8, 14),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        images.append(Image.fromarray(large))
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=int(GIF_FRAME_PERIOD_S * 1000), optimize=False)
    return path


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    ending = ('lap finished' if result['lap_finished'] else
              'car left the playfield' if result['out_of_bounds'] else 'time limit reached')
    print(f"score {result['score']:.1f} on track {result['seed']} after "
          f"{result['duration_s']:.1f} s of simulated time ({ending}), "
          f"tiles {result['tiles_visited']}/{result['tiles_total']}")
    if result['video']:
        print(f"video with saliency overlay: {result['video']}")
