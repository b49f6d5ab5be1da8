"""liquid-control bench TARGET: run a speed benchmark and print its results.

Each target is a function that returns a JSON-compatible dict. ``--json`` prints that
dict as one JSON object, and otherwise its numbers are printed one per line. Benchmarks
compare against a reference measured in the same run, so read ratios rather than times
on a shared or busy machine.
"""

import argparse
import importlib
import json

# Target name -> (module, function returning a dict, one-line description).
TARGETS = {
    'core': ('liquid_control.model.benchmark', 'run_core',
             'LTC step and training speed against ncps 1.0.1, policy step against encoder'),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to ``parser``."""
    parser.add_argument('target', choices=sorted(TARGETS), help='benchmark to run: ' + '; '.join(
        f'{name}: {entry[2]}' for name, entry in sorted(TARGETS.items())))
    parser.add_argument('--json', action='store_true',
                        help='print the results as one JSON object')
    parser.add_argument('--quick', action='store_true',
                        help='fewer repetitions: faster, noisier numbers (for smoke tests)')


def _print_lines(values: dict, prefix: str = '') -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _print_lines(value, f'{prefix}{key}.')
        elif isinstance(value, float):
            print(f'{prefix}{key}: {value:.4g}')
        else:
            print(f'{prefix}{key}: {value}')


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print its results."""
    module_name, function_name, _ = TARGETS[args.target]
    function = getattr(importlib.import_module(module_name), function_name)
    results = function(quick=args.quick)
    if args.json:
        print(json.dumps(results, sort_keys=False))
    else:
        _print_lines(results)
    return 0
