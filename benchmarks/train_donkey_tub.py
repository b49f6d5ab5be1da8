"""Train and compare NCP-LTC, NCP-CfC, LSTM-64 and CNN-only on the real donkeycar tub.

Every model trains on the first part of the recording with the settings in
``benchmarks/donkey_tub.yaml``, one model at a time. Every model is scored on the last part,
which no model trains on; early stopping uses the part just before it. The table
lands in ``OUT/compare.md`` and ``OUT/compare.json``; checkpoints and per-model
evaluations stay in OUT, outside the repository.

Run it in the background. One seed of the four models took 60-65 minutes with a third
to two thirds of a core, 11-13 of them for the shared encoder pretraining:

    nohup .venv/bin/python benchmarks/train_donkey_tub.py --out /tmp/donkey_bench &

A second run with the same OUT reuses the checkpoints and the pretrained encoders
already there, so an interrupted run continues with the next model. The trials in
BENCHMARKS.md ran with overrides such as ``--set loss=l1 --set 'pretrain_horizons=[0]'``.
"""

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from liquid_control.data.sources import load_episodes  # noqa: E402
from liquid_control.errors import ConfigError  # noqa: E402
from liquid_control.training.compare import ModelSpec, compare  # noqa: E402
from liquid_control.training.config import load_train_config, parse_overrides  # noqa: E402

DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'donkey_indoor_train_tub'
DEFAULT_MODELS = ('ncp_ltc', 'ncp_cfc', 'lstm:64', 'cnn:64')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA,
                        help=f'donkeycar tub (default: {DEFAULT_DATA})')
    parser.add_argument('--out', type=Path, required=True,
                        help='folder for checkpoints, evaluations and the table')
    parser.add_argument('--config', type=Path, default=REPO / 'benchmarks' / 'donkey_tub.yaml',
                        help='training settings shared by every model')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        metavar='FAMILY[:UNITS]', help='models to train and compare')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0],
                        help='seeds per model; the table adds the mean')
    parser.add_argument('--minutes', type=float, default=None,
                        help='training time limit per model and seed (default: the '
                             'config\'s max_minutes)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a setting of the config for every model, e.g. '
                             '--set loss=l1')
    parser.add_argument('--cache-dir', type=Path, default=None,
                        help='where the imported tub is kept')
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: '
                                                   '%(message)s')
    torch.set_num_threads(args.threads)
    logging.info('machine: %s, %d CPU cores, torch %s, %d threads', platform.processor() or
                 platform.machine(), os.cpu_count() or 0, torch.__version__, args.threads)
    try:
        overrides = {**parse_overrides(args.set), 'threads': args.threads}
        if args.minutes is not None:
            overrides['max_minutes'] = args.minutes
        config = load_train_config(args.config, overrides)
    except ConfigError as error:
        parser.error(str(error))
    episodes = load_episodes(args.data, cache_dir=args.cache_dir)
    specs = [ModelSpec.parse(text) for text in args.models]

    started = time.perf_counter()
    # Models train one at a time and share one encoder pretraining per seed. With
    # reuse=True, models whose checkpoint is already in OUT are loaded instead.
    compare(config, episodes, args.out, specs, seeds=args.seeds, reuse=True,
            sources=[str(args.data)], progress=False)
    logging.info('finished in %.1f minutes', (time.perf_counter() - started) / 60.0)
    print((args.out / 'compare.md').read_text(), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
