"""Decoding of camera images into RGB arrays, independent of ROS.

Raw images follow the layout of ``sensor_msgs/Image`` (encoding, height, width, step, data)
and compressed ones that of ``sensor_msgs/CompressedImage`` (format, data). Every decoder
returns a C-contiguous ``(H, W, 3)`` uint8 array in RGB order, or raises ``DataError``
with a message that names the value at fault.
"""

import struct
from typing import Optional, Tuple, Union

import cv2
import numpy as np

from liquid_control.errors import DataError

Buffer = Union[bytes, bytearray, memoryview, np.ndarray]

# encoding -> (channels, bytes per channel, OpenCV conversion to RGB or None)
RAW_ENCODINGS = {
    'rgb8': (3, 1, None),
    'bgr8': (3, 1, cv2.COLOR_BGR2RGB),
    'rgba8': (4, 1, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, 1, cv2.COLOR_BGRA2RGB),
    'mono8': (1, 1, cv2.COLOR_GRAY2RGB),
    '8uc1': (1, 1, cv2.COLOR_GRAY2RGB),
    '8uc3': (3, 1, cv2.COLOR_BGR2RGB),
    'mono16': (1, 2, cv2.COLOR_GRAY2RGB),
}

MAX_SIDE = 16384
# The largest compressed image, in pixels, that is decoded: an 8K UHD frame (7680x4320) has
# 33.2 million. A few hundred bytes of JPEG can declare 16000x16000 pixels, which OpenCV
# decoded in 3.4 s into 1.5 GB (OpenCV 5.1, the development machine), so the size in the
# header is checked first.
MAX_PIXELS = 40_000_000

JPEG_START = b'\xff\xd8\xff'
JPEG_END = b'\xff\xd9'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# The IEND chunk that ends every PNG file: zero length, type, CRC.
PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'


def _as_uint8(data: Buffer) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def decode_raw(encoding: str, height: int, width: int, step: int, data: Buffer,
               is_bigendian: bool = False) -> np.ndarray:
    """Decode a raw image buffer into an ``(H, W, 3)`` uint8 RGB array.

    ``mono16`` is scaled to 8 bits by its top byte. Rows may be padded (``step`` larger
    than ``width * channels``); the padding is dropped.
    """
    key = encoding.lower()
    if key not in RAW_ENCODINGS:
        raise DataError(
            f'unsupported image encoding {encoding!r}; supported: '
            f'{", ".join(sorted(RAW_ENCODINGS))}. Convert the camera output to one of them.')
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise DataError(f'invalid image size {width}x{height}: each side must be 1..{MAX_SIDE}')
    channels, depth, conversion = RAW_ENCODINGS[key]
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise DataError(
            f'invalid step {step} for a {width}-pixel-wide {encoding} image: '
            f'a row needs at least {row_bytes} bytes')
    buffer = _as_uint8(data)
    if buffer.size < step * (height - 1) + row_bytes:
        raise DataError(
            f'image data has {buffer.size} bytes, but a {width}x{height} {encoding} image '
            f'with step {step} needs {step * height}')

    rows = buffer[:step * height] if buffer.size >= step * height else np.concatenate(
        [buffer, np.zeros(step * height - buffer.size, np.uint8)])
    pixels = rows.reshape(height, step)[:, :row_bytes]
    if depth == 2:
        dtype = '>u2' if is_bigendian else '<u2'
        pixels = (np.ascontiguousarray(pixels).view(dtype) >> 8).astype(np.uint8)
    image = pixels.reshape(height, width, channels)
    if conversion is None:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image), conversion)


# JPEG start-of-frame markers, which carry the image size: C0-CF except DHT (C4), JPG (C8)
# and DAC (CC). Markers D0-D7 (restart), 01 (TEM) and D8 (start of image) have no length.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_UNSIZED_MARKERS = frozenset(range(0xD0, 0xD9)) | {0x01}


def compressed_image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """Return ``(width, height)`` from a JPEG or PNG header, or None when it has none.

    Only the header is read, so the size of an image can be checked before decoding it.
    """
    if data.startswith(PNG_SIGNATURE):
        # The IHDR chunk comes first: length (4 bytes), type, width and height (4 each).
        if len(data) >= 24 and data[12:16] == b'IHDR':
            width, height = struct.unpack('>II', data[16:24])
            return width, height
        return None
    if not data.startswith(JPEG_START):
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1  # a fill byte before the marker
            continue
        if marker in _JPEG_UNSIZED_MARKERS:
            position += 2
            continue
        length = struct.unpack('>H', data[position + 2:position + 4])[0]
        if marker in _JPEG_FRAME_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack('>HH', data[position + 5:position + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + length
    return None


def _check_declared_size(buffer: bytes, label: str) -> None:
    size = compressed_image_size(buffer)
    if size is None:
        return
    width, height = size
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise DataError(f'{label} declares {width}x{height} pixels, more than this package '
                        f'decodes ({MAX_PIXELS:,} pixels, {MAX_SIDE} a side): the header is '
                        'damaged, or the camera sends frames far larger than a policy uses. '
                        'Lower the camera resolution.')


def decode_compressed(data: Buffer, format: str = '') -> np.ndarray:
    """Decode JPEG or PNG bytes into an ``(H, W, 3)`` uint8 RGB array.

    ``format`` is the ``CompressedImage.format`` string and only used in messages: the
    codec is detected from the bytes.
    """
    buffer = _as_uint8(data)
    if buffer.size == 0:
        raise DataError(f'compressed image ({format or "unknown format"}) is empty')
    _check_declared_size(buffer.tobytes(),
                         f'compressed image ({format or "unknown format"}, {buffer.size} bytes)')
    # NOTE: a JPEG cut in its scan data but still ending in an end-of-image marker decodes
    # with a grey lower part. OpenCV only prints a libjpeg warning, so no error is raised.
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(
            f'cannot decode compressed image ({format or "unknown format"}, '
            f'{buffer.size} bytes): not a valid JPEG or PNG, or truncated')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_compressed(data: Buffer, format: str = '') -> str:
    """Check that JPEG or PNG bytes are complete and decode; return 'jpg' or 'png'.

    Raises ``DataError`` for another format, a JPEG without its end-of-image marker (zero
    bytes after it are allowed as padding), a PNG without its IEND chunk, or data that
    OpenCV cannot decode. ``format`` is only used in messages.
    """
    buffer = bytes(_as_uint8(data))
    label = (f'compressed image ({format}, {len(buffer)} bytes)' if format
             else f'image of {len(buffer)} bytes')
    if buffer.startswith(JPEG_START):
        if not buffer.rstrip(b'\x00').endswith(JPEG_END):
            raise DataError(f'{label} is a JPEG without its end-of-image marker (FF D9): '
                            'it is truncated or damaged')
        # Decoding at 1/8 scale in grey still reads all the compressed data and took about
        # a quarter of the time of a full colour decode (160x120 frames, OpenCV 5.1).
        flag, kind = cv2.IMREAD_REDUCED_GRAYSCALE_8, 'JPEG'
    elif buffer.startswith(PNG_SIGNATURE):
        if not buffer.endswith(PNG_END):
            raise DataError(f'{label} is a PNG without its IEND chunk: it is truncated or '
                            'damaged')
        flag, kind = cv2.IMREAD_UNCHANGED, 'PNG'
    else:
        raise DataError(f'{label} starts with {buffer[:8]!r}: it is neither JPEG nor PNG')
    _check_declared_size(buffer, label)
    # NOTE: like decode_compressed, this accepts a JPEG cut in its scan data that still
    # ends in an end-of-image marker, because libjpeg only warns about it.
    try:
        image = cv2.imdecode(np.frombuffer(buffer, np.uint8), flag)
    except cv2.error as error:
        raise DataError(f'{label}: OpenCV cannot decode the {kind}: {error}') from None
    if image is None:
        raise DataError(f'{label}: OpenCV cannot decode the {kind}; it is damaged')
    return 'jpg' if kind == 'JPEG' else 'png'


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 RGB array as JPEG bytes."""
    ok, encoded = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DataError(f'JPEG encoding failed for an image of shape {rgb.shape}')
    return encoded.tobytes()
