#!/usr/bin/env bash
# Create the virtual environment at .venv in the repository root with everything the package
# needs (ROS 2 Kilted wheels, torch 2.13.0 CPU, OpenCV, rosbags, ...) and install the package
# editable. Safe to run again: an existing .venv is updated.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
"$python" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' || {
  echo "setup.sh: Python 3.10 or newer is required (found $("$python" --version))" >&2
  exit 1
}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade 'pip>=23'
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "liquid_control is installed in .venv (activate with: source .venv/bin/activate)"
