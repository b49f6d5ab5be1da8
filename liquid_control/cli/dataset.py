"""liquid-control dataset: inspect, check and repair a folder of episodes."""

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the dataset subcommands."""
    actions = parser.add_subparsers(dest='dataset_action', metavar='ACTION', required=True)
    info = actions.add_parser(
        'info', help='frames, duration, rate, gaps and command statistics',
        description='Print frames, duration, rate, gaps, and per command field the mean, '
        'standard deviation, minimum and maximum over frames with a valid command.')
    info.add_argument('directory', metavar='DIR', help='dataset or episode folder')
    info.add_argument('--json', action='store_true', help='print the statistics as JSON')
    info.add_argument('--include-partial', action='store_true',
                      help='include unfinished (.partial) episodes, read up to their last '
                      'complete row')
    info.add_argument('--max-gap', type=float, metavar='SECONDS',
                      help='count steps longer than this as gaps (default: three median frame '
                      'periods of each episode)')
    info.set_defaults(dataset_run=_run_info)

    check = actions.add_parser(
        'check', help='decode every frame and list damaged frames and other problems',
        description='Decode every frame file of every episode, unfinished ones included, and '
        'list episodes that cannot be read, missing or damaged frame files (errors), and '
        'unfinished episodes, episodes without a valid command, frames of another size, '
        'blank frames and runs of identical frames (warnings). Exit code 1 when there is an '
        'error, else 0.')
    _add_decoding_arguments(check)
    check.add_argument('--json', action='store_true', help='print the findings as JSON')
    check.set_defaults(dataset_run=_run_check)

    repair = actions.add_parser(
        'repair', help='copy the episodes without their damaged frames',
        description='Write finished copies of every readable episode of DIR, unfinished '
        'episodes included, into a new folder. Frames are copied byte for byte with their '
        'rows; damaged frames are left out and listed in the copy\'s metadata.json under '
        'repaired_from. The source is not changed.')
    _add_decoding_arguments(repair)
    repair.add_argument('--out', required=True, metavar='NEW_DIR',
                        help='folder for the copies, outside DIR; created if needed')
    repair.set_defaults(dataset_run=_run_repair)


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the folder and the decoding threads of the actions that decode every frame."""
    parser.add_argument('directory', metavar='DIR', help='dataset or episode folder')
    parser.add_argument('--workers', type=int, default=2, metavar='N',
                        help='threads that decode frames (default: %(default)s)')


KIND_NAMES = {'donkeycar_tub': 'donkeycar tub', 'rosbag2': 'rosbag2', 'ros1_bag': 'ROS 1 bag'}


def run(args: argparse.Namespace) -> int:
    """Run the dataset action."""
    from liquid_control.errors import ConfigError

    if getattr(args, 'workers', 1) < 1:
        raise ConfigError(f'--workers {args.workers} is invalid: use 1 or more threads')
    _check_episode_folder(args.directory, args.dataset_action)
    return args.dataset_run(args)


def _check_episode_folder(directory: str, action: str) -> None:
    """Raise DataError when ``directory`` is a bag or tub instead of episodes."""
    from liquid_control.data.sources import source_kind
    from liquid_control.errors import DataError

    try:
        kind = source_kind(directory)
    except DataError:
        return  # the action names what is wrong with the folder
    if kind != 'episodes':
        raise DataError(f'{directory} is a {KIND_NAMES.get(kind, kind)}, not a folder of '
                        'episodes: import it first (liquid-control import '
                        f'{directory} --out DIR), then run dataset {action} on DIR. train '
                        'and evaluate also read it directly')


def _run_info(args: argparse.Namespace) -> int:
    """Print the statistics of a dataset."""
    from liquid_control.data.episodes import find_episodes
    from liquid_control.data.stats import dataset_statistics, format_statistics

    episodes = find_episodes(args.directory, include_partial=args.include_partial)
    statistics = dataset_statistics(episodes, args.max_gap)
    if args.json:
        print(json.dumps(statistics, indent=2))
    else:
        print(format_statistics(statistics))
    return 0


def _run_check(args: argparse.Namespace) -> int:
    """Print what a check of every frame found; return 1 when there is an error."""
    from liquid_control.data.check import check_dataset, format_checks

    checks = check_dataset(args.directory, args.workers)
    if args.json:
        print(json.dumps({'episodes': [check.to_dict() for check in checks],
                          'errors': sum(check.errors for check in checks),
                          'warnings': sum(len(check.warnings) for check in checks)},
                         indent=2))
    else:
        print(format_checks(checks))
    return 1 if any(check.errors for check in checks) else 0


def _run_repair(args: argparse.Namespace) -> int:
    """Write the repaired copies and print what was left out."""
    from liquid_control.data.check import repair_dataset
    from liquid_control.errors import DataError

    results = repair_dataset(args.directory, args.out, args.workers)
    for result in results:
        if result.skipped:
            print(f'{result.source.name}: skipped, {result.skipped}')
            continue
        left_out = ', '.join(str(index) for index, _, _ in result.left_out) or 'none'
        print(f'{result.source.name} -> {result.folder}: {result.frames} frames, left out: '
              f'{left_out}')
    written = [result for result in results if result.folder is not None]
    if not written:
        raise DataError(f'no episode of {args.directory} could be copied; see the reasons '
                        'above')
    print(f'wrote {len(written)} episode(s) to {args.out}')
    return 0
