"""Evaluation speed: how much faster than real time the clean replay of a recording runs.

The reference is the recording itself: its recorded duration (frame intervals summed, gaps
left out) divided by the time the replay takes. The replay covers what
``liquid-control evaluate`` times: decoding every frame, crop and resize, and the stateful
policy over all frames in recorded order. Importing the tub into episodes happens once
before timing (a later evaluate reads the cached import). Robustness replays, saliency and
plots are not part of it.

Each policy family is built untrained with the input size of config/train.yaml (the
weights do not change the cost); ``--model`` adds a trained checkpoint. Every
configuration runs ``--repeat`` times and the median is reported, in wall-clock and in
process CPU time, because other work on a shared machine slows the wall clock. The load
average before and after the run is printed with the results.

    .venv/bin/python benchmarks/bench_evaluate.py --repeat 3 --json /tmp/bench_eval.json
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'
FAMILIES = ('ncp_ltc', 'ncp_cfc', 'lstm:64', 'cnn')


def _policy(spec: str, preprocessing: dict):
    from liquid_control.model.policy import PolicyConfig, build_policy

    family, _, units = spec.partition(':')
    config = PolicyConfig(family=family, units=int(units) if units else 19,
                          preprocessing=dict(preprocessing))
    return build_policy(config)


def _time_replay(policy, episodes, threads: int, chunk_length: int) -> Dict[str, float]:
    import torch

    from liquid_control.data.preprocess import Preprocessing
    from liquid_control.evaluation.replay import FramePrefetcher, evaluate_episodes

    torch.set_num_threads(threads)
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    wall_started = time.perf_counter()
    cpu_started = time.process_time()
    # The same path as run_evaluation: frames decode in a background thread while the
    # policy replays the episodes before them.
    with FramePrefetcher(episodes, preprocessing) as frames:
        result = evaluate_episodes(policy, episodes, frames=frames, chunk_length=chunk_length)
    wall = time.perf_counter() - wall_started
    cpu = time.process_time() - cpu_started
    return {'frames': result.frames, 'duration_s': result.duration_s, 'wall_s': wall,
            'cpu_s': cpu}


def main(argv: List[str] = None) -> int:
    """Run the benchmark, print a Markdown table and optionally write JSON."""
    import yaml

    from liquid_control.data.sources import load_episodes
    from liquid_control.evaluation.replay import DEFAULT_CHUNK_LENGTH

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--source', type=Path,
                        default=SHARED_DATA / 'donkey_indoor_train_tub',
                        help='recording to replay (default: the donkeycar sample tub)')
    parser.add_argument('--model', type=Path, action='append', default=[],
                        help='also time this checkpoint (repeatable)')
    parser.add_argument('--families', nargs='*', default=list(FAMILIES),
                        help=f'untrained families to time (default: {" ".join(FAMILIES)})')
    parser.add_argument('--threads', type=int, nargs='*', default=[1],
                        help='torch thread counts to time (default: 1)')
    parser.add_argument('--chunk-length', type=int, default=DEFAULT_CHUNK_LENGTH)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--json', type=Path, help='write every measurement to this file')
    args = parser.parse_args(argv)

    if not args.source.exists():
        print(f'bench_evaluate: source {args.source} not found', file=sys.stderr)
        return 2
    train_config = yaml.safe_load((REPO_ROOT / 'config' / 'train.yaml').read_text())
    preprocessing = train_config['preprocessing']
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as cache:
        episodes = load_episodes(args.source, cache_dir=cache)
        policies = [(spec, _policy(spec, preprocessing)) for spec in args.families]
        if args.model:
            from liquid_control.model.checkpoint import load_checkpoint
            policies += [(str(path), load_checkpoint(path)[0]) for path in args.model]

        rows = []
        for name, policy in policies:
            for threads in args.threads:
                runs = [_time_replay(policy, episodes, threads, args.chunk_length)
                        for _ in range(args.repeat)]
                wall = statistics.median(run['wall_s'] for run in runs)
                cpu = statistics.median(run['cpu_s'] for run in runs)
                duration = runs[0]['duration_s']
                input_size = (f'{policy.config.preprocessing["height"]}x'
                              f'{policy.config.preprocessing["width"]}')
                rows.append({'policy': name, 'input': input_size, 'threads': threads,
                             'frames': runs[0]['frames'], 'duration_s': duration,
                             'wall_s': wall, 'cpu_s': cpu,
                             'realtime_factor_wall': duration / wall,
                             'realtime_factor_cpu': duration / cpu, 'runs': runs})
                print(f'{name} ({input_size}, {threads} thread(s)): {wall:.2f} s wall, '
                      f'{cpu:.2f} s CPU -> {duration / wall:.0f}x real time '
                      f'({duration / cpu:.0f}x by CPU time)', flush=True)
    load_after = os.getloadavg()

    print()
    print(f'source: {args.source} ({rows[0]["frames"]} frames, '
          f'{rows[0]["duration_s"]:.1f} s recorded); median of {args.repeat} runs; '
          f'load average {load_before[0]:.1f} before, {load_after[0]:.1f} after')
    print()
    print('| policy | input | threads | wall (s) | CPU (s) | x real time (wall) '
          '| x real time (CPU) |')
    print('|---|---|---|---|---|---|---|')
    for row in rows:
        print(f'| {row["policy"]} | {row["input"]} | {row["threads"]} | {row["wall_s"]:.2f} '
              f'| {row["cpu_s"]:.2f} | {row["realtime_factor_wall"]:.0f} '
              f'| {row["realtime_factor_cpu"]:.0f} |')
    if args.json:
        args.json.write_text(json.dumps({'source': str(args.source), 'rows': rows,
                                         'load_before': load_before,
                                         'load_after': load_after}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
