"""Encoder pretraining on single frames, before the sequence training of the whole policy.

Consecutive frames of a training window are nearly the same picture, so a batch of 24
windows gives the encoder about 24 independent examples per step. On a small CPU budget
the encoder then learns slowly through a recurrent cell that starts from rest.
Pretraining fits the encoder with a temporary linear read-out on shuffled single frames,
many independent examples per step, then drops the read-out. Every model family gets the
same pretraining, so comparisons stay fair.
"""

import logging
import math
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from liquid_control.data.augment import Augmentation
from liquid_control.training import distributed
from liquid_control.training.dataset import CachedEpisode
from liquid_control.training.loss import sequence_loss
from liquid_control.training.normalization import training_frames

LOGGER = logging.getLogger(__name__)


class FrameReadout(nn.Module):
    """Encoder plus a linear layer: frames (B, 3, H, W) -> normalised outputs (B, O)."""

    def __init__(self, encoder: nn.Module, feature_mean: torch.Tensor,
                 feature_std: torch.Tensor, outputs: int):
        super().__init__()
        self.encoder = encoder
        self.register_buffer('feature_mean', feature_mean.detach().clone())
        self.register_buffer('feature_std', feature_std.detach().clone())
        self.linear = nn.Linear(feature_mean.numel(), outputs)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        features = (self.encoder(frames) - self.feature_mean) / self.feature_std  # (B, F)
        return self.linear(features)


def pretrain_encoder(policy, episodes: Sequence[CachedEpisode],
                     windows: Sequence[Tuple[int, np.ndarray]], *, minutes: float,
                     batch_size: int, lr_encoder: float, lr_readout: float,
                     augmentation: Optional[Augmentation], seed: int,
                     context: Optional[distributed.Context] = None,
                     progress: bool = False) -> dict:
    """Train ``policy.encoder`` on the frames of ``windows`` for ``minutes``.

    Targets are divided by ``policy.output_std`` after subtracting ``policy.output_mean``,
    so ``set_normalization`` must have run. Returns a summary: steps, seconds and the mean
    loss of the first and last tenth of the steps.
    """
    context = context or distributed.Context()
    episode_index, frame_index = training_frames(episodes, windows)
    valid = np.array([episodes[e].valid[i] for e, i in zip(episode_index, frame_index)])
    episode_index, frame_index = episode_index[valid], frame_index[valid]
    if len(frame_index) == 0:
        return {'steps': 0, 'seconds': 0.0}

    model = FrameReadout(policy.encoder, policy.feature_mean, policy.feature_std,
                         len(policy.output_names))
    trained = model
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel
        trained = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([
        {'params': model.encoder.parameters(), 'lr': lr_encoder},
        {'params': model.linear.parameters(), 'lr': lr_readout}], weight_decay=1e-4)
    base_rates = [group['lr'] for group in optimizer.param_groups]
    scale = policy.output_std.detach().clone()
    mean = policy.output_mean.detach().clone()

    rng = np.random.default_rng([seed, 7919, context.rank])
    order_rng = np.random.default_rng([seed, 7919])
    started = time.perf_counter()
    limit_s = minutes * 60.0
    losses = []
    bar = None
    if progress and context.is_main:
        from tqdm import tqdm
        bar = tqdm(total=int(limit_s), desc='pretraining encoder', unit='s', leave=False)
    model.train()
    try:
        while True:
            order = order_rng.permutation(len(frame_index))
            if context.distributed:
                order = order[context.rank::context.world_size]
            if len(order) == 0:
                break
            done = False
            for first in range(0, max(len(order) - batch_size, 0) + 1, batch_size):
                chosen = order[first:first + batch_size]
                frames = np.stack([
                    episodes[episode_index[i]].frames[frame_index[i]] for i in chosen
                ]).astype(np.float32) / np.float32(255.0)                # (B, 3, H, W)
                if augmentation is not None:
                    frames = np.concatenate([augmentation.apply(frames[i:i + 1], rng)
                                             for i in range(len(frames))])
                targets = torch.from_numpy(np.stack([
                    np.nan_to_num(episodes[episode_index[i]].targets[frame_index[i]])
                    for i in chosen]))                                      # (B, O)
                elapsed = time.perf_counter() - started
                # Cosine decay over the time budget, as in the sequence training.
                progress_fraction = min(elapsed / limit_s, 1.0)
                factor = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress_fraction))
                if context.distributed:
                    factor = distributed.broadcast_value(context, factor)
                for group, base in zip(optimizer.param_groups, base_rates):
                    group['lr'] = base * factor
                outputs = trained(torch.from_numpy(frames))              # (B, O) normalised
                physical = outputs * scale + mean
                loss = sequence_loss(physical[:, None], targets[:, None],
                                     torch.ones(len(chosen), 1, dtype=torch.bool), scale,
                                     kind='mse')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(loss.item())
                if bar is not None:
                    bar.n = min(int(elapsed), bar.total)
                    bar.set_postfix(loss=f'{np.mean(losses[-20:]):.4f}')
                if distributed.any_rank(context, time.perf_counter() - started >= limit_s):
                    done = True
                    break
            if done:
                break
    finally:
        if bar is not None:
            bar.close()
    tenth = max(len(losses) // 10, 1)
    summary = {'steps': len(losses), 'seconds': time.perf_counter() - started,
               'first_loss': float(np.mean(losses[:tenth])),
               'last_loss': float(np.mean(losses[-tenth:]))}
    if context.is_main:
        LOGGER.info('pretrained the encoder on %d frames: %d steps in %.0f s, frame MSE '
                    '%.4f -> %.4f', len(frame_index), summary['steps'], summary['seconds'],
                    summary['first_loss'], summary['last_loss'])
    return summary
