"""Preprocessing: crop fractions, resize, value range and invalid settings."""

import numpy as np
import pytest

from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import ConfigError


def test_apply_shape_and_range():
    frame = np.full((120, 160, 3), 255, np.uint8)
    tensor = Preprocessing(height=66, width=200).apply(frame)
    assert tensor.shape == (3, 66, 200)
    assert tensor.dtype == np.float32
    assert tensor.max() == pytest.approx(1.0)


def test_crop_removes_top_rows():
    frame = np.zeros((100, 50, 3), np.uint8)
    frame[:40] = 255  # bright sky above a dark road
    tensor = Preprocessing(crop_top=0.4, height=60, width=50).apply(frame)
    assert tensor.max() == 0.0


def test_crop_keeps_channel_order():
    frame = np.zeros((10, 10, 3), np.uint8)
    frame[..., 0] = 200
    tensor = Preprocessing(height=10, width=10).apply(frame)
    assert tensor[0].mean() == pytest.approx(200 / 255)
    assert tensor[1].mean() == 0.0


def test_apply_batch_matches_apply():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (4, 48, 64, 3), np.uint8)
    settings = Preprocessing(crop_bottom=0.25, height=20, width=40)
    batch = settings.apply_batch(frames)
    assert np.array_equal(batch[2], settings.apply(frames[2]))


def test_dict_round_trip():
    settings = Preprocessing(crop_top=0.3, height=33, width=100)
    assert Preprocessing.from_dict(settings.to_dict()) == settings


def test_unknown_key_rejected():
    with pytest.raises(ConfigError, match='unknown preprocessing'):
        Preprocessing.from_dict({'crop_top': 0.1, 'gamma': 2})


@pytest.mark.parametrize('values', [
    {'crop_top': 1.2}, {'crop_top': 0.6, 'crop_bottom': 0.5}, {'height': 0},
    {'crop_left': -0.1}, {'width': 3}])
def test_invalid_settings_rejected(values):
    with pytest.raises(ConfigError):
        Preprocessing(**values)


def test_non_rgb_frame_rejected():
    with pytest.raises(ValueError, match='uint8 RGB'):
        Preprocessing().apply(np.zeros((10, 10), np.uint8))
