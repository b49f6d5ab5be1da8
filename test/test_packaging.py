"""The package builds with colcon in a workspace and its installed entry points run."""

import re
from pathlib import Path

import pytest

from conftest import run_bash


@pytest.fixture
def workspace(colcon_workspace) -> Path:
    return colcon_workspace


REPO_ROOT = Path(__file__).resolve().parent.parent


def test_package_xml_declares_imports():
    sources = list((REPO_ROOT / 'liquid_control').rglob('*.py'))
    sources += list((REPO_ROOT / 'launch').glob('*.py'))
    imported = set()
    for source in sources:
        imported |= set(re.findall(r'^\s*(?:from|import) (\w+_msgs|std_srvs|rclpy)\b',
                                   source.read_text(), re.MULTILINE))
    declared = set(re.findall(r'<exec_depend>([\w-]+)</exec_depend>',
                              (REPO_ROOT / 'package.xml').read_text()))
    assert 'nav_msgs' in imported
    assert imported - declared == set()


def test_colcon_installs_share_files(workspace):
    share = workspace / 'install' / 'liquid_control' / 'share' / 'liquid_control'
    assert (share / 'package.xml').is_file()
    assert (share / 'config' / 'fastdds_large_frames.xml').is_file()
    index = workspace / 'install' / 'liquid_control' / 'share' / 'ament_index'
    assert (index / 'resource_index' / 'packages' / 'liquid_control').is_file()


def test_installed_cli_runs_after_sourcing(workspace):
    result = run_bash('source install/setup.bash && '
                      'install/liquid_control/lib/liquid_control/liquid-control --version',
                      workspace, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'liquid-control 0.1.0' in result.stdout


@pytest.mark.parametrize('executable', ['policy_node', 'recorder_node', 'sim_node',
                                        'expert_node'])
def test_installed_node_executables_exist(workspace, executable):
    path = workspace / 'install' / 'liquid_control' / 'lib' / 'liquid_control' / executable
    assert path.is_file()


def test_installed_share_dir_found_by_ament_index(workspace):
    code = ('from liquid_control.paths import share_dir; print(share_dir())')
    result = run_bash(f'source install/setup.bash && cd / && python -c "{code}"', workspace,
                      timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith('install/liquid_control/share/liquid_control')


def test_colcon_test_runs_package_tests(workspace):
    result = run_bash('colcon test --packages-select liquid_control '
                      '--pytest-args -k test_decode_raw_unknown_encoding && '
                      'colcon test-result --verbose', workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.search(r'Summary: (\d+) tests?, (\d+) errors?, (\d+) failures?', result.stdout)
    assert summary is not None, result.stdout
    assert int(summary.group(1)) >= 1
    assert summary.group(2) == '0'
    assert summary.group(3) == '0'
