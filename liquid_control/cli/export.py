"""liquid-control export MODEL: write the single-step policy to ONNX and/or torch.export.

The exported step takes (frame, [imu], dt, state) and returns (outputs, next_state); see
``liquid_control.model.export`` for shapes and units. After writing, each file is run
against the PyTorch policy on random inputs for a few steps and the export fails if they
disagree by more than ``--tolerance``.
"""

import argparse
import logging
import math
from pathlib import Path

LOGGER = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the export options to ``parser``."""
    parser.add_argument('model', type=Path, metavar='MODEL',
                        help='checkpoint file (.lcm); "bundled" for the model shipped with '
                             'the package')
    parser.add_argument('--onnx', type=Path, metavar='FILE',
                        help='write an ONNX model (opset 17, dynamic batch size) to FILE')
    parser.add_argument('--torch', type=Path, metavar='FILE',
                        help='write a torch.export program (.pt2) to FILE')
    parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE,
                        help='max absolute difference from PyTorch accepted in the check '
                             f'(default: {DEFAULT_TOLERANCE})')
    parser.add_argument('--no-check', action='store_true',
                        help='skip running the exported files against PyTorch')


def resolve_model(path: Path) -> Path:
    """Return ``path``, or the bundled model's path for the name 'bundled'."""
    if str(path) == 'bundled':
        from liquid_control.paths import bundled_model
        return bundled_model()
    return path


def run(args: argparse.Namespace) -> int:
    """Export the policy and check the files; return 1 if a check fails."""
    from liquid_control.errors import ConfigError
    from liquid_control.model import export
    from liquid_control.model.checkpoint import load_checkpoint

    if args.onnx is None and args.torch is None:
        raise ConfigError('nothing to export: give --onnx FILE, --torch FILE or both')
    if args.onnx is not None and not args.no_check:
        missing = export.onnx_available()
        if missing:
            raise ConfigError(f'cannot check the ONNX export: {missing}; or pass --no-check')
    policy, _ = load_checkpoint(resolve_model(args.model))
    failed = False
    for kind, path in (('onnx', args.onnx), ('torch', args.torch)):
        if path is None:
            continue
        if kind == 'onnx':
            export.export_onnx(policy, path)
        else:
            export.export_torch(policy, path)
        print(f'wrote {path}')
        if args.no_check:
            continue
        if kind == 'onnx':
            difference = export.compare_onnx(policy, path)
        else:
            difference = export.compare_torch_export(policy, path)
        passed = difference <= args.tolerance
        if math.isinf(difference):
            print(f'check {kind}: an output or state of PyTorch or of the export is NaN or '
                  'infinite within 5 steps: FAILED')
        else:
            print(f'check {kind}: max |difference| from PyTorch over 5 steps = '
                  f'{difference:.3g} (tolerance {args.tolerance:g}): '
                  f'{"ok" if passed else "FAILED"}')
        failed = failed or not passed
    return 1 if failed else 0
