"""liquid-control compare: train several model families on the same data and tabulate them."""

import argparse
import logging
from pathlib import Path

from liquid_control.cli.train import (check_init_encoder, check_sources, check_writable_folder,
                                      load_config, load_data, show_progress)

LOGGER = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``liquid-control compare``."""
    from liquid_control.training.compare import DEFAULT_MODELS, ROBUSTNESS

    parser.add_argument('data', nargs='+', metavar='DATA',
                        help='episode or dataset folders, bags or donkeycar tubs')
    parser.add_argument('--out', required=True, type=Path, metavar='DIR',
                        help='folder for checkpoints, evaluations, compare.md and '
                             'compare.json')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        metavar='FAMILY[:UNITS]',
                        help='models to compare, e.g. ncp_ltc ncp_cfc lstm:64 cnn '
                             f'(default: {" ".join(DEFAULT_MODELS)})')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0],
                        help='train every model once per seed; the table adds the mean')
    parser.add_argument('--config', type=Path, metavar='YAML',
                        help='training settings (default: config/train.yaml of the package)')
    parser.add_argument('--epochs', type=int, help='maximum number of epochs per model')
    parser.add_argument('--max-minutes', type=float,
                        help='training time limit per model and seed, in minutes')
    parser.add_argument('--test-fraction', type=float,
                        help='last share of the recording held out from training and used '
                             'for the table (0 scores the validation part instead)')
    parser.add_argument('--validation-fraction', type=float,
                        help='share of frames used for early stopping')
    parser.add_argument('--threads', type=int,
                        help='torch CPU threads (default: torch\'s, one per core)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        dest='overrides', help='override a training setting (repeatable)')
    parser.add_argument('--perturbations', nargs='*', default=list(ROBUSTNESS),
                        metavar='KIND:VALUE',
                        help='robustness perturbations, as for evaluate (default: '
                             f'{" ".join(ROBUSTNESS)})')
    parser.add_argument('--reuse', action='store_true',
                        help='load checkpoints already in --out instead of training again')
    parser.add_argument('--plots', action='store_true',
                        help='write the evaluation plots and report of every run')
    parser.add_argument('--cache-dir', type=Path,
                        help='where imported bags and tubs are kept')
    parser.add_argument('--no-progress', action='store_true',
                        help='hide the progress bars (hidden anyway when stderr is not a '
                             'terminal, e.g. in a log file)')


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print the table."""
    import torch

    from liquid_control.errors import ConfigError
    from liquid_control.evaluation.perturbations import parse_perturbations
    from liquid_control.training.compare import ModelSpec, compare

    specs = [ModelSpec.parse(text) for text in args.models]
    # Equal entries would train into the same files and count twice in the means.
    names = [spec.name.replace('-', ':') for spec in specs]
    for entries, option in ((names, '--models'), (args.seeds, '--seeds')):
        repeated = sorted({str(entry) for entry in entries if entries.count(entry) > 1})
        if repeated:
            raise ConfigError(f'{option} lists {", ".join(repeated)} more than once; list '
                              'each once')
    for seed in args.seeds:
        if not 0 <= seed < 2**32:
            raise ConfigError(f'--seeds {seed} is invalid: use integers from 0 to 2**32 - 1')
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f'--out {args.out} is a file, not a folder: name a folder for the '
                          'comparison')
    check_writable_folder(args.out, f'--out {args.out}')
    parse_perturbations(args.perturbations)  # reject bad names before the slow part
    config = load_config(args)
    check_init_encoder(config)
    check_sources(args.data, args.cache_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    episodes = load_data(args.data, args.cache_dir)
    compare(config, episodes, args.out, specs, seeds=args.seeds,
            perturbations=args.perturbations, reuse=args.reuse, plots=args.plots,
            sources=[str(s) for s in args.data], progress=show_progress(args))
    print((args.out / 'compare.md').read_text(), end='')
    return 0
