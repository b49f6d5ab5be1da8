"""Shared fixtures: the sample data folder and isolated ROS 2 environments for processes."""

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'
VENV_BIN = Path(sys.executable).parent

# Caches the package writes (the compiled LTC kernel, bag imports) go to a folder of this
# test session, for this process and every child it starts, not to the user's ~/.cache.
_CACHE_HOME = tempfile.TemporaryDirectory(prefix='liquid_control_test_cache_')
os.environ['XDG_CACHE_HOME'] = _CACHE_HOME.name

# Each test that starts ROS processes gets its own DDS domain so parallel or leftover
# processes never cross-talk. Ids start at 100 + pid % 50 and wrap within 1..200.
_domain_ids = itertools.count(100 + os.getpid() % 50)


@pytest.fixture(scope='module')
def subset(tmp_path_factory) -> Path:
    """Return a dataset folder with two short episodes of the donkeycar tub, one per module."""
    from training_data import write_subset

    if not SHARED_DATA.is_dir():
        pytest.skip(f'sample data folder not found at {SHARED_DATA}')
    return write_subset(SHARED_DATA, tmp_path_factory.mktemp('subset'))


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


def terminate_when_ready(arguments, ready, description, timeout=60.0):
    """Run ``liquid-control ARGUMENTS``, send SIGTERM once ``ready()`` is true.

    Returns the exit code and stderr. ``description`` names what ``ready`` waits for, for
    the failure message when it does not happen within ``timeout`` seconds.
    """
    process = subprocess.Popen([str(VENV_BIN / 'liquid-control'), *map(str, arguments)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while process.poll() is None and not ready():
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f'{description} did not happen within {timeout} s')
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


PACKAGE_ITEMS = ['package.xml', 'setup.py', 'setup.cfg', 'resource', 'liquid_control',
                 'launch', 'config', 'models', 'test']


def run_bash(command: str, cwd: Path, env: dict = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a bash script with the test interpreter's bin folder (colcon, scripts) on PATH."""
    script = f'export PATH="{VENV_BIN}:$PATH"\n{command}'
    return subprocess.run(['bash', '-c', script], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope='session')
def colcon_workspace(tmp_path_factory) -> Path:
    """Return a workspace where a copy of the package was built with colcon."""
    if shutil.which('colcon', path=str(VENV_BIN)) is None:
        pytest.fail(f'colcon not found in {VENV_BIN}; run scripts/setup.sh')
    root = tmp_path_factory.mktemp('ws')
    package = root / 'src' / 'liquid_control'
    package.mkdir(parents=True)
    for item in PACKAGE_ITEMS:
        source = REPO_ROOT / item
        if source.is_dir():
            shutil.copytree(source, package / item,
                            ignore=shutil.ignore_patterns('__pycache__', '*.egg-info'))
        elif source.exists():
            shutil.copy2(source, package / item)
    result = run_bash('colcon build --event-handlers console_direct-', root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root
