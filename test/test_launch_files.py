"""drive.launch.py names only things that exist, and its node works when started directly.

``launch`` cannot run here, so the tests read the launch file's argument table and check
every executable, file and parameter it names. They then start policy_node with the same
parameters, remappings and namespace as ``launch_ros`` would, and check its topics.
The last test runs the policy_node entry point installed by a colcon build.
"""

import ast
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from liquid_control.nodes.params import SPECS
from node_harness import NodeProcess, Peer, is_zero, make_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO_ROOT / 'launch' / 'drive.launch.py'
VENV_BIN = Path(sys.executable).parent
REQUIRED_ARGUMENTS = {'model', 'params_file', 'image_topic', 'compressed', 'imu_topic',
                      'cmd_vel_topic', 'enabled_on_start', 'use_sim_time', 'log_level',
                      'namespace'}


def _load_launch_module():
    spec = importlib.util.spec_from_file_location('drive_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def launch_module():
    return _load_launch_module()


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('model') / 'imu.lcm', imu_enabled=True)


def test_launch_declares_required_arguments(launch_module):
    names = [name for name, _, _ in launch_module.ARGUMENTS]
    assert set(names) == REQUIRED_ARGUMENTS
    assert len(names) == len(set(names))


def test_launch_arguments_have_descriptions(launch_module):
    for name, default, description in launch_module.ARGUMENTS:
        assert isinstance(default, str), name
        assert len(description) > 20, name


def test_launch_executable_is_a_console_script(launch_module):
    setup_text = (REPO_ROOT / 'setup.py').read_text()
    assert f"'{launch_module.EXECUTABLE} = liquid_control.nodes." in setup_text
    assert launch_module.PACKAGE == 'liquid_control'


def test_launch_default_params_file_exists(launch_module):
    assert (REPO_ROOT / launch_module.DEFAULT_PARAMS).is_file()


def test_launch_overrides_are_node_parameters(launch_module):
    values = {name: default for name, default, _ in launch_module.ARGUMENTS}
    values['model'] = '/models/x.lcm'
    parameters, _, _ = launch_module.node_settings(values, str(REPO_ROOT))
    declared = {spec.name for spec in SPECS} | {'use_sim_time'}
    assert set(parameters[1]) <= declared
    assert parameters[1]['model_path'] == '/models/x.lcm'


@pytest.mark.parametrize('text, expected', [('', None), ('false', False), ('true', True)])
def test_launch_enabled_on_start(launch_module, text, expected):
    values = {name: default for name, default, _ in launch_module.ARGUMENTS}
    values['enabled_on_start'] = text
    parameters, _, _ = launch_module.node_settings(values, str(REPO_ROOT))
    assert parameters[1].get('enabled_on_start') == expected


def test_launch_params_file_names_only_declared_parameters():
    import yaml
    content = yaml.safe_load((REPO_ROOT / 'config' / 'policy.yaml').read_text())
    (section,) = content.values()
    declared = {spec.name for spec in SPECS}
    assert set(section['ros__parameters']) == declared


def test_launch_remaps_compressed_input(launch_module):
    values = {name: default for name, default, _ in launch_module.ARGUMENTS}
    values.update(compressed='true', image_topic='/cam/image_raw')
    _, remappings, _ = launch_module.node_settings(values, str(REPO_ROOT))
    # The same topic as record.launch.py records for these arguments.
    assert ('image_raw/compressed', '/cam/image_raw/compressed') in remappings
    assert not any(source == 'image_raw' for source, _ in remappings)


def test_launch_rejects_non_boolean(launch_module):
    values = {name: default for name, default, _ in launch_module.ARGUMENTS}
    values['compressed'] = 'maybe'
    with pytest.raises(ValueError, match='compressed'):
        launch_module.node_settings(values, str(REPO_ROOT))


def test_launch_file_imports_launch_lazily():
    tree = ast.parse(LAUNCH_FILE.read_text())
    top_level = {alias.name.split('.')[0] for node in tree.body
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import)
                               else [ast.alias(name=node.module)])}
    assert top_level <= {'os', 'typing'}


def _command_line(executable, launch_module, values):
    """Return the command ``launch_ros`` would run for these launch argument values."""
    parameters, remappings, ros_arguments = launch_module.node_settings(values, str(REPO_ROOT))
    params_file, overrides = parameters
    command = list(executable) + ['--ros-args', '-r', f'__node:={launch_module.NODE_NAME}',
                                  '--params-file', params_file]
    if values['namespace']:
        command += ['-r', f'__ns:={values["namespace"]}']
    for name, value in overrides.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        command += ['-p', f'{name}:={text}']
    for source, target in remappings:
        command += ['-r', f'{source}:={target}']
    return command + ros_arguments


@pytest.mark.parametrize('compressed', [False, True])
def test_launch_settings_run_directly(launch_module, ros_env, tmp_path, model, compressed):
    values = {name: default for name, default, _ in launch_module.ARGUMENTS}
    # A copy of policy.yaml with one changed value shows that its node key matches a
    # namespaced policy_node.
    params_file = tmp_path / 'policy.yaml'
    params_file.write_text((REPO_ROOT / 'config' / 'policy.yaml').read_text().replace(
        'control_rate_hz: 20.0', 'control_rate_hz: 25.0'))
    values.update(model=str(model), namespace='/robot', compressed=str(compressed).lower(),
                  log_level='debug', params_file=str(params_file))
    values['image_topic'] = 'camera/image_raw'
    command = _command_line([sys.executable, '-m', 'liquid_control.nodes.policy_node'],
                            launch_module, values)
    node = NodeProcess(command, ros_env, tmp_path / 'node.log')
    # Relative topic defaults resolve inside the namespace, as they would under launch.
    peer = Peer(ros_env, namespace='/robot', compressed=compressed,
                image_topic='camera/image_raw', imu_topic='imu/data', cmd_vel_topic='cmd_vel')
    try:
        assert node.wait_for_output('ready:', timeout=60), node.output()
        peer.wait_connected()
        assert '25 Hz on /robot/cmd_vel' in node.output()
        # Every key of policy.yaml and every launch override is a declared parameter.
        assert 'unknown parameter' not in node.output()
        peer.stream(1.0)
        assert any(not is_zero(c) for c in peer.command_list()), node.output()
        assert '[DEBUG]' in node.output()
    finally:
        assert node.stop() == 0
        peer.close()


def test_installed_entry_point_runs_with_policy_yaml(ros_env, tmp_path, model,
                                                     colcon_workspace):
    workspace = colcon_workspace
    share = workspace / 'install' / 'liquid_control' / 'share' / 'liquid_control'
    assert (share / 'config' / 'policy.yaml').is_file()
    assert (share / 'launch' / 'drive.launch.py').is_file()
    log = tmp_path / 'installed.log'
    # setup.bash puts the installed copy on PYTHONPATH, ahead of the editable install.
    script = (f'source {workspace}/install/setup.bash && exec '
              f'{workspace}/install/liquid_control/lib/liquid_control/policy_node --ros-args '
              f'--params-file {share}/config/policy.yaml -p model_path:={model}')
    env = dict(ros_env, PATH=f'{VENV_BIN}{os.pathsep}{ros_env["PATH"]}')
    with log.open('w') as handle:
        process = subprocess.Popen(['bash', '-c', script], cwd='/', env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 'ready:' not in log.read_text():
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        assert 'ready:' in log.read_text(), log.read_text()
    finally:
        process.send_signal(2)
        process.wait(timeout=15)
    assert process.returncode == 0, log.read_text()
    assert 'shutdown: zero command published' in log.read_text()
