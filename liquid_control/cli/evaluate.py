"""liquid-control evaluate: replay recordings through a policy and report how close it is.

SRC is a rosbag2 (sqlite3 or MCAP), a ROS 1 bag, a donkeycar tub or an episode folder.
The output folder receives metrics.json, predictions.csv, PNG plots and report.html.
"""

import argparse
import logging
import math
from pathlib import Path

from liquid_control.cli.import_data import add_label_arguments, label_options_from_args
from liquid_control.cli.train import check_sources, check_writable_folder

LOGGER = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the evaluate options to ``parser``."""
    from liquid_control.evaluation.perturbations import DEFAULT_PERTURBATIONS
    from liquid_control.evaluation.replay import DEFAULT_CHUNK_LENGTH, DEFAULT_MAX_GAP_S

    parser.add_argument('sources', nargs='+', metavar='SRC',
                        help='recording to replay: episode or dataset folder, rosbag2, '
                             'ROS 1 bag or donkeycar tub; several are evaluated together')
    parser.add_argument('--model', required=True, type=Path,
                        help='checkpoint file (.lcm) written by liquid-control train')
    parser.add_argument('--out', required=True, type=Path,
                        help='output folder for metrics.json, plots and report.html '
                             '(created if missing; existing files are overwritten)')
    parser.add_argument('--perturbations', nargs='*', default=list(DEFAULT_PERTURBATIONS),
                        metavar='KIND:VALUE',
                        help='image perturbations for the robustness section: noise:VARIANCE, '
                             'brightness:SHIFT, blur:SIGMA_PIXELS on [0, 1] network input '
                             f'(default: {" ".join(DEFAULT_PERTURBATIONS)}); give none to '
                             'skip robustness')
    parser.add_argument('--max-gap', type=float, default=DEFAULT_MAX_GAP_S, metavar='SECONDS',
                        help='reset the policy state after a time step longer than this '
                             f'(default: {DEFAULT_MAX_GAP_S})')
    parser.add_argument('--chunk-length', type=int, default=DEFAULT_CHUNK_LENGTH,
                        metavar='FRAMES',
                        help='frames per forward call; the state carries across calls, so '
                             'this changes speed and memory, not results '
                             f'(default: {DEFAULT_CHUNK_LENGTH})')
    parser.add_argument('--saliency-frames', type=int, default=6, metavar='N',
                        help='sample frames shown with saliency overlays (default: 6)')
    parser.add_argument('--ssim-frames', type=int, default=48, metavar='N',
                        help='frames whose saliency maps are compared between clean and '
                             'perturbed input (default: 48)')
    parser.add_argument('--trace-seconds', type=float, default=30.0, metavar='SECONDS',
                        help='length of the neuron activity plot (default: 30)')
    parser.add_argument('--no-plots', action='store_true',
                        help='write metrics.json and predictions.csv only')
    parser.add_argument('--part', choices=('all', 'train', 'validation', 'test'),
                        default='all',
                        help='score only this part of the data the model was trained on, '
                             'as its checkpoint records the split; the sources must then '
                             'be that data (default: all frames)')
    parser.add_argument('--cache-dir', type=Path, default=None,
                        help='folder for episodes imported from bags and tubs, reused by '
                             'later runs (default: $XDG_CACHE_HOME/liquid_control/imports, '
                             'else ~/.cache/liquid_control/imports)')
    parser.add_argument('--threads', type=int, default=1, metavar='N',
                        help='torch CPU threads; one suits frame-by-frame replay best '
                             '(default: 1)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the noise perturbations (default: 0)')
    parser.add_argument('--image-topic', help='camera topic of a bag (default: the only '
                        'Image or CompressedImage topic)')
    parser.add_argument('--imu-topic', help='IMU topic of a bag (default: the only Imu '
                        'topic, if any)')
    parser.add_argument('--command-topic', help='human command topic of a bag (default: '
                        'the only Twist, TwistStamped or Joy topic)')
    add_label_arguments(parser)


def _validate(args: argparse.Namespace) -> None:
    from liquid_control.errors import ConfigError

    if not args.max_gap > 0:
        raise ConfigError(f'--max-gap {args.max_gap} is invalid: use seconds > 0')
    for option in ('chunk_length', 'saliency_frames', 'ssim_frames'):
        value = getattr(args, option)
        minimum = 1 if option == 'chunk_length' else 0
        if value < minimum:
            raise ConfigError(f'--{option.replace("_", "-")} {value} is invalid: use an '
                              f'integer >= {minimum}')
    if not 0 < args.trace_seconds < math.inf:
        raise ConfigError(f'--trace-seconds {args.trace_seconds} is invalid: use a finite '
                          'number of seconds > 0')
    if args.threads < 1:
        raise ConfigError(f'--threads {args.threads} is invalid: use 1 or more')
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f'--out {args.out} is a file, not a folder: name a folder for the '
                          'evaluation output')
    check_writable_folder(args.out, f'--out {args.out}')
    check_sources(args.sources, args.cache_dir)


def run(args: argparse.Namespace) -> int:
    """Evaluate the model on the sources and write the report; return the exit code."""
    from liquid_control.data.sources import load_episodes
    from liquid_control.data.sync import LabelOptions
    from liquid_control.errors import LiquidControlError
    from liquid_control.evaluation.metrics import describe_lag
    from liquid_control.evaluation.perturbations import parse_perturbations
    from liquid_control.evaluation.pipeline import EvaluationOptions, run_evaluation
    from liquid_control.model.checkpoint import load_checkpoint

    _validate(args)
    parse_perturbations(args.perturbations)  # reject bad names before the slow part

    policy, metadata = load_checkpoint(args.model)
    LOGGER.info('model %s: %s, outputs %s', args.model, policy.config.family,
                ', '.join(policy.output_names))
    # Only options that differ from the defaults go to the importer, because episode
    # folders are already labelled and reject label options.
    defaults = LabelOptions().to_dict()
    label_options = {key: value for key, value in
                     label_options_from_args(args).to_dict().items()
                     if value != defaults[key]}
    episodes = []
    for source in args.sources:
        loaded = load_episodes(source, cache_dir=args.cache_dir,
                               image_topic=args.image_topic, imu_topic=args.imu_topic,
                               command_topic=args.command_topic, **label_options)
        LOGGER.info('source %s: %d episode(s), %d frames', source, len(loaded),
                    sum(len(episode) for episode in loaded))
        episodes.extend(loaded)

    counts = policy.parameter_counts()
    info = {
        'model': str(args.model),
        'family': policy.config.family,
        'parameters (encoder / recurrent / head / total)':
            ' / '.join(str(counts.get(key, '-'))
                       for key in ('encoder', 'recurrent', 'head', 'total')),
        'sources': ', '.join(str(source) for source in args.sources),
        'episodes': len(episodes),
        'torch threads': args.threads,
    }
    options = EvaluationOptions(
        perturbations=args.perturbations, max_gap_s=args.max_gap,
        chunk_length=args.chunk_length, saliency_frames=args.saliency_frames,
        ssim_frames=args.ssim_frames, trace_seconds=args.trace_seconds, seed=args.seed,
        torch_threads=args.threads, plots=not args.no_plots, part=args.part, info=info)
    try:
        metrics = run_evaluation(policy, episodes, args.out, metadata, options)
    except OSError as error:
        raise LiquidControlError(f'evaluation failed: {error}; check that --out {args.out} '
                                 'is a writable folder and the sources are readable') from error

    for name in policy.output_names:
        values = metrics[name]
        print(f'{name}: MAE {values["mae"]:.4f}  RMSE {values["rmse"]:.4f}  '
              f'R2 {values["r2"]:.3f}  r {values["pearson"]:.3f}  '
              f'baseline MAE {values["baseline_mae"]:.4f}  change/frame '
              f'{values["mean_abs_change"]:.4f} (human {values["target_mean_abs_change"]:.4f})')
        if math.isfinite(values.get('lag_s', math.nan)):
            print(f'{name}: {describe_lag(values)}')
    for part, values in (metrics.get('parts') or {}).items():
        scores = ', '.join(f'{name} MAE {values[name]["mae"]:.4f} r '
                           f'{values[name]["pearson"]:.3f}' for name in policy.output_names)
        print(f'{part} part ({values["frames"]} frames): {scores}')
    if metrics['scored_frames'] == 0 and args.no_commands:
        LOGGER.info('no human commands (--no-commands), so the accuracy metrics are NaN; '
                    'the report shows the policy outputs, neuron activity and saliency')
    elif metrics['scored_frames'] == 0:
        LOGGER.warning('no frame has a human command, so no metric could be computed; '
                       'check the command topic (--command-topic) of the source')
    print(f'{metrics["frames"]} frames ({metrics["unscored_frames"]} not scored), '
          f'{metrics["duration_s"]:.1f} s recorded, evaluated in '
          f'{metrics["eval_seconds"]:.2f} s = {metrics["realtime_factor"]:.0f}x real time')
    if args.no_plots:
        print(f'metrics: {Path(args.out) / "metrics.json"}')
    else:
        print(f'report: {Path(args.out) / "report.html"}')
    return 0
