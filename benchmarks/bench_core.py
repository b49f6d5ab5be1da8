"""Core benchmark: the LTC against ncps 1.0.1, and a policy step against its encoder.

Same measurement as ``liquid-control bench core``; this script also writes the JSON to a
file so results can be kept beside BENCHMARKS.md:

    .venv/bin/python benchmarks/bench_core.py --out benchmarks/results/core.json

See ``liquid_control.model.benchmark`` for what is timed and how.
"""

import argparse
import json
import sys
from pathlib import Path

from liquid_control.model.benchmark import run_core


def main() -> int:
    """Run the benchmark, print the JSON and optionally write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--outputs', type=int, default=2,
                        help='motor neurons of the AutoNCP(19, outputs) wiring (default: 2)')
    parser.add_argument('--quick', action='store_true',
                        help='fewer repetitions: faster, noisier numbers')
    parser.add_argument('--out', type=Path, help='also write the JSON result to this file')
    args = parser.parse_args()
    results = run_core(outputs=args.outputs, quick=args.quick)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
