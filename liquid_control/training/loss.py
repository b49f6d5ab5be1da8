"""Sequence loss on normalised outputs, with masking, warm-up frames and sharp-turn weights."""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def sharp_turn_weights(steering: torch.Tensor, scale: float, weight: float) -> torch.Tensor:
    """Return per-frame weights ``1 + weight * |steering| / scale``.

    ``steering`` is in physical units and ``scale`` is its typical magnitude, such as the
    training standard deviation. Frames with strong steering then count several times
    more. ``weight=0`` gives ones.
    """
    if weight <= 0:
        return torch.ones_like(steering)
    return 1.0 + weight * steering.abs() / max(scale, 1e-6)


def sequence_loss(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                  output_std: torch.Tensor, kind: str = 'huber', warmup_frames: int = 0,
                  output_weights: Optional[Sequence[float]] = None,
                  frame_weights: Optional[torch.Tensor] = None,
                  huber_delta: float = 1.0) -> torch.Tensor:
    """Return the mean loss over valid frames, on outputs divided by their training std.

    ``predictions`` and ``targets`` are ``(B, T, O)`` in physical units, ``mask`` ``(B, T)``
    bool, ``output_std`` ``(O,)``. The first ``warmup_frames`` frames of each sequence are
    left out, because the recurrent state starts from zero there. ``frame_weights`` is
    ``(B, T)``; ``output_weights`` has one weight per output. The Huber loss is quadratic
    up to ``huber_delta`` standard deviations and linear beyond.
    """
    error = (predictions - targets) / output_std.clamp_min(1e-6)
    if kind == 'huber':
        per_value = F.huber_loss(error, torch.zeros_like(error), reduction='none',
                                 delta=huber_delta)
    elif kind == 'mse':
        per_value = error.pow(2)
    elif kind == 'l1':
        per_value = error.abs()
    else:
        raise ValueError(f'loss kind {kind!r} is unknown; use huber, mse or l1')

    if output_weights:
        weights = torch.as_tensor(output_weights, dtype=per_value.dtype,
                                  device=per_value.device)
        per_frame = (per_value * weights).sum(-1) / weights.sum()
    else:
        per_frame = per_value.mean(-1)

    weight = mask.to(per_frame.dtype)
    if warmup_frames > 0:
        weight = weight.clone()
        weight[:, :warmup_frames] = 0.0
    if frame_weights is not None:
        weight = weight * frame_weights
    return (per_frame * weight).sum() / weight.sum().clamp_min(1.0)


def correlation_loss(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                     warmup_frames: int = 0,
                     output_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Return ``1 - r``, with r the Pearson correlation of predictions and targets.

    r is taken over all valid frames of the batch, per output, and then averaged over the
    outputs (weighted by ``output_weights``). Shapes are as in ``sequence_loss``. An
    output whose targets do not vary in the batch has no correlation and adds 0. The
    term rewards following the size and direction of each change of the command, which
    an absolute error loss alone trades for predicting the median.
    """
    weight = mask.to(predictions.dtype)
    if warmup_frames > 0:
        weight = weight.clone()
        weight[:, :warmup_frames] = 0.0
    weight = weight.unsqueeze(-1)                                        # (B, T, 1)
    count = weight.sum().clamp_min(1.0)
    predicted = predictions - (predictions * weight).sum((0, 1)) / count    # (B, T, O)
    actual = targets - (targets * weight).sum((0, 1)) / count
    covariance = (predicted * actual * weight).sum((0, 1))                  # (O,)
    predicted_var = (predicted.pow(2) * weight).sum((0, 1))
    actual_var = (actual.pow(2) * weight).sum((0, 1))
    varies = actual_var > 1e-12
    r = covariance / torch.sqrt(predicted_var * actual_var + 1e-12)
    penalty = torch.where(varies, 1.0 - r, torch.zeros_like(r))
    if output_weights:
        weights = torch.as_tensor(output_weights, dtype=penalty.dtype, device=penalty.device)
        return (penalty * weights).sum() / weights.sum()
    return penalty.mean()
