"""Closed-loop benchmark: lap scores of the expert and trained policies on unseen tracks.

Each driver runs one lap of CarRacing-v3 per track seed, in this process without DDS. The
simulator's frame and IMU go to the driver every 20 ms step, and its Twist drives the next
step, as with sim_node and policy_node over DDS. A lap ends when it is finished, when the car
leaves the playfield, or after ``--max-steps`` steps (2000 = 40 s of simulated time).

    .venv/bin/python benchmarks/bench_closed_loop.py \\
        --model ncp_ltc=models/carracing_ncp.lcm --model lstm=/tmp/carracing_lstm.lcm \\
        --seeds 1000-1009 --noise 0 0.1 0.2 --color-shift 0 -0.2 0.2 \\
        --out benchmarks/results/closed_loop.json

Camera conditions are Gaussian noise levels and a per-channel colour shift. The expert
reads no camera, so it runs only clean. Runs split over several processes (for example one
per model and condition, with ``--no-expert``) are combined with
``--merge A.json B.json ... --out all.json``.

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


def condition_name(noise: float = 0.0, color_shift: Sequence[float] = (0.0, 0.0, 0.0)) -> str:
    """Return the label of a camera condition, e.g. 'clean', 'noise 0.1', 'shift +0/-0.2/+0.2'."""
    if any(color_shift):
        return 'shift ' + '/'.join(f'{value:+g}' for value in color_shift)
    return f'noise {noise:g}' if noise > 0 else 'clean'


def _legacy_condition(key: str) -> str:
    # Result files written before conditions had names keyed them by the noise level.
    try:
        return condition_name(float(key))
    except ValueError:
        return key


def format_table(summary: Dict[str, Dict[str, Dict[str, float]]],
                 conditions: Sequence[str]) -> str:
    """Return a Markdown table: one row per driver, mean +- std score per condition.

    The last column is the worst condition's mean score as a share of the clean one.
    """
    header = '| driver | ' + ' | '.join(conditions)
    header += ' | laps finished (all conditions) | worst / clean |'
    lines = [header, '|' + '---|' * (len(conditions) + 3)]
    for name, by_condition in summary.items():
        cells = []
        for condition in conditions:
            if condition in by_condition:
                result = by_condition[condition]
                cells.append(f"{result['mean']:.0f} +- {result['std']:.0f}")
            else:
                cells.append('not run')
        present = [by_condition[c] for c in conditions if c in by_condition]
        finished = np.mean([result['finished'] for result in present])
        clean = by_condition.get('clean')
        worst = min(result['mean'] for result in present)
        worst_share = (f"{worst / clean['mean'] * 100:.0f} %" if clean and clean['mean'] > 0
                       else 'n/a')
        lines.append(f"| {name} | {' | '.join(cells)} | {finished * 100:.0f} % | {worst_share} |")
    return '\n'.join(lines)


def merge_results(paths: Sequence[Path], out: Optional[Path]) -> int:
    """Combine the laps of several result files, print the table and write ``out``."""
    laps: Dict[str, Dict[str, List[dict]]] = {}
    records = [json.loads(Path(path).read_text()) for path in paths]
    conditions: List[str] = []
    for record in records:
        for name, by_condition in record['laps'].items():
            for key, runs in by_condition.items():
                condition = _legacy_condition(key)
                laps.setdefault(name, {})[condition] = runs
                if condition not in conditions:
                    conditions.append(condition)
    conditions.sort(key=lambda c: (c != 'clean', c.startswith('shift'), c))
    if 'expert' in laps:
        # The expert ignores the camera: its clean laps stand for every condition.
        for condition in conditions:
            laps['expert'].setdefault(condition, laps['expert']['clean'])
    summary = {name: {condition: summarize(runs) for condition, runs in by_condition.items()}
               for name, by_condition in laps.items()}
    print(format_table(summary, conditions))
    if out:
        models = {}
        for record in records:
            models.update(record.get('models', {}))
        merged = {'seeds': records[0]['seeds'], 'conditions': conditions,
                  'max_steps': records[0]['max_steps'], 'models': models,
                  'summary': summary, 'laps': laps}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(merged, indent=1))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every driver on every seed and camera condition and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', action='append', default=[], metavar='NAME=PATH',
                        help='a checkpoint to drive, e.g. ncp_ltc=models/carracing_ncp.lcm '
                             '(repeatable)')
    parser.add_argument('--no-expert', action='store_true', help='leave out the expert')
    parser.add_argument('--seeds', default='1000-1009',
                        help='track seeds, e.g. 1000-1009 or 3,7 (default: 1000-1009, '
                             'never used for training)')
    parser.add_argument('--noise', type=float, nargs='*', default=[0.0, 0.1],
                        help='camera noise levels, standard deviation as a fraction of full '
                             'scale (default: 0 0.1)')
    parser.add_argument('--color-shift', type=float, nargs=3, metavar=('R', 'G', 'B'),
                        help='also run with this colour shift (fractions of full scale)')
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
    conditions = [(condition_name(noise), CameraPerturbation(noise_std=noise))
                  for noise in args.noise]
    if args.color_shift:
        shift = tuple(args.color_shift)
        conditions.append((condition_name(color_shift=shift),
                           CameraPerturbation(color_shift=shift)))

    results: Dict[str, Dict[str, List[dict]]] = {}
    for label, perturbation in conditions:
        sim = CarRacingSim(seed=seeds[0], perturbation=perturbation)
        for driver in drivers:
            if isinstance(driver, ExpertDriver) and label != 'clean':
                continue
            laps = []
            for seed in seeds:
                lap = drive_lap(sim, driver, seed, args.max_steps)
                lap['seed'] = seed
                laps.append(lap)
                print(f'{driver.name:>10} {label} seed {seed}: score '
                      f"{lap['score']:7.1f}, tiles {lap['tiles_visited']}/{lap['tiles_total']}, "
                      f"{lap['steps']} steps, {lap['wall_s']} s", flush=True)
            results.setdefault(driver.name, {})[label] = laps
        sim.close()

    summary = {name: {label: summarize(laps) for label, laps in by_condition.items()}
               for name, by_condition in results.items()}
    if 'expert' in summary:
        for label, _ in conditions:
            summary['expert'].setdefault(label, summary['expert']['clean'])
    print()
    print(format_table(summary, [label for label, _ in conditions]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {'seeds': seeds, 'conditions': [label for label, _ in conditions],
                  'max_steps': args.max_steps,
                  'models': {d.name: str(d.path) for d in drivers if hasattr(d, 'path')},
                  'summary': summary, 'laps': results}
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
