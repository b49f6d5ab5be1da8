"""Fitting the recurrent core alone on cached encoder features, before the sequence training.

A core that starts from random weights needs epochs to read the pretrained features. The
sequence training fine-tunes the encoder in those epochs too, so the encoder moves while
the core is still far off. Slow cores such as NCP-LTC need more of them than an LSTM.
The warm-up runs the encoder once over every frame, without augmentation, and then fits
only the core and its input and output maps on those features. The encoder does not
change. On a 3,500-frame recording an epoch took 0.3-1.5 s, against about a minute for
an epoch of the sequence training. The weights with the lowest validation loss are kept.
"""

import logging
import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from liquid_control.errors import LiquidControlError
from liquid_control.training.dataset import (CachedEpisode, Segment, encoder_frames,
                                             window_labels)

LOGGER = logging.getLogger(__name__)

# Frames per encoder call while caching features.
FEATURE_CHUNK = 256

# outputs (B, T, O) in physical units, targets (B, T, O), mask (B, T) -> scalar loss
LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def episode_features(policy: torch.nn.Module,
                     episodes: Sequence[CachedEpisode]) -> List[torch.Tensor]:
    """Return the encoder features (N, F) of every frame of every episode, in eval mode."""
    encoder = policy.encoder
    was_training = encoder.training
    encoder.eval()
    features = []
    try:
        for index, cached in enumerate(episodes):
            chunks = []
            for start in range(0, len(cached), FEATURE_CHUNK):
                frame_index = np.arange(start, min(start + FEATURE_CHUNK, len(cached)))
                frames = encoder_frames(episodes, np.full(len(frame_index), index), frame_index,
                                        policy.config.frame_gap)
                chunks.append(encoder(torch.from_numpy(frames).float().div_(255.0)))
            features.append(torch.cat(chunks))
    finally:
        encoder.train(was_training)
    return features


def _window_batch(episodes: Sequence[CachedEpisode], features: Sequence[torch.Tensor],
                  chosen: Sequence[Tuple[int, np.ndarray]]) -> Dict[str, Optional[torch.Tensor]]:
    """Stack the cached features and the labels of some windows into one batch."""
    labels = [window_labels(episodes[e], w) for e, w in chosen]
    dts, targets, masks, imus = zip(*labels)
    return {
        'features': torch.stack([features[e][w] for e, w in chosen]),
        'imu': None if imus[0] is None else torch.from_numpy(np.stack(imus)),
        'dt': torch.from_numpy(np.stack(dts)),
        'targets': torch.from_numpy(np.stack(targets)),
        'mask': torch.from_numpy(np.stack(masks)),
    }


def core_parameters(policy: torch.nn.Module) -> List[torch.nn.Parameter]:
    """Return the trainable parameters outside the encoder: the core and its maps."""
    encoder_ids = {id(p) for p in policy.encoder.parameters()}
    return [p for p in policy.parameters() if p.requires_grad and id(p) not in encoder_ids]


@torch.no_grad()
def validation_loss(policy: torch.nn.Module, episodes: Sequence[CachedEpisode],
                    features: Sequence[torch.Tensor], segments: Sequence[Segment],
                    loss_function: LossFunction) -> float:
    """Replay every validation segment from a fresh state; return the frame-weighted loss."""
    total, weight = 0.0, 0.0
    for segment in segments:
        window = np.arange(segment.start, segment.stop)
        batch = _window_batch(episodes, features, [(segment.episode_index, window)])
        count = float(batch['mask'].sum())
        if count == 0:
            continue
        outputs, _ = policy.forward_features(batch['features'], batch['imu'], batch['dt'])
        total += float(loss_function(outputs, batch['targets'], batch['mask'])) * count
        weight += count
    return total / weight if weight else math.nan


def warm_up_core(policy: torch.nn.Module, episodes: Sequence[CachedEpisode],
                 windows: Sequence[Tuple[int, np.ndarray]],
                 validation_segments: Sequence[Segment], *, epochs: int, batch_size: int,
                 lr: float, weight_decay: float, gradient_clip: float,
                 train_loss: LossFunction, validation_loss_function: LossFunction,
                 seed: int) -> Dict[str, float]:
    """Fit the core of ``policy`` on cached features for ``epochs`` passes over ``windows``.

    The encoder's weights stay as they are. Each epoch is validated on
    ``validation_segments`` and the core keeps the weights of the best epoch (the last
    epoch's without validation segments). Every process of a distributed run gets the
    same result from the same seed and data, so no weights need to be exchanged.
    Returns a summary: epochs, best epoch, validation loss before and after (None
    without validation segments), seconds.
    """
    started = time.perf_counter()
    features = episode_features(policy, episodes)
    parameters = core_parameters(policy)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng([seed, 1])
    was_training = policy.training

    def validate() -> float:
        policy.eval()
        try:
            return validation_loss(policy, episodes, features, validation_segments,
                                   validation_loss_function)
        finally:
            policy.train()

    policy.train()
    initial = validate()
    best_loss, best_epoch = initial, 0
    best_state = [p.detach().clone() for p in parameters]
    try:
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(windows))
            total, seen = 0.0, 0
            for first in range(0, len(order), batch_size):
                chosen = [windows[i] for i in order[first:first + batch_size]]
                batch = _window_batch(episodes, features, chosen)
                outputs, _ = policy.forward_features(batch['features'], batch['imu'],
                                                     batch['dt'])
                loss = train_loss(outputs, batch['targets'], batch['mask'])
                if not torch.isfinite(loss):
                    raise LiquidControlError(
                        f'the core warm-up failed: the loss became {loss.item()} in warm-up '
                        f'epoch {epoch}; lower lr_recurrent, or set core_warmup_epochs to 0')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if gradient_clip > 0:
                    torch.nn.utils.clip_grad_norm_(parameters, gradient_clip)
                optimizer.step()
                total += float(loss.detach()) * len(chosen)
                seen += len(chosen)
            score = validate()
            # Without validation the latest epoch counts as the best.
            if not validation_segments or score < best_loss:
                best_loss, best_epoch = score, epoch
                best_state = [p.detach().clone() for p in parameters]
            LOGGER.debug('core warm-up epoch %d: train loss %.4f, val loss %.4f', epoch,
                         total / max(seen, 1), score)
    finally:
        with torch.no_grad():
            for parameter, value in zip(parameters, best_state):
                parameter.copy_(value)
        policy.train(was_training)
    # None instead of NaN without validation, because checkpoint metadata is strict JSON.
    return {'epochs': epochs, 'best_epoch': best_epoch,
            'initial_validation_loss': None if math.isnan(initial) else initial,
            'validation_loss': None if math.isnan(best_loss) else best_loss,
            'seconds': round(time.perf_counter() - started, 1)}
