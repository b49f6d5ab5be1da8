"""Locations of the package's shared files (config, launch, models)."""

from pathlib import Path

PACKAGE = 'liquid_control'
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def share_dir() -> Path:
    """Return the folder with config/, launch/ and models/.

    An installed package (colcon, or a ROS 2 install) has them under
    share/liquid_control; an editable pip install reads them from the source checkout.
    """
    if (_SOURCE_ROOT / 'config').is_dir() and (_SOURCE_ROOT / 'package.xml').is_file():
        return _SOURCE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, KeyError, ValueError) as error:
        raise FileNotFoundError(
            f'cannot find the share folder of {PACKAGE}: {error}. Source the workspace '
            '(source install/setup.bash) or install the package with pip -e.') from error


def config_file(name: str) -> Path:
    """Return the path of a file in the package's config/ folder."""
    return share_dir() / 'config' / name


def bundled_model() -> Path:
    """Return the path of the model shipped with the package."""
    return share_dir() / 'models' / 'carracing_ncp.lcm'
