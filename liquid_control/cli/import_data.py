"""liquid-control import: convert a rosbag2, ROS 1 bag or donkeycar tub into episodes."""

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

from liquid_control.cli.signals import Terminated, sigterm_raises
from liquid_control.data.sync import (COMMAND_MATCHES, IMU_MODES, INVALID_FRAME_POLICIES,
                                      RAW_IMAGE_FORMATS, LabelOptions)


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the label options (the recorder's synchronisation parameters) to a parser."""
    defaults = LabelOptions()
    group = parser.add_argument_group('labels (the same options as the recorder node)')
    group.add_argument('--no-commands', action='store_true',
                       help='import camera and IMU without commands, for a source that has '
                            'no command topic')
    group.add_argument('--command-match', choices=COMMAND_MATCHES,
                       default=defaults.command_match,
                       help='nearest: the command closest in time to the frame; latest: the '
                       'last command stamped at or before it (default: %(default)s)')
    group.add_argument('--command-tolerance', type=float, metavar='SECONDS',
                       default=defaults.command_tolerance_s,
                       help='maximum time between a frame and its command (default: %(default)s)')

    group.add_argument('--imu-mode', choices=IMU_MODES, default=defaults.imu_mode,
                       help='interpolate between the IMU samples around the frame, or take '
                       'the nearest one (default: %(default)s)')
    group.add_argument('--imu-tolerance', type=float, metavar='SECONDS',
                       default=defaults.imu_tolerance_s,
                       help='maximum time between a frame and an IMU sample used for it '
                       '(default: %(default)s)')

    group.add_argument('--invalid-frames', choices=INVALID_FRAME_POLICIES,
                       default=defaults.invalid_frames,
                       help='keep frames without a command, flagged invalid, or skip them '
                       '(default: %(default)s)')
    group.add_argument('--split-gap', type=float, metavar='SECONDS',
                       default=defaults.split_gap_s,
                       help='start a new episode after a gap between frames longer than '
                       'this; 0 never splits (default: %(default)s)')

    group.add_argument('--linear-scale', type=float,
                       help='linear_x = scale * source value (default: 1, also for tub '
                       'throttle)')
    group.add_argument('--angular-scale', type=float,
                       help='angular_z = scale * source value (default: 1 for ROS messages, '
                       '-1 for the tub angle, which steers right for positive values)')
    group.add_argument('--linear-unit', metavar='UNIT',
                       help="unit name stored for linear_x, e.g. 'normalised (-1..1)' when a "
                       'Twist carries fractions of full throttle (default: m/s for Twist, '
                       'normalised (-1..1) for tubs)')
    group.add_argument('--angular-unit', metavar='UNIT',
                       help='unit name stored for angular_z, as --linear-unit (default: '
                       'rad/s for Twist)')
    group.add_argument('--joy-linear-axis', type=int, default=defaults.joy_linear_axis,
                       help='Joy axis index for linear_x (default: %(default)s)')
    group.add_argument('--joy-angular-axis', type=int, default=defaults.joy_angular_axis,
                       help='Joy axis index for angular_z (default: %(default)s)')

    group.add_argument('--raw-image-format', choices=RAW_IMAGE_FORMATS,
                       default=defaults.raw_image_format,
                       help='file format for raw (uncompressed) images; compressed images are '
                       'stored as received (default: %(default)s, lossless)')
    group.add_argument('--jpeg-quality', type=int, default=defaults.jpeg_quality,
                       help='JPEG quality 1..100 with --raw-image-format jpeg '
                       '(default: %(default)s)')


def label_options_from_args(args: argparse.Namespace) -> LabelOptions:
    """Build ``LabelOptions`` from the arguments of ``add_label_arguments``."""
    return LabelOptions(
        command_match=args.command_match, command_tolerance_s=args.command_tolerance,
        imu_mode=args.imu_mode, imu_tolerance_s=args.imu_tolerance,
        invalid_frames=args.invalid_frames, split_gap_s=args.split_gap,
        linear_scale=args.linear_scale, angular_scale=args.angular_scale,
        linear_unit=args.linear_unit, angular_unit=args.angular_unit,
        joy_linear_axis=args.joy_linear_axis, joy_angular_axis=args.joy_angular_axis,
        raw_image_format=args.raw_image_format, jpeg_quality=args.jpeg_quality,
        require_commands=not args.no_commands)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the import arguments."""
    parser.add_argument('source',
                        help='rosbag2 folder or .db3/.mcap file, ROS 1 .bag file, or donkeycar '
                        'tub v2 folder')
    parser.add_argument('--out', required=True, metavar='DIR',
                        help='dataset folder for the episodes; new episodes are numbered after '
                        'any already there')
    parser.add_argument('--image-topic', help='camera topic (default: the only Image or '
                        'CompressedImage topic)')
    parser.add_argument('--imu-topic', help='IMU topic (default: the only Imu topic, if any)')
    parser.add_argument('--command-topic', help='teacher command topic (default: the only '
                        'Twist, TwistStamped or Joy topic)')
    add_label_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Import the source and print what was written."""
    from liquid_control.data.episodes import Episode
    from liquid_control.data.sources import import_source, source_kind
    from liquid_control.errors import DataError

    options = label_options_from_args(args)
    kind = source_kind(args.source)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f'--out {out} is a file; name a dataset folder (new or existing)')
    started = time.monotonic()
    folders = []
    try:
        with sigterm_raises():
            folders = import_source(args.source, args.out, options, args.image_topic,
                                    args.imu_topic, args.command_topic)
    except Terminated:
        # The importer deleted its episodes, unless the signal came after it returned.
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        print('liquid-control import: terminated by SIGTERM; the episodes of this import '
              'were deleted', file=sys.stderr)
        return 128 + signal.SIGTERM
    elapsed = time.monotonic() - started
    episodes = [Episode(folder) for folder in folders]
    frames = sum(len(e) for e in episodes)
    print(f'imported {args.source} ({kind}): {len(episodes)} episode(s), {frames} frames in '
          f'{elapsed:.1f} s ({frames / max(elapsed, 1e-9):.0f} frames/s)')
    for episode in episodes:
        note = '' if episode.has_commands else ', no commands'
        note += '' if not episode.has_imu else ', with IMU'
        print(f'  {episode.folder}: {len(episode)} frames, '
              f'{episode.timestamps[-1] - episode.timestamps[0]:.1f} s{note}')
    if not any(e.has_commands for e in episodes):
        print('note: the source has no teacher commands; these episodes cannot train a policy')
    return 0
