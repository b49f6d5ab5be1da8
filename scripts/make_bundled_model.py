#!/usr/bin/env python3
"""Rebuild models/carracing_ncp.lcm: record the expert over DDS, then train on it.

For every training track, real processes run on a private, loopback-only DDS domain.
sim_node simulates the car, and expert_node drives it along the track. The expert also
publishes its noise-free command on expert/cmd_vel, as a TwistStamped with the stamp of the
frame it was computed from. recorder_node stores the camera, the IMU and that command as
one episode, all on simulated time. On every second track the driven command carries steering
noise, so the recording also shows how the expert recovers from a deviation. Then
``liquid-control train`` fits the NCP-LTC with config/train_carracing.yaml.

    .venv/bin/python scripts/make_bundled_model.py               # the bundled model
    .venv/bin/python scripts/make_bundled_model.py --family lstm --skip-recording \\
        --out /tmp/carracing_lstm.lcm                            # the benchmark's LSTM

Tracks 0-7 are used for training; the benchmark and the demo use tracks from 1000 on.
"""

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import List

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from liquid_control.cli.demo import NodeProcess, SimMonitor, _node_environment  # noqa: E402
from liquid_control.paths import config_file  # noqa: E402

LAP_TIMEOUT_S = 240.0   # wall seconds for one recorded lap (about 25 s at real time)


def parse_seeds(text: str) -> List[int]:
    """Parse '0-7' or '0,3,5' into a list of seeds."""
    if '-' in text:
        first, last = (int(part) for part in text.split('-', 1))
        return list(range(first, last + 1))
    return [int(part) for part in text.split(',') if part]


def node_command(module: str, params: dict, params_files=(), remaps=()) -> List[str]:
    """Return the command line that runs ``liquid_control.nodes.<module>``."""
    command = [sys.executable, '-m', f'liquid_control.nodes.{module}', '--ros-args']
    for path in params_files:
        command += ['--params-file', str(path)]
    for name, value in params.items():
        command += ['-p', f'{name}:={value}']
    for source, target in remaps:
        command += ['-r', f'{source}:={target}']
    return command


def record_lap(seed: int, steering_noise: float, data_dir: Path, log_dir: Path) -> dict:
    """Record one expert lap on track ``seed`` into ``data_dir``; return the final status."""
    domain_id = random.randint(30, 101)
    env = _node_environment(domain_id)
    sim_yaml = config_file('sim.yaml')
    log_dir.mkdir(parents=True, exist_ok=True)
    monitor = SimMonitor(domain_id, frame_period=0.0)

    # The recorder runs before the expert starts, and the simulator waits for the expert's
    # first command before it steps, so the episode starts with the lap.
    recorder = NodeProcess('recorder_node', node_command(
        'recorder_node', {'output_dir': str(data_dir), 'autostart': 'true',
                          'use_sim_time': 'true', 'command_type': 'twist_stamped'},
        params_files=[config_file('recorder.yaml')], remaps=[('cmd_vel', 'expert/cmd_vel')]),
        env, log_dir)
    if not recorder.wait_for_output('recording:', timeout=60.0):
        recorder.stop()
        monitor.close()
        raise RuntimeError(f'recorder_node did not start recording:\n{recorder.output_tail()}')
    expert = NodeProcess('expert_node', node_command(
        'expert_node', {'label_topic': 'expert/cmd_vel', 'lateral_noise_std': steering_noise,
                        'noise_seed': seed}, params_files=[sim_yaml]), env, log_dir)
    sim = NodeProcess('sim_node', node_command(
        'sim_node', {'seed': seed, 'wait_for_command': 'true', 'episode_end': 'pause'},
        params_files=[sim_yaml]), env, log_dir)

    nodes = [recorder, expert, sim]
    started = time.monotonic()
    try:
        while True:
            for node in nodes:
                if not node.alive():
                    raise RuntimeError(f'{node.name} exited during track {seed}:\n'
                                       f'{node.output_tail()}')
            status = monitor.latest_status()
            if status is not None and status['done']:
                return status
            if time.monotonic() - started > LAP_TIMEOUT_S:
                raise RuntimeError(f'the lap on track {seed} did not finish within '
                                   f'{LAP_TIMEOUT_S:g} s; last status {status}')
            time.sleep(0.1)
    finally:
        # The recorder stops first, so it closes the episode before the frames stop.
        for node in nodes:
            node.stop()
        monitor.close()


def main() -> int:
    """Record the expert on the training tracks and train the model."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', default='0-7', help='training tracks (default 0-7)')
    parser.add_argument('--steering-noise', type=float, default=8.0,
                        help="lateral acceleration noise (m/s^2) on the expert's driven "
                             'command on every second track (default 8)')
    parser.add_argument('--data', type=Path, default=Path('/tmp/liquid_control_carracing'),
                        help='dataset folder for the recorded episodes')
    parser.add_argument('--skip-recording', action='store_true',
                        help='train on the episodes already in --data')
    parser.add_argument('--record-only', action='store_true',
                        help='record the episodes and stop before training')
    parser.add_argument('--out', type=Path, default=REPO_ROOT / 'models' / 'carracing_ncp.lcm',
                        help='checkpoint to write')
    parser.add_argument('--family', default='ncp_ltc', help='model family (default ncp_ltc)')
    parser.add_argument('--max-minutes', type=float, default=20.0,
                        help='training time limit in minutes (default 20)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default 1)')
    parser.add_argument('--seed', type=int, default=0, help='training seed')
    args = parser.parse_args()

    if not args.skip_recording:
        if args.data.exists() and any(args.data.iterdir()):
            parser.error(f'--data {args.data} is not empty; choose a new folder or pass '
                         '--skip-recording to train on it')
        for index, seed in enumerate(parse_seeds(args.seeds)):
            noise = args.steering_noise if index % 2 == 1 else 0.0
            status = record_lap(seed, noise, args.data, args.data.parent /
                                f'{args.data.name}_logs' / f'track_{seed}')
            print(f'track {seed} (steering noise {noise:g}): score {status["score"]:.1f}, '
                  f'{status["tiles_visited"]}/{status["tiles_total"]} tiles, '
                  f'{status["sim_time"]:.1f} s', flush=True)

    if args.record_only:
        return 0
    train = [sys.executable, '-m', 'liquid_control.cli.main', 'train', str(args.data),
             '--config', str(config_file('train_carracing.yaml')), '--out', str(args.out),
             '--family', args.family, '--max-minutes', str(args.max_minutes),
             '--threads', str(args.threads), '--seed', str(args.seed), '--no-progress']
    print('running:', ' '.join(train), flush=True)
    return subprocess.call(train)


if __name__ == '__main__':
    sys.exit(main())
