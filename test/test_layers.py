"""The layers below nodes/ must import and work without ROS (and data/ without torch)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / 'liquid_control'
ROS_MODULES = {'rclpy', 'sensor_msgs', 'geometry_msgs', 'std_msgs', 'std_srvs',
               'diagnostic_msgs', 'rosgraph_msgs', 'builtin_interfaces', 'launch',
               'launch_ros'}
FORBIDDEN = {
    'model': ROS_MODULES | {'cv2', 'rosbags'},
    'data': ROS_MODULES | {'torch'},
    'training': ROS_MODULES,
    'evaluation': ROS_MODULES,
    'sim': ROS_MODULES,
}


def _imported_modules(path: Path) -> set:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f'{node.module}.{alias.name}' for alias in node.names)
    return names


def _imported_top_modules(path: Path) -> set:
    return {name.split('.')[0] for name in _imported_modules(path)}


@pytest.mark.parametrize('layer', sorted(FORBIDDEN))
def test_layer_imports_stay_below_ros(layer):
    offenders = []
    for path in sorted((PACKAGE_DIR / layer).rglob('*.py')):
        bad = _imported_top_modules(path) & FORBIDDEN[layer]
        if bad:
            offenders.append(f'{path.relative_to(PACKAGE_DIR)} imports {sorted(bad)}')
    assert offenders == []


@pytest.mark.parametrize('layer', ['model', 'data', 'training', 'evaluation', 'sim'])
def test_layer_never_imports_nodes(layer):
    offenders = []
    for path in sorted((PACKAGE_DIR / layer).rglob('*.py')):
        upper = {name for name in _imported_modules(path)
                 if name.startswith(('liquid_control.nodes', 'liquid_control.cli'))}
        if upper:
            offenders.append(f'{path.relative_to(PACKAGE_DIR)} imports {sorted(upper)}')
    assert offenders == []


def test_inference_module_has_no_ros():
    path = PACKAGE_DIR / 'inference.py'
    assert path.is_file()
    assert _imported_top_modules(path) & ROS_MODULES == set()


def test_lower_layers_import_with_ros_blocked():
    # Setting a module to None in sys.modules makes any import of it raise ImportError,
    # as on a workstation without ROS.
    code = '''
import importlib, pkgutil, sys
for name in ('rclpy', 'sensor_msgs', 'geometry_msgs', 'std_msgs', 'std_srvs'):
    sys.modules[name] = None
import liquid_control
for layer in ('model', 'data', 'training', 'evaluation', 'sim'):
    package = importlib.import_module('liquid_control.' + layer)
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
        importlib.import_module(module.name)
importlib.import_module('liquid_control.inference')
print('imported')
'''
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == 'imported'
