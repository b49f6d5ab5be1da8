"""liquid-control train: fit a policy on recorded episodes, bags or tubs.

Run it under ``torchrun --nproc_per_node=N`` to train with distributed data parallel
(gloo backend, one process per rank); rank 0 writes the checkpoints and logs.
"""

import argparse
import itertools
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional

LOGGER = logging.getLogger(__name__)

# Command-line options that map one-to-one onto TrainConfig fields.
OPTION_FIELDS = {
    'family': 'family', 'epochs': 'epochs', 'max_minutes': 'max_minutes',
    'batch_size': 'batch_size', 'sequence_length': 'sequence_length',
    'lr_encoder': 'lr_encoder', 'lr_recurrent': 'lr_recurrent', 'seed': 'seed',
    'split': 'split', 'validation_fraction': 'validation_fraction',
    'test_fraction': 'test_fraction', 'patience': 'patience', 'threads': 'threads',
    'pretrain_epochs': 'pretrain_epochs', 'freeze_encoder': 'freeze_encoder',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``liquid-control train``."""
    parser.add_argument('data', nargs='+', metavar='DATA',
                        help='episode or dataset folders, rosbag2 folders or files, ROS 1 '
                             'bags or donkeycar tubs (bags and tubs are imported first)')
    parser.add_argument('--out', required=True, type=Path, metavar='MODEL',
                        help='checkpoint to write (best epoch), e.g. models/drive.lcm; '
                             'MODEL.last.lcm and MODEL_logs/ are written next to it')
    parser.add_argument('--config', type=Path, metavar='YAML',
                        help='training settings (default: config/train.yaml of the package)')
    parser.add_argument('--family', choices=('ncp_ltc', 'ncp_cfc', 'fc_ltc', 'lstm', 'gru',
                                             'cnn'),
                        help='model family (default from the config: ncp_ltc)')
    parser.add_argument('--units', type=int,
                        help='neurons of the recurrent core (LSTM/GRU hidden units, CNN '
                             'hidden layer width)')
    parser.add_argument('--epochs', type=int, help='maximum number of epochs')
    parser.add_argument('--max-minutes', type=float,
                        help='stop after this many minutes of training (checked every batch)')
    parser.add_argument('--batch-size', type=int, help='sequences per batch')
    parser.add_argument('--sequence-length', type=int, help='frames per training sequence')
    parser.add_argument('--pretrain-epochs', type=int,
                        help='passes of encoder pretraining on single frames (0 skips it)')
    parser.add_argument('--init-encoder', type=Path, metavar='MODEL',
                        help='start from the encoder of this checkpoint, e.g. a model of '
                             'another track (same input size); "bundled" for the model '
                             'shipped with the package')
    parser.add_argument('--freeze-encoder', action='store_true', default=None,
                        help='train only the recurrent core after pretraining')
    parser.add_argument('--lr-encoder', type=float, help='learning rate of the encoder')
    parser.add_argument('--lr-recurrent', type=float,
                        help='learning rate of the recurrent core and output layer')
    parser.add_argument('--split', choices=('time', 'episode_end', 'episode'),
                        help='validation split: the last part of the recording (time), the '
                             'end of every episode, or whole episodes')
    parser.add_argument('--validation-fraction', type=float,
                        help='share of frames kept for validation (0..0.9); 0 trains on '
                             'every frame for the full --epochs, without early stopping')
    parser.add_argument('--test-fraction', type=float,
                        help='last share of the recording never used in training; the best '
                             'checkpoint is scored on it at the end (default 0)')
    parser.add_argument('--patience', type=int,
                        help='stop after this many epochs without a better validation loss')
    parser.add_argument('--seed', type=int, help='seed of weights, shuffling and augmentation')
    parser.add_argument('--threads', type=int,
                        help='torch CPU threads per process (default: torch\'s, one per '
                             'core)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        dest='overrides',
                        help='override any setting of the config, e.g. --set '
                             'augment.noise_probability=0.3 (repeatable)')
    parser.add_argument('--resume', action='store_true',
                        help='continue from MODEL.last.lcm and MODEL_logs/resume.pt')
    parser.add_argument('--cache-dir', type=Path,
                        help='where imported bags and tubs are kept (default: '
                             '$XDG_CACHE_HOME/liquid_control/imports, else '
                             '~/.cache/liquid_control/imports)')
    parser.add_argument('--no-progress', action='store_true',
                        help='hide the progress bars (hidden anyway when stderr is not a '
                             'terminal, e.g. in a log file)')


def collect_overrides(args: argparse.Namespace) -> dict:
    """Return the config overrides given on the command line, ``--set`` applied last."""
    from liquid_control.training.config import parse_overrides

    overrides = {}
    for option, key in OPTION_FIELDS.items():
        value = getattr(args, option, None)  # compare lacks some of these options
        if value is not None:
            overrides[key] = value
    if getattr(args, 'init_encoder', None) is not None:
        overrides['init_encoder'] = str(args.init_encoder)
    if getattr(args, 'units', None) is not None:
        overrides['model.units'] = args.units
    overrides.update(parse_overrides(args.overrides))
    return overrides


def load_config(args: argparse.Namespace):
    """Return the ``TrainConfig`` from ``--config`` (or the package default) and overrides."""
    from liquid_control.paths import bundled_model, config_file
    from liquid_control.training.config import load_train_config

    path = args.config
    if path is None:
        default = config_file('train.yaml')
        path = default if default.is_file() else None
    config = load_train_config(path, collect_overrides(args))
    if config.init_encoder == 'bundled':
        # The name means the same as in inspect and export, also from a config file.
        config = config.with_overrides({'init_encoder': str(bundled_model())})
    return config


def check_writable_folder(folder: Path, option: str) -> None:
    """Raise ConfigError unless ``folder`` is, or can be created as, a writable folder.

    Runs before the data is loaded, so a bad ``--out`` fails in seconds, not after an
    epoch. It creates no folder, but writes and removes a temporary file in the nearest
    existing ancestor: unlike permission bits, that also detects read-only mounts and
    works for root.
    """
    from liquid_control.errors import ConfigError

    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f'{option}: {existing} is a file, not a folder; choose another '
                          'path')
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f'{option}: cannot write into {existing} ({error.strerror}); '
                          'choose a writable folder') from error


def check_output(out: Path) -> None:
    """Raise ConfigError when the checkpoints or logs of ``--out`` cannot be written."""
    from liquid_control.errors import ConfigError
    from liquid_control.training.trainer import OutputPaths

    paths = OutputPaths.from_out(out)
    for path in (paths.best, paths.last):
        if path.is_dir():
            raise ConfigError(f'--out {out}: {path} is a folder; name a checkpoint file, '
                              f'e.g. {path / "model.lcm"}')
    if paths.logs.exists() and not paths.logs.is_dir():
        raise ConfigError(f'--out {out}: the log folder {paths.logs} is a file; move it away '
                          'or choose another --out')
    check_writable_folder(paths.best.parent, f'--out {out}')


def check_init_encoder(config) -> None:
    """Raise CheckpointError now, before any data loads, when ``init_encoder`` does not load."""
    from liquid_control.errors import CheckpointError
    from liquid_control.model.checkpoint import load_checkpoint

    if config.init_encoder is None:
        return
    try:
        load_checkpoint(config.init_encoder)
    except CheckpointError as error:
        raise CheckpointError(f'init_encoder: {error}; name a .lcm file written by '
                              'liquid-control train') from error


def show_progress(args: argparse.Namespace) -> bool:
    """Return whether to draw progress bars: not with --no-progress or into a file or pipe."""
    return not args.no_progress and sys.stderr.isatty()


def check_model_settings(config) -> None:
    """Raise ConfigError now, before any data loads, for model settings the policy rejects."""
    from liquid_control.data.preprocess import Preprocessing
    from liquid_control.training.trainer import build_policy_config

    # IMU use and output units come from the data later. Neither changes which keys are valid.
    build_policy_config(config, Preprocessing.from_dict(config.preprocessing), use_imu=False,
                        units=[''] * len(config.outputs))


def check_sources(sources, cache_dir=None) -> None:
    """Raise ConfigError for a source listed twice or a ``--cache-dir`` that is not a folder.

    A repeated source would put copies of training frames into the validation part.
    """
    from liquid_control.errors import ConfigError

    seen = {}
    for source in sources:
        resolved = Path(source).resolve()
        if resolved in seen:
            raise ConfigError(f'{source} is the same data as {seen[resolved]}; list each '
                              'source once')
        seen[resolved] = source
    if cache_dir is not None:
        check_writable_folder(cache_dir, f'--cache-dir {cache_dir}')


def load_data(sources, cache_dir=None) -> list:
    """Load the episodes of every source, importing bags and tubs on the fly."""
    from liquid_control.data.sources import load_episodes

    episodes = []
    for source in sources:
        loaded = load_episodes(source, cache_dir=cache_dir)
        LOGGER.info('%s: %d episode(s), %d frames', source, len(loaded),
                    sum(len(episode) for episode in loaded))
        episodes.extend(loaded)
    return episodes


def clean_up_failed_logs(logs: Path) -> Optional[str]:
    """Remove the log folder of a failed run if it contains no epoch yet.

    Before the first epoch ends the folder contains only TensorBoard event files without
    values. Once an epoch has written its row to log.csv the folder is kept, and the
    function returns a note that names it for the error message. Otherwise it returns None.
    """
    from liquid_control.training.logs import CSV_FILE

    if not logs.is_dir():
        return None
    if (logs / CSV_FILE).is_file():
        return f'the logs of the finished epochs are in {logs}'
    entries = list(logs.iterdir())
    if not all(entry.is_file() and entry.name.startswith('events.out.tfevents.')
               for entry in entries):
        return None
    try:
        for entry in entries:
            entry.unlink()
        logs.rmdir()
    except OSError as error:
        LOGGER.warning('cannot remove the empty log folder %s: %s', logs, error)
    return None


def _constant_advice(stop_reason: str, output: str, outputs) -> str:
    """Return what to try when ``output`` scored no better than the constant predictor."""
    if stop_reason.startswith('no improvement'):
        advice = ('the validation loss had stopped improving, so training longer will not '
                  f'help; {output} may not be predictable from these camera frames')
        others = [name for name in outputs if name != output]
        if others:
            names = ', '.join(others)
            advice += f", so consider training without it (--set 'outputs=[{names}]')"
        return advice
    if stop_reason.startswith('time limit'):
        return f'training stopped at its {stop_reason}: raise --max-minutes'
    return 'training ran all its epochs: raise --epochs, or check the data'


def run(args: argparse.Namespace) -> int:
    """Train and print where the checkpoint went."""
    from liquid_control.errors import LiquidControlError
    from liquid_control.training import distributed
    from liquid_control.training.trainer import OutputPaths, train

    config = load_config(args)
    check_output(args.out)
    check_init_encoder(config)
    check_model_settings(config)
    check_sources(args.data, args.cache_dir)
    logs = OutputPaths.from_out(args.out).logs
    logs_existed = logs.exists()
    context = distributed.start()
    try:
        episodes = load_data(args.data, args.cache_dir)
        result = train(config, episodes, args.out, sources=[str(s) for s in args.data],
                       resume=args.resume, progress=show_progress(args), context=context)
    except BaseException as error:
        # A folder of an earlier run (--resume, or the same --out again) stays as it is.
        note = None
        if context.is_main and not logs_existed:
            note = clean_up_failed_logs(logs)
        if note is not None and isinstance(error, LiquidControlError):
            raise type(error)(f'{error}; {note}') from error
        raise
    finally:
        distributed.stop(context)
    if context.is_main:
        metrics = result.best_metrics
        print(f'best checkpoint: {result.paths.best} (epoch {result.best_epoch} of '
              f'{result.epochs_run}, {result.stop_reason})')
        for (part, prefix, values), output in itertools.product(
                (('validation', 'val', metrics), ('held-out test', 'test', result.test_metrics)),
                config.outputs):
            if f'{prefix}/{output}/mae' not in values:
                continue
            mae = values[f'{prefix}/{output}/mae']
            constant = values.get(f'{prefix}/{output}/baseline_mae', float('nan'))
            print(f'{part} {output}: MAE {mae:.4f} (constant predictor {constant:.4f}), '
                  f'Pearson r {values.get(f"{prefix}/{output}/pearson", float("nan")):.3f}')
            if mae >= constant:
                print(f'  no better than the constant predictor on the {part} part: '
                      f'{_constant_advice(result.stop_reason, output, config.outputs)}')
        print(f'last checkpoint: {result.paths.last}; logs: {result.paths.logs}')
    if context.distributed:
        distributed.exit_now(0)
    return 0
