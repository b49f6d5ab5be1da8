"""Training and validation data: cached frames, the time split and sequence batches.

Frames are decoded and preprocessed once and kept in memory as uint8, so an epoch costs
only the network. Each sample is a window of consecutive frames with the true time
between them, the commands as targets and a mask of frames with a valid label.
"""

import logging
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from liquid_control.data.augment import Augmentation
from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import DataError
from liquid_control.evaluation.replay import frame_intervals, segment_starts

LOGGER = logging.getLogger(__name__)


@dataclass
class CachedEpisode:
    """One episode's preprocessed frames and labels, held in memory.

    ``frames`` is ``(N, 3, H, W)`` uint8, ``dt`` ``(N,)`` float32 seconds since the previous
    frame (the episode's median frame interval for the first frame and after a gap),
    ``targets`` ``(N, O)`` float32 in physical units with NaN where missing, ``imu``
    ``(N, 6)`` float32 or None and ``valid`` ``(N,)`` bool.
    """

    name: str
    frames: np.ndarray
    timestamps: np.ndarray
    dt: np.ndarray
    targets: np.ndarray
    imu: Optional[np.ndarray]
    valid: np.ndarray
    episode: object

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class Segment:
    """A run of frames ``[start, stop)`` of one cached episode, with no gap inside."""

    episode_index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def cache_episode(episode, preprocessing: Preprocessing, outputs: Sequence[str],
                  use_imu: bool, max_gap_s: float) -> CachedEpisode:
    """Decode and preprocess every frame of ``episode`` and collect its labels."""
    count = len(episode)
    if count == 0:
        raise DataError(f'episode {episode_name(episode)} has no frames; record or import '
                        'it again, or leave it out')
    frames = np.empty((count, 3, preprocessing.height, preprocessing.width), np.uint8)
    for index in range(count):
        frames[index] = preprocessing.resize(episode.load_frame(index)).transpose(2, 0, 1)
    targets = np.stack([np.asarray(episode.command(name), np.float32) for name in outputs],
                       axis=1)
    valid = np.asarray(episode.valid, bool) & np.all(np.isfinite(targets), axis=1)
    imu = np.asarray(episode.imu, np.float32) if use_imu else None
    timestamps = np.asarray(episode.timestamps, np.float64)
    return CachedEpisode(
        name=episode_name(episode), frames=frames, timestamps=timestamps,
        dt=frame_intervals(timestamps, max_gap_s), targets=targets, imu=imu, valid=valid,
        episode=episode)


def episode_name(episode) -> str:
    """Return a readable name for an episode: its folder when it has one."""
    folder = getattr(episode, 'folder', None) or getattr(episode, 'path', None)
    return str(folder) if folder is not None else repr(episode)


@dataclass
class Split:
    """Training windows and validation segments over a list of cached episodes."""

    train_windows: List[Tuple[int, np.ndarray]]
    validation_segments: List[Segment]

    def describe(self, episodes: Sequence[CachedEpisode]) -> List[Dict[str, object]]:
        """Return the validation ranges as JSON-able dicts for the checkpoint's metadata."""
        return [{'episode': episodes[segment.episode_index].name,
                 'start': segment.start, 'stop': segment.stop}
                for segment in self.validation_segments]


def split_episodes(episodes: Sequence[CachedEpisode], mode: str, validation_fraction: float,
                   sequence_length: int, stride: int, max_gap_s: float,
                   seed: int = 0) -> Split:
    """Split episodes into training windows and validation segments.

    - ``time``: the last ``validation_fraction`` of all frames, in recording order, is kept
      for validation, so validation is a later part of the drive.
    - ``episode_end``: the last ``validation_fraction`` of every episode is kept.
    - ``episode``: whole episodes (chosen with ``seed``) are kept; needs two or more.

    Where training and validation frames meet inside one episode, one window length of
    frames before the validation part is dropped, so no training window ends next to a
    validation frame.
    """
    lengths = [len(cached) for cached in episodes]
    validation_ranges: Dict[int, Tuple[int, int]] = {}
    train_ranges: Dict[int, Tuple[int, int]] = {}

    def cut_episode(index: int, cut: int) -> None:
        if cut < lengths[index]:
            validation_ranges[index] = (cut, lengths[index])
        gap = sequence_length if cut < lengths[index] else 0
        if cut - gap > 0:
            train_ranges[index] = (0, cut - gap)

    if mode == 'time':
        order = sorted(range(len(episodes)), key=lambda i: float(episodes[i].timestamps[0]))
        remaining = int(round(sum(lengths) * validation_fraction))
        for index in reversed(order):
            taken = min(remaining, lengths[index])
            cut_episode(index, lengths[index] - taken)
            remaining -= taken
    elif mode == 'episode_end':
        for index in range(len(episodes)):
            cut_episode(index, int(round(lengths[index] * (1.0 - validation_fraction))))
    elif mode == 'episode':
        if len(episodes) < 2:
            raise DataError('split=episode needs at least two episodes; use split=time for '
                            'a single recording')
        order = np.random.default_rng(seed).permutation(len(episodes))
        held_out = 0
        for index in (int(i) for i in order):
            if (held_out < validation_fraction * sum(lengths)
                    and len(validation_ranges) < len(order) - 1):
                validation_ranges[index] = (0, lengths[index])
                held_out += lengths[index]
            else:
                train_ranges[index] = (0, lengths[index])
    else:
        raise DataError(f'split mode {mode!r} is unknown; use time, episode_end or episode')

    train_windows = []
    for index, (start, stop) in sorted(train_ranges.items()):
        cached = episodes[index]
        for window in cached.episode.windows(sequence_length, stride, max_gap_s):
            window = np.asarray(window, np.int64)
            if window[0] >= start and window[-1] < stop and cached.valid[window].any():
                train_windows.append((index, window))

    segments = []
    for index, (start, stop) in sorted(validation_ranges.items()):
        starts = segment_starts(episodes[index].timestamps, max_gap_s)
        bounds = sorted({start, stop, *[int(s) for s in starts if start < s < stop]})
        for first, last in zip(bounds[:-1], bounds[1:]):
            if last - first >= 2:
                segments.append(Segment(index, first, last))
    if not train_windows:
        raise DataError(
            f'no training windows of {sequence_length} frames fit the data '
            f'({sum(len(e) for e in episodes)} frames); record more, or lower '
            'sequence_length or validation_fraction')
    if not segments:
        raise DataError('the validation part is empty; raise validation_fraction')
    return Split(train_windows, segments)


def iterate_batches(episodes: Sequence[CachedEpisode], windows: Sequence[Tuple[int, np.ndarray]],
                    batch_size: int, rng: np.random.Generator,
                    augmentation: Optional[Augmentation]) -> Iterator[Dict[str, np.ndarray]]:
    """Yield shuffled batches of training windows as numpy arrays.

    Each batch has ``frames`` ``(B, T, 3, H, W)`` float32 in [0, 1], ``dt`` ``(B, T)``,
    ``targets`` ``(B, T, O)`` (NaN replaced by 0), ``mask`` ``(B, T)`` and ``imu``
    ``(B, T, 6)`` or None.
    """
    order = rng.permutation(len(windows))
    for first in range(0, len(order), batch_size):
        chosen = [windows[i] for i in order[first:first + batch_size]]
        yield collate(episodes, chosen, rng, augmentation)


def collate(episodes: Sequence[CachedEpisode], chosen: Sequence[Tuple[int, np.ndarray]],
            rng: Optional[np.random.Generator],
            augmentation: Optional[Augmentation]) -> Dict[str, np.ndarray]:
    """Stack windows into one batch, augmenting each sequence when ``augmentation`` is set."""
    frames, dts, targets, masks, imus = [], [], [], [], []
    for episode_index, window in chosen:
        cached = episodes[episode_index]
        sequence = cached.frames[window].astype(np.float32) / np.float32(255.0)
        if augmentation is not None:
            sequence = augmentation.apply(sequence, rng)
        frames.append(sequence)
        dts.append(cached.dt[window])
        targets.append(np.nan_to_num(cached.targets[window]))
        masks.append(cached.valid[window])
        if cached.imu is not None:
            imus.append(cached.imu[window])
    return {
        'frames': np.stack(frames),
        'dt': np.stack(dts),
        'targets': np.stack(targets),
        'mask': np.stack(masks),
        'imu': np.stack(imus) if imus else None,
    }


def segment_arrays(cached: CachedEpisode, segment: Segment) -> Dict[str, np.ndarray]:
    """Return one validation segment as a batch of one sequence (no augmentation)."""
    window = np.arange(segment.start, segment.stop)
    return collate([cached], [(0, window)], None, None)
