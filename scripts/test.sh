#!/usr/bin/env bash
# Run every test with the virtual environment made by scripts/setup.sh.
# Extra arguments go to pytest (for example: scripts/test.sh -k checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "test.sh: .venv is missing; run: bash scripts/setup.sh" >&2
  exit 1
fi
# Keep DDS traffic of the tests on this host.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec .venv/bin/python -m pytest -q "$@"
