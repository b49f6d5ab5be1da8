"""Training and validation data: cached frames, the time split and sequence batches.

Frames are decoded and preprocessed once and kept in memory as uint8, so an epoch costs
only the network. Each sample is a window of consecutive frames with the true time
between them, the commands as targets and a mask of frames with a valid label.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from liquid_control.data.augment import Augmentation, mirror
from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import ConfigError, DataError
from liquid_control.evaluation.replay import frame_intervals, segment_starts

LOGGER = logging.getLogger(__name__)

# Sign of each command in a scene mirrored left to right (across the robot's x-z plane,
# REP 103 axes): a turn rate is an axial vector, so its z part changes sign.
MIRRORED_COMMANDS = {'linear_x': 1.0, 'angular_z': -1.0}
# The same for IMU readings in IMU_FIELDS order: the angular velocity's x and z parts
# and the linear acceleration's y part change sign.
IMU_MIRROR_SIGNS = np.array([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0], np.float32)


@dataclass
class CachedEpisode:
    """One episode's preprocessed frames and labels, kept in memory.

    ``frames`` is ``(N, 3, H, W)`` uint8 and ``dt`` ``(N,)`` float32 seconds since the
    previous frame. The first frame and a frame after a gap get the median frame interval,
    the rule that ``liquid-control evaluate`` uses. ``targets`` is ``(N, O)`` float32 in
    physical units with NaN where missing, ``imu`` ``(N, 6)`` float32 or None, and
    ``valid`` ``(N,)`` bool. ``run_start`` ``(N,)`` is the index of the first frame of
    each frame's run without a time gap, or None to treat the episode as one run.
    """

    name: str
    frames: np.ndarray
    timestamps: np.ndarray
    dt: np.ndarray
    targets: np.ndarray
    imu: Optional[np.ndarray]
    valid: np.ndarray
    episode: object
    run_start: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.frames)


def encoder_frames(episodes: Sequence[CachedEpisode], episode_index: np.ndarray,
                   frame_index: np.ndarray, frame_gap: int = 0) -> np.ndarray:
    """Return the encoder inputs of single frames as uint8, for frame-level passes.

    Gives ``(N, 3, H, W)``, or with a ``frame_gap`` k ``(N, 6, H, W)``: each frame, then
    the frame k steps earlier, or the first frame after the last time gap if that is
    later, as the policy pairs them at run time.
    """
    current = np.stack([episodes[e].frames[i] for e, i in zip(episode_index, frame_index)])
    if not frame_gap:
        return current
    earlier = []
    for e, i in zip(episode_index, frame_index):
        cached = episodes[e]
        first = 0 if cached.run_start is None else int(cached.run_start[i])
        earlier.append(cached.frames[max(i - frame_gap, first)])
    earlier = np.stack(earlier)
    return np.concatenate([current, earlier], axis=1)


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
    starts = segment_starts(timestamps, max_gap_s)
    run_start = starts[np.searchsorted(starts, np.arange(count), side='right') - 1]
    return CachedEpisode(
        name=episode_name(episode), frames=frames, timestamps=timestamps,
        dt=frame_intervals(timestamps, max_gap_s), targets=targets, imu=imu, valid=valid,
        episode=episode, run_start=run_start)


def episode_name(episode) -> str:
    """Return a readable name for an episode: its folder when it has one."""
    folder = getattr(episode, 'folder', None) or getattr(episode, 'path', None)
    return str(folder) if folder is not None else repr(episode)


TRAIN, VALIDATION, TEST = 0, 1, 2


@dataclass
class Split:
    """Training windows, validation segments and held-out test segments.

    Test segments are never used while training; they are there for a final, unbiased
    measurement (``liquid-control compare`` and the benchmarks score them).
    """

    train_windows: List[Tuple[int, np.ndarray]]
    validation_segments: List[Segment]
    test_segments: List[Segment] = field(default_factory=list)

    @staticmethod
    def describe_segments(episodes: Sequence[CachedEpisode],
                          segments: Sequence[Segment]) -> List[Dict[str, object]]:
        """Return segments as JSON-able dicts (episode folder, start, stop) for metadata."""
        return [{'episode': episodes[segment.episode_index].name,
                 'start': segment.start, 'stop': segment.stop} for segment in segments]


def assign_roles(lengths: Sequence[int], start_times: Sequence[float], mode: str,
                 validation_fraction: float, test_fraction: float = 0.0,
                 seed: int = 0, validation_blocks: int = 1,
                 min_block: int = 1) -> List[np.ndarray]:
    """Return one role array per episode: TRAIN, VALIDATION or TEST for every frame.

    - ``time``: in recording order, the last ``test_fraction`` of all frames is TEST and
      the ``validation_fraction`` before it VALIDATION, so both are later parts of the drive.
      With ``validation_blocks`` N > 1 the frames before the test part are cut into N
      equal sections and the validation frames are the end of each section, so early
      stopping scores N stretches from all over the drive instead of one.
    - ``episode_end``: the same, inside every episode.
    - ``episode``: whole episodes, chosen with ``seed``; needs one more episode than parts.

    With more than one block, each validation stretch must have at least ``min_block`` frames.
    """
    roles = [np.full(length, TRAIN, np.int8) for length in lengths]
    total = sum(lengths)

    def mark_end(order: Sequence[int], test_count: int, validation_count: int) -> None:
        # Frames of the episodes in ``order``, one after another, are numbered 0..n-1.
        offsets = np.cumsum([0] + [lengths[index] for index in order])
        before_test = int(offsets[-1]) - test_count
        marks = [(TEST, before_test, int(offsets[-1]))]
        for block in range(validation_blocks):
            end = int(round(before_test * (block + 1) / validation_blocks))
            count = (validation_count * (block + 1) // validation_blocks
                     - validation_count * block // validation_blocks)
            if validation_blocks > 1 and 0 < validation_count and count < min_block:
                raise DataError(
                    f'validation_blocks={validation_blocks} makes validation stretches of '
                    f'{count} frames, fewer than {min_block}; lower validation_blocks or '
                    'raise validation_fraction')
            marks.append((VALIDATION, max(end - count, 0), end))
        for role, start, stop in marks:
            for position, index in enumerate(order):
                first = max(start, int(offsets[position]))
                last = min(stop, int(offsets[position + 1]))
                if first < last:
                    roles[index][first - offsets[position]:last - offsets[position]] = role

    if mode == 'time':
        mark_end(sorted(range(len(lengths)), key=lambda i: start_times[i]),
                 int(round(total * test_fraction)), int(round(total * validation_fraction)))
    elif mode == 'episode_end':
        for index, length in enumerate(lengths):
            mark_end([index], int(round(length * test_fraction)),
                     int(round(length * validation_fraction)))
    elif mode == 'episode':
        if validation_blocks != 1:
            raise DataError(f'validation_blocks={validation_blocks} needs split=time or '
                            'split=episode_end; split=episode holds out whole episodes')
        parts = 2 if test_fraction > 0 else 1
        if len(lengths) < parts + 1:
            raise DataError(f'split=episode needs at least {parts + 1} episodes here; use '
                            'split=time for a single recording')
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(lengths))]
        for role, fraction in ((TEST, test_fraction), (VALIDATION, validation_fraction)):
            held_out = 0
            while order and held_out < fraction * total and len(order) > 1:
                index = order.pop()
                roles[index][:] = role
                held_out += lengths[index]
    else:
        raise DataError(f'split mode {mode!r} is unknown; use time, episode_end or episode')
    return roles


def _runs(cached: CachedEpisode, index: int, selected: np.ndarray,
          max_gap_s: float) -> List[Segment]:
    """Return the runs of selected frames of one episode, broken at time gaps."""
    breaks = set(int(i) for i in segment_starts(cached.timestamps, max_gap_s))
    segments, start = [], None
    for frame in range(len(selected) + 1):
        inside = frame < len(selected) and bool(selected[frame])
        if start is not None and (not inside or frame in breaks):
            if frame - start >= 2:
                segments.append(Segment(index, start, frame))
            start = None
        if inside and start is None:
            start = frame
    return segments


def _near(held_out: np.ndarray, distance: int) -> np.ndarray:
    """Return, for every frame, whether a held-out frame lies within ``distance`` frames."""
    counts = np.concatenate([[0], np.cumsum(held_out.astype(np.int64))])
    frames = np.arange(len(held_out))
    first = np.maximum(frames - distance, 0)
    last = np.minimum(frames + distance + 1, len(held_out))
    return counts[last] - counts[first] > 0


def split_episodes(episodes: Sequence[CachedEpisode], mode: str, validation_fraction: float,
                   sequence_length: int, stride: int, max_gap_s: float, seed: int = 0,
                   test_fraction: float = 0.0, validation_blocks: int = 1) -> Split:
    """Split episodes into training windows, validation segments and test segments.

    See ``assign_roles`` for the modes. A training window never contains a validation or
    test frame, and stays at least ``sequence_length`` frames away from one on both sides,
    so no training window contains the direct neighbours of the frames it is scored on.
    """
    roles = assign_roles([len(cached) for cached in episodes],
                         [float(cached.timestamps[0]) for cached in episodes], mode,
                         validation_fraction, test_fraction, seed, validation_blocks,
                         min_block=sequence_length)
    train_windows = []
    validation_segments, test_segments = [], []
    for index, cached in enumerate(episodes):
        role = roles[index]
        trainable = (role == TRAIN) & ~_near(role != TRAIN, sequence_length)
        for window in cached.episode.windows(sequence_length, stride, max_gap_s):
            window = np.asarray(window, np.int64)
            if trainable[window].all() and cached.valid[window].any():
                train_windows.append((index, window))
        validation_segments += _runs(cached, index, role == VALIDATION, max_gap_s)
        test_segments += _runs(cached, index, role == TEST, max_gap_s)

    if not train_windows:
        labelled = sum(int(np.count_nonzero(cached.valid)) for cached in episodes)
        if labelled == 0:
            raise DataError(
                f'no frame of the data ({sum(len(e) for e in episodes)} frames) has a valid '
                'command label, so there is nothing to train on; check the rows.csv valid '
                'column or the command topic of the import')
        settings = 'sequence_length, validation_fraction'
        if validation_blocks > 1:
            # No training window comes within one window length of a stretch, on either side.
            settings += f', validation_blocks ({validation_blocks})'
        raise DataError(
            f'no training windows of {sequence_length} frames fit the data '
            f'({sum(len(e) for e in episodes)} frames); record more, or lower '
            f'{settings} or test_fraction')
    if validation_fraction > 0 and not validation_segments:
        raise DataError(f'the validation part of validation_fraction={validation_fraction} '
                        'is empty; raise validation_fraction, or set it to 0 to train for a '
                        'fixed number of epochs without validation')
    return Split(train_windows, validation_segments, test_segments)


def mirror_signs(outputs: Sequence[str]) -> np.ndarray:
    """Return the factor (+1 or -1) of each output when the scene is mirrored left to right.

    Mirroring across the robot's x-z plane turns a left turn into a right turn, so
    ``angular_z`` changes sign; ``linear_x`` keeps it.
    """
    unknown = [name for name in outputs if name not in MIRRORED_COMMANDS]
    if unknown:
        raise ConfigError(f'cannot mirror output(s) {unknown}: only {sorted(MIRRORED_COMMANDS)} '
                          'have a known mirror image; set augment.mirror_probability to 0')
    return np.array([MIRRORED_COMMANDS[name] for name in outputs], np.float32)


def collate(episodes: Sequence[CachedEpisode], chosen: Sequence[Tuple[int, np.ndarray]],
            rng: Optional[np.random.Generator],
            augmentation: Optional[Augmentation],
            output_signs: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Stack windows into one batch, augmenting each sequence when ``augmentation`` is set.

    A mirrored sequence has its targets multiplied by ``output_signs`` (from
    ``mirror_signs``, needed when the augmentation mirrors) and its IMU readings by
    ``IMU_MIRROR_SIGNS``.
    """
    frames, dts, targets, masks, imus = [], [], [], [], []
    for episode_index, window in chosen:
        cached = episodes[episode_index]
        sequence = cached.frames[window].astype(np.float32) / np.float32(255.0)
        dt, target, mask, imu = window_labels(cached, window)
        if augmentation is not None:
            if augmentation.draws_mirror(rng):
                if output_signs is None:
                    raise ValueError('collate needs output_signs to mirror a sequence')
                sequence = mirror(sequence)
                target = target * output_signs
                imu = imu * IMU_MIRROR_SIGNS if imu is not None else None
            sequence = augmentation.apply(sequence, rng)
        frames.append(sequence)
        dts.append(dt)
        targets.append(target)
        masks.append(mask)
        if imu is not None:
            imus.append(imu)
    return {
        'frames': np.stack(frames),
        'dt': np.stack(dts),
        'targets': np.stack(targets),
        'mask': np.stack(masks),
        'imu': np.stack(imus) if imus else None,
    }


def with_burn_in(episodes: Sequence[CachedEpisode], chosen: Sequence[Tuple[int, np.ndarray]],
                 frames: int) -> Tuple[List[Tuple[int, np.ndarray]], np.ndarray]:
    """Put the ``frames`` frames before each window in front of it.

    Returns the longer windows and, per window, whether those frames exist: they must
    follow each other without a time gap, in the window's run. A window without them gets
    copies of its first frame instead, and its state must start from rest.
    """
    longer, complete = [], np.zeros(len(chosen), bool)
    for position, (episode_index, window) in enumerate(chosen):
        window = np.asarray(window, np.int64)
        first = int(window[0])
        if first - frames >= int(episodes[episode_index].run_start[first]):
            complete[position] = True
            before = np.arange(first - frames, first, dtype=np.int64)
        else:
            before = np.full(frames, first, np.int64)
        longer.append((episode_index, np.concatenate([before, window])))
    return longer, complete


def window_labels(cached: CachedEpisode, window: np.ndarray):
    """Return the time deltas, targets (missing ones as 0), validity and IMU of a window.

    The IMU readings are None when the episode was cached without them.
    """
    imu = cached.imu[window] if cached.imu is not None else None
    return (cached.dt[window], np.nan_to_num(cached.targets[window]), cached.valid[window],
            imu)


def segment_arrays(cached: CachedEpisode, segment: Segment) -> Dict[str, np.ndarray]:
    """Return one validation segment as a batch of one sequence (no augmentation)."""
    window = np.arange(segment.start, segment.stop)
    return collate([cached], [(0, window)], None, None)


class EpisodeSlice:
    """Read-only view of frames ``[start, stop)`` of an episode, with the Episode interface.

    It lets the evaluation code score exactly the validation or test part of a recording,
    without copying it. ``folder`` names the source episode and the range.
    """

    def __init__(self, episode, start: int, stop: int):
        if not 0 <= start < stop <= len(episode):
            raise DataError(f'frame range [{start}, {stop}) is outside episode '
                            f'{episode_name(episode)} of {len(episode)} frames')
        self.episode = episode
        self.start = int(start)
        self.stop = int(stop)
        self.folder = f'{episode_name(episode)}[{start}:{stop}]'
        self.metadata = getattr(episode, 'metadata', {})
        self.timestamps = np.asarray(episode.timestamps)[start:stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f'EpisodeSlice({self.folder!r})'

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: the frame has a usable command."""
        return np.asarray(self.episode.valid)[self.start:self.stop]

    @property
    def has_imu(self) -> bool:
        """Whether any frame of the slice has an IMU reading."""
        return bool(getattr(self.episode, 'has_imu', False)) and bool(
            np.isfinite(self.imu).any())

    @property
    def imu(self) -> np.ndarray:
        """IMU readings (N, 6) float32, NaN where missing."""
        return np.asarray(self.episode.imu)[self.start:self.stop]

    def command(self, name: str) -> np.ndarray:
        """Return one command field of the slice, (N,) float32, NaN where missing."""
        return np.asarray(self.episode.command(name))[self.start:self.stop]

    def load_frame(self, index: int) -> np.ndarray:
        """Decode frame ``index`` of the slice into an ``(H, W, 3)`` uint8 RGB array."""
        if not 0 <= index < len(self):
            raise IndexError(f'frame {index} is outside {self.folder}')
        return self.episode.load_frame(self.start + index)


def segment_slices(episodes: Sequence[CachedEpisode],
                   segments: Sequence[Segment]) -> Tuple[List[EpisodeSlice], List[np.ndarray]]:
    """Return one ``EpisodeSlice`` per segment and its cached uint8 ``(N, 3, H, W)`` frames."""
    slices, frames = [], []
    for segment in segments:
        cached = episodes[segment.episode_index]
        slices.append(EpisodeSlice(cached.episode, segment.start, segment.stop))
        frames.append(cached.frames[segment.start:segment.stop])
    return slices, frames
