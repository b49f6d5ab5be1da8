"""Conversions from ROS sensor messages to numpy arrays, with strict validity checks.

The functions only read message fields, so they need no rclpy import and accept any object
with the same fields (rclpy messages, or messages deserialised by ``rosbags``). Invalid
content raises ``DataError`` with a message that names the value at fault.
"""

import numpy as np

from liquid_control.data.images import decode_compressed, decode_raw
from liquid_control.errors import DataError

JPEG_START = b'\xff\xd8'
JPEG_END = b'\xff\xd9'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PNG_END = b'IEND'
# Some encoders pad a JPEG after its end-of-image marker, so the marker is searched for in
# the last bytes rather than only at the very end.
END_MARKER_SEARCH = 64


def stamp_to_seconds(stamp) -> float:
    """Return a ``builtin_interfaces/Time`` as float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def image_msg_to_rgb(msg) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` into an ``(H, W, 3)`` uint8 RGB array.

    The data must contain exactly ``step * height`` bytes, as the message definition
    requires. A shorter or longer buffer means that the size fields do not match the data.
    """
    size = len(msg.data)
    expected = int(msg.step) * int(msg.height)
    if size != expected:
        raise DataError(
            f'image data has {size} bytes, but step {msg.step} x height {msg.height} = '
            f'{expected} ({msg.width}x{msg.height} {msg.encoding!r})')
    return decode_raw(msg.encoding, int(msg.height), int(msg.width), int(msg.step),
                      msg.data, bool(msg.is_bigendian))


def compressed_msg_to_rgb(msg) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) into ``(H, W, 3)`` uint8 RGB.

    OpenCV decodes a truncated JPEG partially (the missing rows come out grey) without an
    error, so a JPEG without its end-of-image marker and a PNG without its IEND chunk are
    rejected before decoding.
    """
    data = bytes(msg.data)
    label = msg.format or 'unknown format'
    if data.startswith(JPEG_START):
        if JPEG_END not in data[-END_MARKER_SEARCH:]:
            raise DataError(f'JPEG image ({label}, {len(data)} bytes) is truncated: '
                            'no end-of-image marker')
    elif data.startswith(PNG_SIGNATURE):
        if PNG_END not in data[-END_MARKER_SEARCH:]:
            raise DataError(f'PNG image ({label}, {len(data)} bytes) is truncated: '
                            'no IEND chunk')
    elif data:
        raise DataError(f'compressed image ({label}, {len(data)} bytes) is neither JPEG nor '
                        f'PNG: it starts with {data[:8].hex()}')
    return decode_compressed(data, msg.format)


def imu_msg_to_array(msg) -> np.ndarray:
    """Return a ``sensor_msgs/Imu`` as ``(6,)`` float32: angular velocity x, y, z (rad/s)
    then linear acceleration x, y, z (m/s^2).

    Raises DataError when a value is NaN, infinite or too large for float32.
    """
    values = (msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z,
              msg.linear_acceleration.x, msg.linear_acceleration.y,
              msg.linear_acceleration.z)
    with np.errstate(over='ignore'):
        array = np.array(values, np.float32)
    if not np.all(np.isfinite(array)):
        raise DataError(f'IMU message has values that are NaN, infinite or beyond float32: '
                        f'{values}')
    return array
