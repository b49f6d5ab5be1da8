"""Entry point of the liquid-control command: one subcommand a module.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps
heavy imports (torch, rclpy) inside ``run`` so that ``--help`` stays fast.
"""

import argparse
import importlib
import logging
import contextlib
import os
import signal
import sys
from typing import Optional, Sequence

from liquid_control import __version__
from liquid_control.cli.signals import Terminated, sigterm_raises
from liquid_control.errors import LiquidControlError

# (subcommand, module under liquid_control.cli, one-line help)
COMMANDS = [
    ('import', 'import_data', 'import a rosbag2, ROS 1 bag or donkeycar tub as episodes'),
    ('dataset', 'dataset', 'inspect, check or repair a dataset of episodes'),
    ('train', 'train', 'train a policy on episodes, bags or tubs'),
    ('compare', 'compare', 'train several model families on the same data and tabulate them'),
    ('evaluate', 'evaluate', 'replay recordings through a policy and report how close it is'),
    ('replay', 'replay', 'play a bag into a live policy node and record its commands'),
    ('demo', 'demo', 'drive the simulator with the bundled model and write a video'),
    ('inspect', 'inspect_model', 'print a checkpoint\'s architecture, parameters and wiring'),
    ('export', 'export', 'export a checkpoint\'s policy step to ONNX and torch.export'),
    ('bench', 'bench', 'run a speed benchmark (bench core: LTC against ncps)'),
]

# Subcommands whose clean-up code also runs on SIGTERM, as on Ctrl-C: an import on the fly
# removes its staging folder, dataset repair its copies, train an empty log folder. replay
# and demo stop their node processes on SIGTERM themselves.
CLEAN_UP_ON_SIGTERM = {'train', 'compare', 'evaluate', 'dataset', 'export'}


def _requested_command(argv: Sequence[str]) -> Optional[str]:
    """Return the subcommand named on the command line (the first non-option word)."""
    for word in argv:
        if not word.startswith('-'):
            return word
    return None


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """Build the argument parser; only ``command``'s module is imported for its options.

    Importing one subcommand module can pull in torch (seconds), so ``liquid-control
    --help`` lists the subcommands from ``COMMANDS`` without importing any of them.
    """
    parser = argparse.ArgumentParser(
        prog='liquid-control',
        description='Train, evaluate, inspect and run liquid neural network policies.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='log at debug level')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, module_name, help_text in COMMANDS:
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f'liquid_control.cli.{module_name}')
            module.add_arguments(subparser)
            subparser.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, run the subcommand and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format='%(levelname)s %(name)s: %(message)s')
    if args.command is None:
        parser.print_help()
        return 2
    handling = (sigterm_raises() if args.command in CLEAN_UP_ON_SIGTERM
                else contextlib.nullcontext())
    try:
        with handling:
            return int(args.run(args) or 0)
    except (LiquidControlError, FileNotFoundError) as error:
        print(f'liquid-control {args.command}: error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'liquid-control {args.command}: interrupted', file=sys.stderr)
        return 130
    except Terminated:
        print(f'liquid-control {args.command}: terminated by SIGTERM', file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        # The reader of stdout (e.g. head) has gone; output further prints nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == '__main__':
    sys.exit(main())
