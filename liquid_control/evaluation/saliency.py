"""VisualBackProp saliency maps of a policy's convolutional encoder.

VisualBackProp (Bojarski et al., "VisualBackProp: efficient visualization of CNNs",
arXiv:1611.05418, 2016) shows which input pixels feed the deepest feature maps. For every
conv layer it averages the rectified feature maps over channels. Starting at the deepest
layer, it scales the averaged map up to the previous layer's size with a transposed
convolution of ones, which has the layer's kernel size, stride and padding. It multiplies
the result pointwise with that layer's averaged map and repeats down to the input. It
needs one forward pass and no gradients.

The maps here are computed from the outputs of every ``nn.Conv2d`` in the policy, in the
order they run. This assumes the conv layers form one chain, which holds for the shared
encoder of every policy family.
"""

from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from liquid_control.errors import ConfigError


def _pair(value) -> Tuple[int, int]:
    if isinstance(value, tuple):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _padding(conv: nn.Conv2d) -> Tuple[int, int]:
    if conv.padding == 'valid':
        return 0, 0
    if conv.padding == 'same':
        kernel = _pair(conv.kernel_size)
        return kernel[0] // 2, kernel[1] // 2
    return _pair(conv.padding)


def _record_conv_outputs(policy: nn.Module, frames: torch.Tensor,
                         earlier: Optional[torch.Tensor]) -> List[
        Tuple[nn.Conv2d, torch.Tensor]]:
    """Run the policy on ``frames`` (N, 3, H, W) and return each conv layer's output."""
    convolutions = [module for module in policy.modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ConfigError('the policy has no Conv2d layer, so it has no conv feature maps '
                          'for saliency')
    recorded: List[Tuple[nn.Conv2d, torch.Tensor]] = []
    handles = [conv.register_forward_hook(
        lambda module, inputs, output: recorded.append((module, output.detach())))
        for conv in convolutions]
    try:
        if getattr(getattr(policy, 'config', None), 'frame_gap', 0):
            # The encoder takes each frame with its earlier one on the channel axis.
            policy.encoder(torch.cat([frames, frames if earlier is None else earlier], dim=1))
            return recorded
        count = frames.shape[0]
        imu = None
        if getattr(policy.config, 'imu_enabled', False):
            imu = torch.zeros(1, count, 6)
        # The frames run as one sequence of batch 1. Only the conv outputs matter here,
        # and they do not depend on the recurrent state or the time step.
        dt = torch.full((1, count), 0.05)
        policy(frames.unsqueeze(0), imu, dt)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def _upscale(mask: torch.Tensor, conv: nn.Conv2d, size: Tuple[int, int]) -> torch.Tensor:
    """Undo one conv layer's down-sampling of a (N, 1, h, w) mask to ``size``."""
    kernel = _pair(conv.kernel_size)
    ones = torch.ones(1, 1, kernel[0], kernel[1], dtype=mask.dtype)
    upscaled = F.conv_transpose2d(mask, ones, stride=_pair(conv.stride),
                                  padding=_padding(conv), dilation=_pair(conv.dilation))
    if upscaled.shape[-2:] != size:
        # Strides that do not divide the input size leave a row or column over or short.
        upscaled = F.interpolate(upscaled, size=size, mode='bilinear', align_corners=False)
    return upscaled


def _normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each (N, 1, h, w) map to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = (high - low).clamp_min(1e-12)
    return (maps - low) / span


@torch.no_grad()
def visual_backprop(policy: nn.Module, frames: np.ndarray,
                    earlier: Optional[np.ndarray] = None) -> np.ndarray:
    """Return VisualBackProp maps ``(N, H, W)`` in [0, 1] for preprocessed frames.

    ``frames`` are float32 ``(N, 3, H, W)`` in [0, 1], as the policy takes them. Each map
    is scaled to [0, 1] on its own, so maps show where the encoder looks, not how strongly.
    For a policy with a frame gap, ``earlier`` contains the frames that many steps before
    each one. Without them every frame is paired with itself, as if nothing moved.
    """
    frames_tensor = torch.as_tensor(np.asarray(frames, dtype=np.float32))
    if frames_tensor.ndim != 4 or frames_tensor.shape[1] != 3:
        raise ValueError(f'expected frames of shape (N, 3, H, W), got {tuple(frames.shape)}')
    earlier_tensor = None
    if earlier is not None:
        earlier_tensor = torch.as_tensor(np.asarray(earlier, dtype=np.float32))
        if earlier_tensor.shape != frames_tensor.shape:
            raise ValueError(f'earlier frames of shape {tuple(earlier_tensor.shape)} do not '
                             f'match the frames {tuple(frames_tensor.shape)}')
    was_training = policy.training
    policy.eval()
    try:
        recorded = _record_conv_outputs(policy, frames_tensor, earlier_tensor)
    finally:
        policy.train(was_training)

    # Average the rectified feature maps over channels, then scale each to [0, 1] so the
    # products below stay in a usable floating-point range. The policies' encoders have no
    # ReLU after the last conv layer, so both signs of its output carry information and it
    # is rectified with the absolute value instead.
    averages = []
    last = len(recorded) - 1
    for index, (_conv, output) in enumerate(recorded):
        output = output.reshape(-1, *output.shape[-3:])
        rectified = output.abs() if index == last else F.relu(output)
        averages.append(_normalize(rectified.mean(dim=1, keepdim=True)))

    mask = averages[-1]
    for index in range(len(recorded) - 1, 0, -1):
        mask = _upscale(mask, recorded[index][0], tuple(averages[index - 1].shape[-2:]))
        mask = _normalize(mask * averages[index - 1])
    mask = _upscale(mask, recorded[0][0], tuple(frames_tensor.shape[-2:]))
    return _normalize(mask)[:, 0].numpy().astype(np.float32)


def overlay(frame: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """Draw a saliency map over a frame and return an (H, W, 3) float32 RGB image.

    ``frame`` is (3, H, W) in [0, 1] and ``saliency`` (H, W) in [0, 1]. The frame is shown
    in dimmed grey and the map in a black-red-yellow scale added on top, so the map stays
    readable on colourful or noisy frames.
    """
    grey = np.asarray(frame, dtype=np.float32).mean(axis=0)
    saliency = np.asarray(saliency, dtype=np.float32)
    heat = np.stack([np.clip(2.0 * saliency, 0.0, 1.0),
                     np.clip(2.0 * saliency - 1.0, 0.0, 1.0),
                     np.zeros_like(saliency)], axis=-1)
    return np.clip(0.5 * grey[..., None] + 0.7 * heat, 0.0, 1.0)
