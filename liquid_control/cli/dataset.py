"""liquid-control dataset: inspect a folder of episodes."""

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


KIND_NAMES = {'donkeycar_tub': 'donkeycar tub', 'rosbag2': 'rosbag2', 'ros1_bag': 'ROS 1 bag'}


def run(args: argparse.Namespace) -> int:
    """Print the statistics of a dataset."""
    from liquid_control.data.episodes import find_episodes
    from liquid_control.data.sources import source_kind
    from liquid_control.data.stats import dataset_statistics, format_statistics
    from liquid_control.errors import DataError

    try:
        kind = source_kind(args.directory)
    except DataError:
        kind = 'episodes'  # find_episodes names what is wrong with the folder
    if kind != 'episodes':
        raise DataError(f'{args.directory} is a {KIND_NAMES.get(kind, kind)}, not a folder of '
                        'episodes: import it first (liquid-control import '
                        f'{args.directory} --out DIR), then run dataset info on DIR. train '
                        'and evaluate also read it directly')
    episodes = find_episodes(args.directory, include_partial=args.include_partial)
    statistics = dataset_statistics(episodes, args.max_gap)
    if args.json:
        print(json.dumps(statistics, indent=2))
    else:
        print(format_statistics(statistics))
    return 0
