"""Shared fixtures: the sample data folder and isolated ROS 2 environments for processes."""

import itertools
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'
VENV_BIN = Path(sys.executable).parent

# Each test that starts ROS processes gets its own DDS domain so parallel or leftover
# processes never cross-talk. Domains 100..199 leave the common low ids alone.
_domain_ids = itertools.count(100 + os.getpid() % 50)


@pytest.fixture
def shared_data() -> Path:
    """Return ../shared/data (real recordings); skip, saying why, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'sample data folder not found at {SHARED_DATA}; it is kept outside '
                    'the repository and needed by this test')
    return SHARED_DATA


@pytest.fixture
def ros_env() -> dict:
    """Return an environment for child processes on a fresh, loopback-only DDS domain."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(next(_domain_ids) % 200 + 1)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PYTHONUNBUFFERED'] = '1'
    env['PATH'] = f'{VENV_BIN}{os.pathsep}{env.get("PATH", "")}'
    return env
