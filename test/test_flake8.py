"""Code style: flake8 with the package's setup.cfg (99-column lines), as ament_flake8 runs."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_flake8_clean():
    result = subprocess.run(
        [sys.executable, '-m', 'flake8', 'liquid_control', 'test', 'launch', 'benchmarks',
         'scripts', 'setup.py'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
