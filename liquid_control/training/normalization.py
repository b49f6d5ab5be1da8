"""Statistics that standardise what enters the recurrent cell and what leaves it.

An LTC cell's synapses are sigmoids of their inputs, so features with a spread of 20-30
saturate them and the cell stops learning. The trainer measures the encoder's features,
the IMU and the targets on training frames and stores mean and std in the policy
(``Policy.set_normalization``), so the checkpoint carries them.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from liquid_control.training.dataset import CachedEpisode, encoder_frames

MIN_STD = 1e-3


@dataclass
class Statistics:
    """Mean and std of features ``(F,)``, IMU ``(6,)`` or None, and outputs ``(O,)``."""

    feature_mean: np.ndarray
    feature_std: np.ndarray
    imu_mean: Optional[np.ndarray]
    imu_std: Optional[np.ndarray]
    output_mean: np.ndarray
    output_std: np.ndarray

    def apply(self, policy) -> None:
        """Store the statistics in ``policy`` through ``set_normalization``."""
        def tensor(values):
            return None if values is None else torch.as_tensor(values, dtype=torch.float32)

        policy.set_normalization(
            tensor(self.feature_mean), tensor(self.feature_std),
            tensor(self.imu_mean), tensor(self.imu_std),
            tensor(self.output_mean), tensor(self.output_std))


def training_frames(episodes: Sequence[CachedEpisode],
                    windows: Sequence[Tuple[int, np.ndarray]]) -> Tuple[np.ndarray, ...]:
    """Return the sorted unique (episode, frame) pairs that training windows cover."""
    pairs = set()
    for episode_index, window in windows:
        pairs.update((episode_index, int(i)) for i in window)
    ordered = sorted(pairs)
    return (np.array([p[0] for p in ordered], np.int64),
            np.array([p[1] for p in ordered], np.int64))


def _mean_std(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, np.float64)
    mean = np.nanmean(values, axis=0) if len(values) else np.zeros(values.shape[1])
    std = np.nanstd(values, axis=0) if len(values) else np.ones(values.shape[1])
    mean = np.nan_to_num(mean, nan=0.0)
    std = np.maximum(np.nan_to_num(std, nan=1.0), MIN_STD)
    return mean.astype(np.float32), std.astype(np.float32)


@torch.no_grad()
def encoder_feature_statistics(encoder: torch.nn.Module, episodes: Sequence[CachedEpisode],
                               episode_index: np.ndarray, frame_index: np.ndarray,
                               max_frames: int = 2048, batch_size: int = 256,
                               seed: int = 0, frame_gap: int = 0
                               ) -> Tuple[np.ndarray, np.ndarray]:
    """Run ``encoder`` on up to ``max_frames`` training frames; return feature mean and std.

    ``frame_gap`` is the policy's: the encoder then takes each frame with an earlier one.
    """
    rng = np.random.default_rng(seed)
    chosen = np.arange(len(frame_index))
    if len(chosen) > max_frames:
        chosen = np.sort(rng.choice(chosen, size=max_frames, replace=False))
    was_training = encoder.training
    encoder.eval()
    features = []
    try:
        for first in range(0, len(chosen), batch_size):
            part = chosen[first:first + batch_size]
            frames = encoder_frames(episodes, episode_index[part], frame_index[part], frame_gap)
            frames_tensor = torch.from_numpy(frames.astype(np.float32) / np.float32(255.0))
            features.append(encoder(frames_tensor).numpy())
    finally:
        encoder.train(was_training)
    return _mean_std(np.concatenate(features))


def measure_statistics(encoder: torch.nn.Module, episodes: Sequence[CachedEpisode],
                       windows: Sequence[Tuple[int, np.ndarray]], use_imu: bool,
                       seed: int = 0, frame_gap: int = 0) -> Statistics:
    """Measure feature, IMU and output statistics on the frames of the training windows."""
    episode_index, frame_index = training_frames(episodes, windows)
    valid = np.array([episodes[e].valid[i] for e, i in zip(episode_index, frame_index)])
    targets = np.stack([episodes[e].targets[i] for e, i in zip(episode_index, frame_index)])
    output_mean, output_std = _mean_std(targets[valid])
    imu_mean = imu_std = None
    if use_imu:
        imu = np.stack([episodes[e].imu[i] for e, i in zip(episode_index, frame_index)])
        imu_mean, imu_std = _mean_std(imu)
    feature_mean, feature_std = encoder_feature_statistics(
        encoder, episodes, episode_index, frame_index, seed=seed, frame_gap=frame_gap)
    return Statistics(feature_mean, feature_std, imu_mean, imu_std, output_mean, output_std)
