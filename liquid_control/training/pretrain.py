"""Encoder pretraining on single frames, before the sequence training of the whole policy.

Consecutive frames of a training window are nearly the same picture, so a batch of 24
windows gives the encoder about 24 independent examples per step. On a small CPU budget
the encoder then learns slowly through a recurrent cell that starts from rest.
Pretraining fits the encoder with a temporary linear read-out on shuffled single frames,
many independent examples per step, then drops the read-out. Every model family gets the
same pretraining, so comparisons stay fair.

The amount of pretraining is a number of passes over the training frames
(``epochs``), so a run does the same work on a busy and on an idle machine;
``minutes`` only caps it. An exponential moving average (EMA) of the weights is
scored on the validation frames every ``validate_every`` epochs. The best average is
what the encoder keeps, and ``patience`` scores without improvement end the
pretraining. On a small data set the encoder starts to memorise its training frames
after a few dozen passes (about 50 on a 2,250-frame donkeycar tub), and the validation
frames show when.
"""

import copy
import gc
import logging
import math
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from liquid_control.data.augment import Augmentation, mirror
from liquid_control.errors import LiquidControlError
from liquid_control.training import distributed
from liquid_control.training.dataset import CachedEpisode, Segment, encoder_frames
from liquid_control.training.loss import sequence_loss
from liquid_control.training.normalization import training_frames

LOGGER = logging.getLogger(__name__)

# Frames per forward pass when scoring the validation frames.
SCORE_BATCH = 256
# Steps over which the pretraining learning rates rise linearly to their full value.
WARMUP_STEPS = 100
# A pretrained encoder whose validation MAE is above this share of the constant
# predictor's gets a warning.
CONSTANT_MARGIN = 0.9


class FrameReadout(nn.Module):
    """Encoder plus a linear layer: encoder inputs (B, C, H, W) -> normalised outputs (B, O).

    C is 3, or 6 for a policy with a frame gap (``dataset.encoder_frames``).
    """

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


class WeightAverage:
    """Exponential moving average of a module's parameters, kept in a copy of the module.

    The average is bias-corrected: it weighs only the weights passed to ``update``, never
    the starting weights of the copy. Without the correction a short run keeps mostly its
    random initial weights (a share of ``decay ** steps``: 65 % after 215 steps at 0.998).
    """

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'EMA decay {decay} is invalid: use 0 <= decay < 1')
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(module)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        # After n updates the plain average has total weight 1 - decay ** n on the updates.
        # Rescaling by it gives this step's decay; the first update copies the weights.
        self.updates += 1
        before = 1.0 - self.decay ** (self.updates - 1)
        after = 1.0 - self.decay ** self.updates
        decay = self.decay * before / after
        for average, current in zip(self.module.parameters(), module.parameters()):
            average.mul_(decay).add_(current.detach(), alpha=1.0 - decay)
        for average, current in zip(self.module.buffers(), module.buffers()):
            average.copy_(current)


def rate_factor(step: int, done: float) -> float:
    """Return the learning-rate factor of pretraining step ``step`` (counted from 0).

    ``done`` is the finished share of the epochs, or of the time limit without them. The
    rate decays along a cosine to 0.05 of its value. It also rises linearly over the
    first ``WARMUP_STEPS`` steps, because a full first Adam step moves every weight of
    the random encoder by the whole rate. In one trial that made the frame loss jump
    50-fold.
    """
    cosine = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(max(done, 0.0), 1.0)))
    return cosine * min(1.0, (step + 1) / WARMUP_STEPS)


def frame_targets(episodes: Sequence[CachedEpisode], episode_index: np.ndarray,
                  frame_index: np.ndarray) -> np.ndarray:
    """Return the targets (N, O) of the given frames, NaN replaced by 0."""
    return np.stack([np.nan_to_num(episodes[e].targets[i])
                     for e, i in zip(episode_index, frame_index)])


def horizon_targets(episodes: Sequence[CachedEpisode], episode_index: np.ndarray,
                    frame_index: np.ndarray, horizons: Sequence[int],
                    usable: Dict[int, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Return the commands ``h`` frames after each frame for every horizon ``h``, and a mask.

    Gives targets ``(N, H, O)`` (0 where missing) and a mask ``(N, H)``. A target counts
    only when frame ``i + h`` lies in the same run without a time gap and
    ``usable[episode][i + h]`` is true, so a read-out trained on training frames never
    learns a held-out frame's command.
    """
    outputs = episodes[0].targets.shape[1]
    targets = np.zeros((len(frame_index), len(horizons), outputs), np.float32)
    mask = np.zeros((len(frame_index), len(horizons)), bool)
    for row, (e, i) in enumerate(zip(episode_index, frame_index)):
        cached = episodes[e]
        for column, horizon in enumerate(horizons):
            j = int(i) + int(horizon)
            if not 0 <= j < len(cached) or not usable[int(e)][j]:
                continue
            if cached.run_start is not None and cached.run_start[j] != cached.run_start[i]:
                continue
            targets[row, column] = np.nan_to_num(cached.targets[j])
            mask[row, column] = True
    return targets, mask


def usable_frames(episodes: Sequence[CachedEpisode], episode_index: np.ndarray,
                  frame_index: np.ndarray) -> Dict[int, np.ndarray]:
    """Return, per episode, a bool array that marks the given frames."""
    usable = {index: np.zeros(len(cached), bool) for index, cached in enumerate(episodes)}
    for e, i in zip(episode_index, frame_index):
        usable[int(e)][int(i)] = True
    return usable


def segment_frames(episodes: Sequence[CachedEpisode], segments: Sequence[Segment]
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Return the (episode, frame) indices of the valid frames inside ``segments``."""
    episode_index, frame_index = [], []
    for segment in segments:
        frames = np.arange(segment.start, segment.stop)
        frames = frames[episodes[segment.episode_index].valid[frames]]
        episode_index.append(np.full(len(frames), segment.episode_index, np.int64))
        frame_index.append(frames.astype(np.int64))
    if not episode_index:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(episode_index), np.concatenate(frame_index)


def augment_frame(frame: np.ndarray, targets: np.ndarray, augmentation: Augmentation,
                  rng: np.random.Generator, output_signs: Optional[np.ndarray]) -> np.ndarray:
    """Return the augmented ``(1, C, H, W)`` encoder input, mirroring ``targets`` (..., O) with it.

    With C = 6 the current and the earlier frame get the same changes, as two frames of
    one training window do.
    """
    if augmentation.draws_mirror(rng):
        if output_signs is None:
            raise ValueError('pretraining needs output_signs to mirror frames')
        frame = mirror(frame)
        targets *= output_signs
    frames = frame.reshape(-1, 3, *frame.shape[-2:])  # (C / 3, 3, H, W)
    return augmentation.apply(frames, rng).reshape(frame.shape)


@torch.no_grad()
def score_frames(model: FrameReadout, episodes: Sequence[CachedEpisode],
                 episode_index: np.ndarray, frame_index: np.ndarray,
                 output_mean: torch.Tensor, output_std: torch.Tensor,
                 frame_gap: int = 0, column: int = 0) -> float:
    """Return the mean absolute error of ``model`` on the frames, in training std units.

    The model's outputs come in groups of ``len(output_mean)``, one group per horizon
    (see ``pretrain_encoder``), and ``column`` picks the group of the current frame.
    """
    model.eval()
    errors = []
    for first in range(0, len(frame_index), SCORE_BATCH):
        chosen = slice(first, first + SCORE_BATCH)
        frames = encoder_frames(episodes, episode_index[chosen], frame_index[chosen],
                                frame_gap)
        outputs = model(torch.from_numpy(frames.astype(np.float32) / np.float32(255.0)))
        outputs = outputs.reshape(len(outputs), -1, len(output_mean))[:, column]  # (B, O)
        targets = torch.from_numpy(frame_targets(episodes, episode_index[chosen],
                                                 frame_index[chosen]))
        physical = outputs * output_std + output_mean                   # (B, O)
        errors.append(((physical - targets).abs() / output_std).numpy())
    return float(np.concatenate(errors).mean()) if errors else math.inf


def pretrain_encoder(policy, episodes: Sequence[CachedEpisode],
                     windows: Sequence[Tuple[int, np.ndarray]],
                     validation: Sequence[Segment] = (), *, epochs: int = 0,
                     minutes: Optional[float] = None, batch_size: int = 64,
                     lr_encoder: float = 1e-3, lr_readout: float = 5e-3,
                     weight_decay: float = 1e-4, ema_decay: float = 0.998,
                     validate_every: int = 5, patience: int = 4,
                     augmentation: Optional[Augmentation] = None,
                     output_signs: Optional[np.ndarray] = None, seed: int = 0,
                     horizons: Sequence[int] = (0,),
                     context: Optional[distributed.Context] = None,
                     progress: bool = False) -> Dict[str, float]:
    """Train ``policy.encoder`` on the frames of ``windows``; return a summary.

    Runs ``epochs`` passes over the training frames (or, with ``epochs=0``, until
    ``minutes`` run out), stopping early after ``patience`` validation scores without
    improvement. The encoder ends with the best-scoring weight average, or with the last
    one when there are no validation frames. Targets are divided by
    ``policy.output_std`` after subtracting ``policy.output_mean``, so
    ``set_normalization`` must have run. The summary contains the steps, epochs, seconds,
    the mean loss of the first and last tenth of the steps, and the best validation MAE
    in training std units. ``output_signs`` (from ``dataset.mirror_signs``) is needed
    when the augmentation mirrors frames.

    ``horizons`` lists the frames, relative to each frame, whose commands the read-out
    predicts: 0 is the frame's own command, 4 the one 4 frames later. Only horizon 0 is
    scored. Other horizons show the encoder where the lane leads and what the robot did,
    from the same pictures. Their targets come only from training frames of the same run.
    """
    context = context or distributed.Context()
    horizons = [int(h) for h in horizons]
    if 0 not in horizons or len(set(horizons)) != len(horizons):
        raise ValueError(f'pretraining horizons {horizons} are invalid: list distinct '
                         'frame offsets that include 0')
    if epochs <= 0 and not minutes:
        raise ValueError(f'pretraining with epochs={epochs} and minutes={minutes} is invalid: '
                         'give epochs > 0 or a time limit in minutes')
    episode_index, frame_index = training_frames(episodes, windows)
    valid = np.array([episodes[e].valid[i] for e, i in zip(episode_index, frame_index)],
                     dtype=bool)
    episode_index, frame_index = episode_index[valid], frame_index[valid]
    if len(frame_index) == 0:
        return {'steps': 0, 'epochs': 0, 'seconds': 0.0}
    validation_episodes, validation_frames = segment_frames(episodes, validation)
    usable = usable_frames(episodes, episode_index, frame_index)
    current = horizons.index(0)

    frame_gap = policy.config.frame_gap
    outputs = len(policy.output_names)
    model = FrameReadout(policy.encoder, policy.feature_mean, policy.feature_std,
                         outputs * len(horizons))
    trained = model
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel
        trained = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([
        {'params': model.encoder.parameters(), 'lr': lr_encoder},
        {'params': model.linear.parameters(), 'lr': lr_readout}], weight_decay=weight_decay)
    base_rates = [group['lr'] for group in optimizer.param_groups]
    scale = policy.output_std.detach().clone()
    mean = policy.output_mean.detach().clone()
    average = WeightAverage(model, ema_decay)

    rng = np.random.default_rng([seed, 7919, context.rank])
    order_rng = np.random.default_rng([seed, 7919])
    per_rank = len(frame_index) // context.world_size if context.distributed else \
        len(frame_index)
    steps_per_epoch = max(per_rank // batch_size, 1)
    total_steps = steps_per_epoch * epochs if epochs > 0 else None
    limit_s = minutes * 60.0 if minutes else math.inf
    started = time.perf_counter()
    losses, scores = [], []
    best_score, best_state, best_epoch, stale = math.inf, None, 0, 0
    bar = None
    if progress and context.is_main:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, desc='pretraining encoder', unit='step', leave=False)
    epoch, out_of_time, out_of_patience = 0, False, False
    try:
        while (epochs <= 0 or epoch < epochs) and not out_of_time:
            epoch += 1
            order = order_rng.permutation(len(frame_index))
            if context.distributed:
                order = order[context.rank::context.world_size]
            model.train()
            for step in range(steps_per_epoch):
                chosen = order[step * batch_size:(step + 1) * batch_size]
                frames = encoder_frames(episodes, episode_index[chosen], frame_index[chosen],
                                        frame_gap).astype(np.float32) \
                    / np.float32(255.0)                                 # (B, C, H, W)
                targets, mask = horizon_targets(episodes, episode_index[chosen],
                                                frame_index[chosen], horizons,
                                                usable)  # (B, H, O), (B, H)
                if augmentation is not None:
                    frames = np.concatenate([
                        augment_frame(frames[i:i + 1], targets[i], augmentation, rng,
                                      output_signs) for i in range(len(frames))])
                targets = torch.from_numpy(targets)
                elapsed = time.perf_counter() - started
                done = len(losses) / total_steps if total_steps else elapsed / limit_s
                factor = rate_factor(len(losses), done)
                if context.distributed:
                    factor = distributed.broadcast_value(context, factor)
                for group, base in zip(optimizer.param_groups, base_rates):
                    group['lr'] = base * factor
                physical = trained(torch.from_numpy(frames)).reshape(
                    len(chosen), len(horizons), outputs) * scale + mean  # (B, H, O)
                loss = sequence_loss(physical, targets, torch.from_numpy(mask), scale,
                                     kind='mse')
                optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    raise LiquidControlError(
                        f'encoder pretraining failed: the loss became {loss.item()} in '
                        f'epoch {epoch}; lower lr_encoder or check the data for extreme values')
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                average.update(model)
                losses.append(loss.item())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f'{np.mean(losses[-20:]):.4f}', epoch=epoch)
                if distributed.any_rank(context, time.perf_counter() - started >= limit_s):
                    out_of_time = True
                    break
            last_epoch = out_of_time or epoch == epochs
            if len(validation_frames) == 0 or not (epoch % validate_every == 0 or last_epoch):
                continue
            # Every rank has the same averaged weights, so every rank computes this score.
            score = score_frames(average.module, episodes, validation_episodes,
                                 validation_frames, mean, scale, frame_gap, current)
            scores.append(score)
            if score < best_score:
                best_score, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(average.module.state_dict())
            else:
                stale += 1
                if stale >= patience:
                    out_of_patience = True
                    break
    finally:
        if bar is not None:
            bar.close()
    if trained is not model:
        # Free the DDP wrapper and its reducer now, while the process group exists,
        # rather than whenever the garbage collector finds them.
        del trained
        gc.collect()
    model.load_state_dict(best_state if best_state is not None
                          else average.module.state_dict())
    tenth = max(len(losses) // 10, 1)
    summary = {'steps': len(losses), 'epochs': epoch, 'steps_per_epoch': steps_per_epoch,
               'best_epoch': best_epoch or epoch,
               'seconds': time.perf_counter() - started,
               'first_loss': float(np.mean(losses[:tenth])),
               'last_loss': float(np.mean(losses[-tenth:]))}
    constant = math.nan
    if scores:
        summary['validation_mae'] = best_score
        # The constant predictor outputs the training mean, which is 0 in these units.
        targets = frame_targets(episodes, validation_episodes, validation_frames)
        constant = float((np.abs(targets - mean.numpy()) / scale.numpy()).mean())
        summary['validation_constant_mae'] = constant
    if context.is_main:
        LOGGER.info('pretrained the encoder on %d frames: %d epochs (%d steps) in %.0f s, '
                    'frame MSE %.4f -> %.4f; kept epoch %d (%s)',
                    len(frame_index), epoch, summary['steps'], summary['seconds'],
                    summary['first_loss'], summary['last_loss'], summary['best_epoch'],
                    f'validation MAE {best_score:.3f} std, constant predictor '
                    f'{constant:.3f}' if scores else 'no validation')
        if scores and best_score > CONSTANT_MARGIN * constant:
            if out_of_time:
                remedy = (f'pretraining reached its time limit after {epoch} epochs: raise '
                          '--max-minutes or pretrain_minutes')
            elif out_of_patience:
                remedy = (f'the validation score stopped improving after epoch {best_epoch}: '
                          'raise pretrain_patience, or record more varied driving')
            else:
                remedy = f'raise pretrain_epochs ({epoch} here)'
            LOGGER.warning('the pretrained encoder is hardly better than a constant predictor '
                           'on the validation frames (MAE %.3f against %.3f std), so the '
                           'sequence training starts from a weak encoder and may end worse '
                           'than it could; %s', best_score, constant, remedy)
    return summary
