"""VisualBackProp saliency: a hand-built encoder with a known result, and the real policies."""

from types import SimpleNamespace

import numpy as np
import pytest
from torch import nn

from liquid_control.evaluation.perturbations import parse_perturbation
from liquid_control.evaluation.saliency import overlay, visual_backprop
from liquid_control.evaluation.ssim import mean_ssim
from liquid_control.model.policy import PolicyConfig, build_policy


class AveragingEncoderPolicy(nn.Module):
    """Three conv layers with positive, equal weights and no bias, behind the policy API.

    Every feature is a local average of the input, so the only salient place in a black
    frame with one bright square is that square.
    """

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(imu_enabled=False)
        self.convolutions = nn.Sequential(
            nn.Conv2d(3, 4, 5, stride=2, padding=2, bias=False), nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(4, 2, 3, stride=1, padding=1, bias=False))
        for module in self.convolutions:
            if isinstance(module, nn.Conv2d):
                nn.init.constant_(module.weight, 0.1)

    def forward(self, frames, imu, dt, state=None):
        batch, steps = frames.shape[:2]
        features = self.convolutions(frames.reshape(batch * steps, *frames.shape[2:]))
        return features.mean(dim=(1, 2, 3)).reshape(batch, steps, 1), state


def _small_policy(family: str):
    config = PolicyConfig(family=family, units=12 if family != 'lstm' else 16, preprocessing={
        'crop_top': 0.0, 'crop_bottom': 0.0, 'crop_left': 0.0, 'crop_right': 0.0,
        'height': 33, 'width': 100})
    return build_policy(config)


def _textured_frames(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = np.linspace(0, 1, 33, dtype=np.float32)[:, None]
    columns = np.linspace(0, 1, 100, dtype=np.float32)[None, :]
    frames = np.empty((count, 3, 33, 100), dtype=np.float32)
    for index in range(count):
        stripes = 0.5 + 0.4 * np.sin(12 * columns + 3 * index + 5 * rows)
        frames[index] = np.clip(stripes + rng.normal(0, 0.02, (3, 33, 100)), 0, 1)
    return frames


def test_saliency_peaks_at_the_only_bright_patch():
    frames = np.zeros((2, 3, 40, 60), dtype=np.float32)
    frames[0, :, 8:14, 10:16] = 1.0
    frames[1, :, 25:31, 40:46] = 1.0
    maps = visual_backprop(AveragingEncoderPolicy(), frames)
    assert maps.shape == (2, 40, 60)
    for index, (row, column) in enumerate(((11, 13), (28, 43))):
        peak = np.unravel_index(np.argmax(maps[index]), maps[index].shape)
        assert abs(int(peak[0]) - row) <= 3
        assert abs(int(peak[1]) - column) <= 3
        # Far from the patch nothing is salient.
        assert maps[index][row, (column + 30) % 60] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize('family', ['ncp_ltc', 'lstm', 'cnn'])
def test_policy_saliency_normalised_and_repeatable(family):
    policy = _small_policy(family)
    frames = _textured_frames(3)
    maps = visual_backprop(policy, frames)
    assert maps.shape == (3, 33, 100)
    assert maps.dtype == np.float32
    assert maps.min() == pytest.approx(0.0)
    assert maps.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(maps, visual_backprop(policy, frames))


def test_saliency_restores_mode_and_hooks():
    policy = _small_policy('ncp_ltc')
    policy.train()
    visual_backprop(policy, _textured_frames(1))
    assert policy.training
    conv = next(module for module in policy.modules() if isinstance(module, nn.Conv2d))
    assert len(conv._forward_hooks) == 0


def test_saliency_moves_more_under_stronger_noise():
    policy = _small_policy('ncp_ltc')
    frames = _textured_frames(4)
    clean = visual_backprop(policy, frames)
    similarity = []
    for name in ('noise:0.01', 'noise:0.3'):
        noisy = parse_perturbation(name).apply(frames, np.random.default_rng(0))
        similarity.append(mean_ssim(clean, visual_backprop(policy, noisy)))
    assert similarity[0] > similarity[1]
    assert similarity[0] < 1.0


def test_saliency_rejects_wrong_frame_shape():
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        visual_backprop(_small_policy('cnn'), np.zeros((3, 33, 100), dtype=np.float32))


def test_overlay_colours_salient_pixels_only():
    frame = np.full((3, 4, 4), 0.4, dtype=np.float32)
    saliency = np.zeros((4, 4), dtype=np.float32)
    saliency[1, 2] = 1.0
    blended = overlay(frame, saliency)
    assert blended.shape == (4, 4, 3)
    np.testing.assert_allclose(blended[0, 0], [0.2, 0.2, 0.2], atol=1e-6)
    assert blended[1, 2, 0] > 0.8
    assert blended[1, 2, 1] > 0.8
    assert blended[1, 2, 2] == pytest.approx(0.2)
