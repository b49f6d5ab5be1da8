"""Middleware set-up shared by every liquid_control process that uses rclpy."""

import logging
import os

from liquid_control.paths import config_file

PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'
PROFILE_NAME = 'fastdds_large_frames.xml'

_logger = logging.getLogger(__name__)


def apply_large_frame_profile() -> str:
    """Point Fast DDS at the package's large-frame profile unless the user chose one.

    Call before ``rclpy.init()``: Fast DDS reads the variable when the first participant
    is created. Returns the profile in force ('' when another middleware is selected).
    """
    if os.environ.get(PROFILE_ENV):
        return os.environ[PROFILE_ENV]
    rmw = os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    if not rmw.startswith('rmw_fastrtps'):
        return ''
    try:
        path = config_file(PROFILE_NAME)
    except FileNotFoundError as error:
        _logger.warning('large-frame DDS profile not applied: %s', error)
        return ''
    if not path.is_file():
        _logger.warning('large-frame DDS profile not found: %s', path)
        return ''
    os.environ[PROFILE_ENV] = str(path)
    return str(path)
