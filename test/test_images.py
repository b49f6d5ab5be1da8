"""Image decoding: every supported raw encoding and compressed format, and bad input."""

import cv2
import numpy as np
import pytest

from liquid_control.data.images import (check_compressed, decode_compressed, decode_raw,
                                        encode_jpeg)
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


def _encoded(extension):
    rng = np.random.default_rng(2)
    image = np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 3), np.uint8), 8, 0), 8, 1)
    return cv2.imencode(extension, image)[1].tobytes()


@pytest.mark.parametrize('extension,expected', [('.jpg', 'jpg'), ('.png', 'png')])
def test_check_compressed_accepts_whole_image(extension, expected):
    assert check_compressed(_encoded(extension)) == expected


def test_check_compressed_accepts_zero_padding():
    assert check_compressed(_encoded('.jpg') + bytes(16)) == 'jpg'


def test_check_compressed_cut_jpeg_raises():
    jpeg = _encoded('.jpg')
    with pytest.raises(DataError, match='without its end-of-image marker'):
        check_compressed(jpeg[:len(jpeg) // 2], 'jpeg')


def test_check_compressed_garbage_jpeg_raises():
    garbage = b'\xff\xd8\xff' + bytes(range(256)) * 4 + b'\xff\xd9'
    with pytest.raises(DataError, match='cannot decode the JPEG'):
        check_compressed(garbage, 'jpeg')


def test_check_compressed_cut_png_raises():
    png = _encoded('.png')
    with pytest.raises(DataError, match='without its IEND chunk'):
        check_compressed(png[:len(png) // 2], 'png')


def test_check_compressed_damaged_png_raises():
    png = _encoded('.png')
    # Zero the IDAT payload but keep the IEND chunk: zlib cannot inflate it.
    data_start = png.index(b'IDAT') + 4
    damaged = png[:data_start] + bytes(len(png) - data_start - 16) + png[-16:]
    with pytest.raises(DataError, match='cannot decode the PNG'):
        check_compressed(damaged, 'png')


def test_check_compressed_other_format_raises():
    with pytest.raises(DataError, match='neither JPEG nor PNG'):
        check_compressed(b'GIF89a' + bytes(20))


def _with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """Return a JPEG or PNG whose header declares another size; the pixel data stays."""
    import struct
    import zlib

    patched = bytearray(data)
    if data.startswith(b'\x89PNG'):
        patched[16:24] = struct.pack('>II', width, height)
        # The IHDR chunk's CRC covers its type and data.
        patched[29:33] = struct.pack('>I', zlib.crc32(bytes(patched[12:29])))
    else:
        frame = data.index(b'\xff\xc0')
        patched[frame + 5:frame + 9] = struct.pack('>HH', height, width)
    return bytes(patched)


@pytest.mark.parametrize('extension', ['.jpg', '.png'])
@pytest.mark.parametrize('shape', [(1, 1, 3), (120, 160, 3), (48, 64)])
def test_compressed_image_size_reads_header(extension, shape):
    from liquid_control.data.images import compressed_image_size

    encoded = cv2.imencode(extension, np.zeros(shape, np.uint8))[1].tobytes()
    assert compressed_image_size(encoded) == (shape[1], shape[0])


def test_compressed_image_size_progressive_and_exif():
    from liquid_control.data.images import compressed_image_size

    image = np.zeros((30, 40, 3), np.uint8)
    progressive = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert b'\xff\xc2' in progressive
    assert compressed_image_size(progressive) == (40, 30)
    # An APP1 segment of 60,000 bytes before the frame header, as large EXIF data puts it.
    baseline = cv2.imencode('.jpg', image)[1].tobytes()
    app1 = b'\xff\xe1' + (60002).to_bytes(2, 'big') + bytes(60000)
    assert compressed_image_size(baseline[:2] + app1 + baseline[2:]) == (40, 30)
    assert compressed_image_size(b'not an image') is None
    assert compressed_image_size(baseline[:4]) is None


@pytest.mark.parametrize('extension', ['.jpg', '.png'])
@pytest.mark.parametrize('width, height', [(16000, 16000), (20000, 10), (8000, 6000)])
def test_oversized_image_rejected_before_decoding(extension, width, height):
    bomb = _with_declared_size(_encoded(extension), width, height)
    with pytest.raises(DataError, match=f'declares {width}x{height} pixels'):
        decode_compressed(bomb, 'camera')
    with pytest.raises(DataError, match=f'declares {width}x{height} pixels'):
        check_compressed(bomb, 'camera')
