"""Closed-loop benchmark: lap scores of the expert and trained policies on unseen tracks.

Each driver runs one lap of CarRacing-v3 per track seed, in this process without DDS. The
simulator's frame and IMU go to the driver every 20 ms step, and its Twist drives the next
step, as with sim_node and policy_node over DDS. A lap ends when it is finished, when the car
leaves the playfield, or after ``--max-steps`` steps (2000 = 40 s of simulated time).

    .venv/bin/python benchmarks/bench_closed_loop.py \\
        --model ncp_ltc=models/carracing_ncp.lcm --model lstm=/tmp/carracing_lstm.lcm \\
        --seeds 1000-1009 --noise 0 0.1 --out benchmarks/results/closed_loop.json

Runs split over several processes (for example one per model and noise level, with
``--no-expert``) are combined with ``--merge A.json B.json ... --out all.json``.

The score is CarRacing's return: +1000/N for each of the N road tiles first touched,
-0.1 per step, -100 for leaving the playfield. A perfect lap in 1000 steps scores 900.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from liquid_control.sim.car_racing import STEP_SECONDS, CarRacingSim
from liquid_control.sim.expert import PurePursuitExpert
from liquid_control.sim.perturbations import CameraPerturbation

# A driver is called with the simulator and returns (linear_x m/s, angular_z rad/s);
# ``reset`` starts a lap.


class ExpertDriver:
    """The pure pursuit expert; it reads the pose and track, not the camera."""

    name = 'expert'

    def reset(self, sim: CarRacingSim) -> None:
        self.expert = PurePursuitExpert(sim.track)

    def __call__(self, sim: CarRacingSim) -> tuple:
        pose = sim.pose()
        return self.expert.command(pose.x, pose.y, pose.yaw, sim.forward_speed)


class PolicyDriver:
    """A trained checkpoint stepped frame by frame through ``PolicyRunner``."""

    def __init__(self, name: str, path: Path) -> None:
        from liquid_control.inference import load_runner

        self.name = name
        self.path = path
        self.runner = load_runner(path)
        names = list(self.runner.output_names)
        self.linear_index = names.index('linear_x')
        self.angular_index = names.index('angular_z')

    def reset(self, sim: CarRacingSim) -> None:
        self.runner.reset()

    def __call__(self, sim: CarRacingSim) -> tuple:
        outputs = self.runner.step(sim.frame, sim.imu(), STEP_SECONDS)
        return float(outputs[self.linear_index]), float(outputs[self.angular_index])


def drive_lap(sim: CarRacingSim, driver, seed: int, max_steps: int) -> Dict[str, object]:
    """Drive one lap on track ``seed`` and return its status with timing."""
    sim.reset(seed)
    driver.reset(sim)
    steps_off_track = 0
    started = time.perf_counter()
    while not sim.done and sim.steps < max_steps:
        linear_x, angular_z = driver(sim)
        sim.step_twist(linear_x, angular_z)
        steps_off_track += int(sim.off_track)
    result = sim.status().to_dict()
    result['steps_off_track'] = steps_off_track
    result['wall_s'] = round(time.perf_counter() - started, 2)
    return result


def parse_seeds(text: str) -> List[int]:
    """Parse '1000-1009' or '1,5,9' into a list of seeds."""
    if '-' in text:
        first, last = (int(part) for part in text.split('-', 1))
        return list(range(first, last + 1))
    return [int(part) for part in text.split(',') if part]


def summarize(results: Sequence[dict]) -> Dict[str, float]:
    """Return mean, standard deviation and minimum score and the share of finished laps."""
    scores = np.array([r['score'] for r in results], dtype=np.float64)
    return {'mean': float(scores.mean()), 'std': float(scores.std()),
            'min': float(scores.min()),
            'finished': float(np.mean([r['lap_finished'] for r in results])),
            'tiles_fraction': float(np.mean([r['tiles_visited'] / r['tiles_total']
                                             for r in results]))}


def format_table(summary: Dict[str, Dict[str, Dict[str, float]]],
                 noises: Sequence[float]) -> str:
    """Return a Markdown table: one row per driver, mean +- std score per noise level."""
    header = '| driver | ' + ' | '.join(f'score, noise {n:g}' for n in noises)
    header += ' | laps finished (clean) | score kept under noise |'
    lines = [header, '|' + '---|' * (len(noises) + 3)]
    for name, by_noise in summary.items():
        cells = [f"{by_noise[str(n)]['mean']:.0f} +- {by_noise[str(n)]['std']:.0f}"
                 for n in noises]
        clean = by_noise[str(noises[0])]
        worst = by_noise[str(noises[-1])]
        kept = worst['mean'] / clean['mean'] if clean['mean'] > 0 else float('nan')
        lines.append(f"| {name} | {' | '.join(cells)} | {clean['finished'] * 100:.0f} % | "
                     f'{kept * 100:.0f} % |')
    return '\n'.join(lines)


def merge_results(paths: Sequence[Path], out: Optional[Path]) -> int:
    """Combine the laps of several result files, print the table and write ``out``."""
    laps: Dict[str, Dict[str, List[dict]]] = {}
    records = [json.loads(Path(path).read_text()) for path in paths]
    for record in records:
        for name, by_noise in record['laps'].items():
            laps.setdefault(name, {}).update(by_noise)
    noises = sorted({float(noise) for by_noise in laps.values() for noise in by_noise})
    for name, by_noise in laps.items():
        if name == 'expert':
            # The expert ignores the camera: its clean laps stand for every noise level.
            for noise in noises:
                by_noise.setdefault(str(noise), by_noise[str(noises[0])])
    summary = {name: {noise: summarize(runs) for noise, runs in by_noise.items()}
               for name, by_noise in laps.items()}
    print(format_table(summary, noises))
    if out:
        models = {}
        for record in records:
            models.update(record.get('models', {}))
        merged = {'seeds': records[0]['seeds'], 'noise_levels': noises,
                  'max_steps': records[0]['max_steps'], 'models': models,
                  'summary': summary, 'laps': laps}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(merged, indent=1))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every driver on every seed and noise level and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', action='append', default=[], metavar='NAME=PATH',
                        help='a checkpoint to drive, e.g. ncp_ltc=models/carracing_ncp.lcm '
                             '(repeatable)')
    parser.add_argument('--no-expert', action='store_true', help='leave out the expert')
    parser.add_argument('--seeds', default='1000-1009',
                        help='track seeds, e.g. 1000-1009 or 3,7 (default: 1000-1009, '
                             'never used for training)')
    parser.add_argument('--noise', type=float, nargs='+', default=[0.0, 0.1],
                        help='camera noise levels, standard deviation as a fraction of full '
                             'scale (default: 0 0.1)')
    parser.add_argument('--max-steps', type=int, default=2000,
                        help='step limit of a lap (50 steps a simulated second)')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--out', type=Path, help='write the results as JSON here')
    parser.add_argument('--merge', type=Path, nargs='+', metavar='JSON',
                        help='combine result files of earlier runs instead of driving')
    args = parser.parse_args(argv)
    if args.merge:
        return merge_results(args.merge, args.out)

    import torch
    torch.set_num_threads(args.threads)

    drivers = [] if args.no_expert else [ExpertDriver()]
    for item in args.model:
        name, separator, path = item.partition('=')
        if not separator:
            parser.error(f'--model {item!r} is invalid: write NAME=PATH')
        drivers.append(PolicyDriver(name, Path(path)))
    seeds = parse_seeds(args.seeds)

    results: Dict[str, Dict[str, List[dict]]] = {}
    for noise in args.noise:
        sim = CarRacingSim(seed=seeds[0], perturbation=CameraPerturbation(noise_std=noise))
        for driver in drivers:
            if driver.name == 'expert' and noise != args.noise[0]:
                # The expert ignores the camera, so noise cannot change its laps.
                results[driver.name][str(noise)] = results[driver.name][str(args.noise[0])]
                continue
            laps = []
            for seed in seeds:
                lap = drive_lap(sim, driver, seed, args.max_steps)
                lap['seed'] = seed
                laps.append(lap)
                print(f'{driver.name:>10} noise {noise:g} seed {seed}: score '
                      f"{lap['score']:7.1f}, tiles {lap['tiles_visited']}/{lap['tiles_total']}, "
                      f"{lap['steps']} steps, {lap['wall_s']} s", flush=True)
            results.setdefault(driver.name, {})[str(noise)] = laps
        sim.close()

    summary = {name: {noise: summarize(laps) for noise, laps in by_noise.items()}
               for name, by_noise in results.items()}
    print()
    print(format_table(summary, args.noise))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {'seeds': seeds, 'noise_levels': args.noise, 'max_steps': args.max_steps,
                  'models': {d.name: str(d.path) for d in drivers if hasattr(d, 'path')},
                  'summary': summary, 'laps': results}
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
