"""config/sim.yaml and launch/sim.launch.py name only parameters the nodes declare.

``launch`` cannot run here, and rclpy silently ignores unknown parameters from a file, so a
misspelt name would go unnoticed. The tests read the declarations from the node sources.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
NODES = REPO_ROOT / 'liquid_control' / 'nodes'
LAUNCH_FILE = REPO_ROOT / 'launch' / 'sim.launch.py'


def _declared(executable: str) -> set:
    """Return the parameter names a node declares, read from its source."""
    names = {'use_sim_time'}
    if executable == 'expert_node':
        from dataclasses import fields

        from liquid_control.sim.expert import ExpertConfig
        names |= {field.name for field in fields(ExpertConfig)}
    if executable == 'policy_node':
        from liquid_control.nodes.params import SPECS
        return names | {spec.name for spec in SPECS}
    text = (NODES / f'{executable}.py').read_text()
    names |= set(re.findall(r"declare_parameter\(\s*'(\w+)'", text))
    names |= set(re.findall(r"ParameterSpec\(\s*'(\w+)'", text))
    return names


def _launch_nodes():
    """Yield (executable, parameter dict keys, remappings) for every Node in the file."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'Node'):
            continue
        keywords = {keyword.arg: keyword.value for keyword in call.keywords}
        executable = ast.literal_eval(keywords['executable'])
        keys = set()
        for item in keywords['parameters'].elts:
            if isinstance(item, ast.Dict):
                keys |= {ast.literal_eval(key) for key in item.keys}
        yield executable, keys


@pytest.mark.parametrize('node', ['sim_node', 'expert_node', 'policy_node'])
def test_sim_yaml_names_declared_parameters(node):
    content = yaml.safe_load((REPO_ROOT / 'config' / 'sim.yaml').read_text())
    parameters = content[f'/**/{node}']['ros__parameters']
    assert set(parameters) - _declared(node) == set()


def test_sim_launch_parameters_are_declared():
    nodes = list(_launch_nodes())
    executables = {executable for executable, _ in nodes}
    assert executables == {'sim_node', 'expert_node', 'policy_node', 'recorder_node'}
    for executable, keys in nodes:
        assert keys - _declared(executable) == set(), executable


def test_sim_launch_executables_are_console_scripts():
    setup_text = (REPO_ROOT / 'setup.py').read_text()
    for executable, _ in _launch_nodes():
        assert f"'{executable} = liquid_control.nodes.{executable}:main'" in setup_text


def test_sim_launch_arguments_have_descriptions():
    tree = ast.parse(LAUNCH_FILE.read_text())
    arguments = [call for call in ast.walk(tree) if isinstance(call, ast.Call)
                 and getattr(call.func, 'id', '') == 'DeclareLaunchArgument']
    assert len(arguments) >= 5
    for call in arguments:
        descriptions = [k for k in call.keywords if k.arg == 'description']
        assert descriptions, ast.literal_eval(call.args[0])
