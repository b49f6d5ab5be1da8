"""The layers below nodes/ must import and work without ROS (and data/ without torch)."""

import ast
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
}


def _imported_top_modules(path: Path) -> set:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


@pytest.mark.parametrize('layer', sorted(FORBIDDEN))
def test_layer_imports_stay_below_ros(layer):
    offenders = []
    for path in sorted((PACKAGE_DIR / layer).rglob('*.py')):
        bad = _imported_top_modules(path) & FORBIDDEN[layer]
        if bad:
            offenders.append(f'{path.relative_to(PACKAGE_DIR)} imports {sorted(bad)}')
    assert offenders == []


@pytest.mark.parametrize('layer', ['model', 'data', 'training', 'evaluation'])
def test_layer_never_imports_nodes(layer):
    offenders = []
    for path in sorted((PACKAGE_DIR / layer).rglob('*.py')):
        text = path.read_text()
        if 'liquid_control.nodes' in text or 'liquid_control.cli' in text:
            offenders.append(str(path.relative_to(PACKAGE_DIR)))
    assert offenders == []
