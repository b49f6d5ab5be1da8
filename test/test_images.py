"""Image decoding: every supported raw encoding and compressed format, and bad input."""

import cv2
import numpy as np
import pytest

from liquid_control.data.images import decode_compressed, decode_raw, encode_jpeg
from liquid_control.errors import DataError


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding,convert', [
    ('rgb8', None), ('bgr8', cv2.COLOR_RGB2BGR),
    ('rgba8', cv2.COLOR_RGB2RGBA), ('bgra8', cv2.COLOR_RGB2BGRA)])
def test_decode_raw_color_encodings(rgb, encoding, convert):
    source = rgb if convert is None else cv2.cvtColor(rgb, convert)
    height, width, channels = source.shape
    decoded = decode_raw(encoding, height, width, width * channels, source.tobytes())
    assert decoded.shape == rgb.shape
    assert np.array_equal(decoded, rgb)


def test_decode_raw_mono8_and_padded_rows():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    padded = np.zeros((3, 6), np.uint8)
    padded[:, :4] = gray
    decoded = decode_raw('mono8', 3, 4, 6, padded.tobytes())
    assert decoded.shape == (3, 4, 3)
    assert np.array_equal(decoded[..., 0], gray)
    assert np.array_equal(decoded[..., 2], gray)


def test_decode_raw_short_buffer_names_sizes():
    with pytest.raises(DataError, match='needs 60'):
        decode_raw('rgb8', 4, 5, 15, bytes(30))


def test_decode_raw_unknown_encoding():
    with pytest.raises(DataError, match="'yuv422'"):
        decode_raw('yuv422', 2, 2, 4, bytes(8))


def test_decode_raw_step_too_small():
    with pytest.raises(DataError, match='invalid step 5'):
        decode_raw('rgb8', 2, 2, 5, bytes(12))


@pytest.mark.parametrize('extension', ['.jpg', '.png'])
def test_decode_compressed_round_trip(extension):
    rng = np.random.default_rng(1)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 3), np.uint8), 8, 0), 8, 1)
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    decoded = decode_compressed(encoded.tobytes(), extension)
    assert decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb).mean() < 8


def test_decode_compressed_truncated_jpeg_raises():
    jpeg = encode_jpeg(np.full((32, 32, 3), 128, np.uint8))
    with pytest.raises(DataError, match='cannot decode'):
        decode_compressed(jpeg[:20], 'jpeg')


def test_decode_compressed_empty_raises():
    with pytest.raises(DataError, match='empty'):
        decode_compressed(b'', 'jpeg')
