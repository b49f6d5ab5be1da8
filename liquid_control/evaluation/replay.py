"""Replay recorded episodes through a stateful policy and score it against the human.

Frames run in recorded order with their true time deltas, as the policy node would run
them. The state resets at the start of each episode and after every gap, which is a time
step longer than ``max_gap_s`` or not positive. The first frame after a reset gets the
episode's median frame interval as its time delta, the same rule training uses.

For speed, each run of frames between resets goes through ``Policy.forward`` in chunks of
batch 1, with the state carried from chunk to chunk. This gives the same outputs as one
``step`` a frame.
"""

import contextlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import DataError
from liquid_control.evaluation.metrics import (change_metrics, regression_metrics,
                                               timing_metrics)
from liquid_control.evaluation.perturbations import Perturbation

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_GAP_S = 0.5
DEFAULT_CHUNK_LENGTH = 32
FALLBACK_FRAME_INTERVAL_S = 0.05


@dataclass
class EvaluationResult:
    """Per-frame predictions and targets of one replay, with their metrics.

    Arrays have one row per frame of all episodes, concatenated in replay order.
    ``timestamps`` (N,) are seconds as recorded. ``episode_index`` (N,) and
    ``segment_index`` (N,) number the episodes and the segments, which are runs of frames
    between state resets. ``predictions`` and ``targets`` (N, O) are in the outputs'
    physical units, with NaN targets where no human command was recorded. ``scored``
    (N, O) bool marks a valid frame with that output's target present. ``metrics`` maps
    each output name to ``regression_metrics`` of its scored frames, ``change_metrics``
    of its segments and, when a segment has two frames, ``timing_metrics``.
    """

    output_names: Tuple[str, ...]
    output_units: Tuple[str, ...]
    perturbation: Optional[str]
    timestamps: np.ndarray
    episode_index: np.ndarray
    segment_index: np.ndarray
    predictions: np.ndarray
    targets: np.ndarray
    scored: np.ndarray
    metrics: Dict[str, Dict[str, float]]
    duration_s: float
    eval_seconds: float
    baseline: Dict[str, Optional[float]] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        """Number of frames replayed, scored or not."""
        return int(len(self.timestamps))

    @property
    def segments(self) -> int:
        """Number of runs of frames between state resets."""
        return int(len(np.unique(self.segment_index))) if self.frames else 0

    @property
    def realtime_factor(self) -> float:
        """Recorded duration divided by the wall-clock time of the replay."""
        if self.eval_seconds <= 0:
            return math.inf
        return self.duration_s / self.eval_seconds

    def output(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """Return (prediction, target) arrays (N,) of one output, by name."""
        index = self.output_names.index(name)
        return self.predictions[:, index], self.targets[:, index]

    def summary(self) -> Dict[str, object]:
        """Return the metrics and run statistics as a JSON-compatible dict."""
        summary: Dict[str, object] = {name: dict(values) for name, values in self.metrics.items()}
        summary.update({
            'frames': self.frames,
            'scored_frames': int(np.any(self.scored, axis=1).sum()),
            'unscored_frames': int((~np.any(self.scored, axis=1)).sum()),
            'segments': self.segments,
            'duration_s': self.duration_s,
            'eval_seconds': self.eval_seconds,
            'realtime_factor': self.realtime_factor,
        })
        return summary


def segment_starts(timestamps: np.ndarray, max_gap_s: float) -> np.ndarray:
    """Return the indices where the state resets: 0 and every frame after a gap."""
    deltas = np.diff(np.asarray(timestamps, dtype=np.float64))
    breaks = np.nonzero((deltas > max_gap_s) | (deltas <= 0))[0] + 1
    return np.concatenate([[0], breaks]).astype(np.int64)


def frame_intervals(timestamps: np.ndarray, max_gap_s: float) -> np.ndarray:
    """Return each frame's time delta in seconds (N,) float32.

    A frame that starts a segment gets the median positive interval of the episode, gaps
    included, as in training.
    """
    timestamps = np.asarray(timestamps, dtype=np.float64)
    deltas = np.diff(timestamps)
    positive = deltas[deltas > 0]
    nominal = float(np.median(positive)) if len(positive) else FALLBACK_FRAME_INTERVAL_S
    dt = np.full(len(timestamps), nominal, dtype=np.float64)
    if len(timestamps) > 1:
        dt[1:] = deltas
    dt[segment_starts(timestamps, max_gap_s)] = nominal
    return dt.astype(np.float32)


def load_frames(episode, preprocessing: Preprocessing, workers: int = 2) -> np.ndarray:
    """Decode, crop and resize every frame of an episode to uint8 ``(N, 3, h, w)``.

    Dividing the result by 255 gives exactly ``Preprocessing.apply`` of each frame, so
    frames can be kept at a quarter of the float size and reused across replays. Frames
    decode in ``workers`` threads (OpenCV releases the GIL while decoding).
    """
    count = len(episode)
    frames = np.empty((count, 3, preprocessing.height, preprocessing.width), np.uint8)

    def load(index: int) -> None:
        frames[index] = preprocessing.resize(episode.load_frame(index)).transpose(2, 0, 1)

    if workers <= 1 or count < 64:
        for index in range(count):
            load(index)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # list() re-raises the first error of any frame.
            list(pool.map(load, range(count), chunksize=32))
    return frames


class FramePrefetcher:
    """The episodes' frames from ``load_frames``, decoded in a background thread.

    Indexing returns an episode's frames, waiting for them if needed, so a replay can run
    on episode k while episode k + 1 decodes. It can be passed as ``frames`` to
    ``evaluate_episodes``. Call ``close()`` (or use it as a context manager) when done.
    """

    def __init__(self, episodes: Sequence, preprocessing: Preprocessing):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='frame-decoder')
        self._futures = [self._pool.submit(load_frames, episode, preprocessing, 1)
                         for episode in episodes]

    def __len__(self) -> int:
        return len(self._futures)

    def __getitem__(self, index: int) -> np.ndarray:
        return self._futures[index].result()

    def close(self) -> None:
        """Stop decoding episodes that have not started and wait for the running one."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> 'FramePrefetcher':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _targets(episode, output_names: Sequence[str]) -> np.ndarray:
    columns = []
    for name in output_names:
        try:
            columns.append(np.asarray(episode.command(name), dtype=np.float32))
        except (DataError, KeyError, ValueError) as error:
            raise DataError(f'episode {_episode_name(episode)} has no command {name!r} for '
                            f'the policy output of that name: {error}') from error
    return np.stack(columns, axis=1)


def episode_imu(episode, count: int) -> np.ndarray:
    """Return the episode's IMU (N, 6) with gaps filled by the last reading (zeros first)."""
    if not getattr(episode, 'has_imu', False):
        raise DataError(f'the policy needs IMU readings but episode {_episode_name(episode)} '
                        'has none; evaluate it with a policy trained without IMU')
    imu = np.array(episode.imu, dtype=np.float32).reshape(count, 6)
    last = np.zeros(6, dtype=np.float32)
    for index in range(count):
        missing = np.isnan(imu[index])
        imu[index, missing] = last[missing]
        last = imu[index]
    return imu


def _episode_name(episode) -> str:
    folder = getattr(episode, 'folder', None) or getattr(episode, 'path', None)
    return str(folder) if folder is not None else repr(episode)


def _baseline_values(baseline: Optional[Mapping[str, float]],
                     output_names: Sequence[str]) -> Dict[str, Optional[float]]:
    values: Dict[str, Optional[float]] = {}
    for name in output_names:
        value = None if baseline is None else baseline.get(name)
        values[name] = None if value is None else float(value)
    return values


@contextlib.contextmanager
def channels_last(policy):
    """Store the policy's conv weights channels-last for the duration of the block.

    Outputs stay the same to about 1e-6. With one thread, the default encoder on 48x96
    input took 0.38 instead of 0.62 ms of CPU a frame in batches of 32 (torch 2.13,
    2-core x86 machine). The weights return to the default layout afterwards.
    """
    policy.to(memory_format=torch.channels_last)
    try:
        yield policy
    finally:
        policy.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def _replay_segment(policy, frames: np.ndarray, imu: Optional[np.ndarray], dt: np.ndarray,
                    chunk_length: int, perturbation: Optional[Perturbation],
                    rng: np.random.Generator) -> np.ndarray:
    """Run one segment from a fresh state and return its outputs (T, O)."""
    outputs = []
    state = None
    for start in range(0, len(frames), chunk_length):
        stop = min(start + chunk_length, len(frames))
        chunk = frames[start:stop].astype(np.float32) / np.float32(255.0)
        if perturbation is not None:
            chunk = perturbation.apply(chunk, rng)
        frames_tensor = torch.from_numpy(chunk).unsqueeze(0)           # (1, T, 3, H, W)
        imu_tensor = None if imu is None else torch.from_numpy(imu[start:stop]).unsqueeze(0)
        dt_tensor = torch.from_numpy(dt[start:stop]).unsqueeze(0)        # (1, T)
        chunk_outputs, state = policy(frames_tensor, imu_tensor, dt_tensor, state)
        outputs.append(chunk_outputs[0].numpy())                        # (T, O)
    return np.concatenate(outputs, axis=0)


def evaluate_episodes(policy, episodes: Sequence, perturbation: Optional[Perturbation] = None,
                      *, baseline: Optional[Mapping[str, float]] = None,
                      frames: Optional[Sequence[np.ndarray]] = None,
                      max_gap_s: float = DEFAULT_MAX_GAP_S,
                      chunk_length: int = DEFAULT_CHUNK_LENGTH, seed: int = 0,
                      workers: int = 2) -> EvaluationResult:
    """Replay episodes through ``policy`` and score each output against the human.

    ``perturbation`` alters every preprocessed frame before it enters the policy. Its noise
    comes from a generator seeded with ``seed``. ``baseline`` maps output names to the
    constant predictor's value, normally the checkpoint's ``training_output_mean``.
    ``frames`` are the episodes' frames from ``load_frames``, to skip decoding on repeated
    replays. Without them, decoding is part of ``eval_seconds``.

    An output is scored on the frames that the episode marks valid and that have a human
    command for it. Unscored frames still run through the policy, as on the robot.
    """
    if chunk_length < 1:
        raise ValueError(f'chunk_length={chunk_length} is invalid: use 1 or more frames')
    if frames is not None and len(frames) != len(episodes):
        raise ValueError(f'got frames for {len(frames)} episodes but {len(episodes)} episodes')
    output_names = tuple(policy.output_names)
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    use_imu = bool(getattr(policy.config, 'imu_enabled', False))
    rng = np.random.default_rng(seed)
    was_training = policy.training
    policy.eval()

    columns: Dict[str, List[np.ndarray]] = {key: [] for key in (
        'timestamps', 'episode', 'segment', 'predictions', 'targets', 'scored')}
    duration = 0.0
    segment_count = 0
    started = time.perf_counter()
    try:
        with channels_last(policy):
            for episode_number, episode in enumerate(episodes):
                count = len(episode)
                if count == 0:
                    LOGGER.warning('episode %s has no frames; skipped', _episode_name(episode))
                    continue
                timestamps = np.asarray(episode.timestamps, dtype=np.float64)
                targets = _targets(episode, output_names)
                valid = np.asarray(episode.valid, dtype=bool).reshape(count, 1)
                scored = valid & np.isfinite(targets)
                imu = episode_imu(episode, count) if use_imu else None
                episode_frames = (frames[episode_number] if frames is not None
                                  else load_frames(episode, preprocessing, workers))
                if len(episode_frames) != count:
                    raise ValueError(f'got {len(episode_frames)} frames for episode '
                                     f'{_episode_name(episode)} of {count} frames')
                dt = frame_intervals(timestamps, max_gap_s)
                duration += float(np.sum(dt, dtype=np.float64))

                predictions = np.empty((count, len(output_names)), dtype=np.float32)
                segment = np.empty(count, dtype=np.int64)
                bounds = list(segment_starts(timestamps, max_gap_s)) + [count]
                for start, stop in zip(bounds[:-1], bounds[1:]):
                    predictions[start:stop] = _replay_segment(
                        policy, episode_frames[start:stop],
                        None if imu is None else imu[start:stop], dt[start:stop],
                        chunk_length, perturbation, rng)
                    segment[start:stop] = segment_count
                    segment_count += 1

                columns['timestamps'].append(timestamps)
                columns['episode'].append(np.full(count, episode_number, dtype=np.int64))
                columns['segment'].append(segment)
                columns['predictions'].append(predictions)
                columns['targets'].append(targets)
                columns['scored'].append(scored)
    finally:
        policy.train(was_training)
    elapsed = time.perf_counter() - started

    if not columns['timestamps']:
        raise DataError('no frames to evaluate: every episode is empty')
    predictions = np.concatenate(columns['predictions'])
    targets = np.concatenate(columns['targets'])
    scored = np.concatenate(columns['scored'])
    segments = np.concatenate(columns['segment'])
    baseline_values = _baseline_values(baseline, output_names)
    timestamps = np.concatenate(columns['timestamps'])
    frame_period = _frame_period(timestamps, segments)
    metrics = {}
    for index, name in enumerate(output_names):
        masked_target = np.where(scored[:, index], targets[:, index], np.nan)
        metrics[name] = regression_metrics(predictions[:, index], masked_target,
                                           baseline_values[name])
        metrics[name].update(change_metrics(predictions[:, index], masked_target, segments))
        if frame_period is not None:
            metrics[name].update(timing_metrics(predictions[:, index], masked_target,
                                                segments, frame_period))
    return EvaluationResult(
        output_names=output_names,
        output_units=tuple(getattr(policy, 'output_units', ('',) * len(output_names))),
        perturbation=None if perturbation is None else perturbation.name,
        timestamps=timestamps,
        episode_index=np.concatenate(columns['episode']),
        segment_index=segments,
        predictions=predictions, targets=targets, scored=scored, metrics=metrics,
        duration_s=duration, eval_seconds=elapsed, baseline=baseline_values)


def _frame_period(timestamps: np.ndarray, segments: np.ndarray) -> Optional[float]:
    """Return the median interval between consecutive frames of one segment.

    Returns None when no segment has two frames.
    """
    steps = np.diff(timestamps)[segments[1:] == segments[:-1]]
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else None


@torch.no_grad()
def trace_neurons(policy, frames: np.ndarray, dt: np.ndarray,
                  imu: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Step the policy one frame at a time and return (neuron states (T, N), outputs (T, O)).

    ``frames`` are uint8 ``(T, 3, h, w)`` from ``load_frames`` and ``dt`` (T,) seconds. The
    run starts from a fresh state. It costs one Python call a frame, so use it on a window,
    not on a whole recording.
    """
    was_training = policy.training
    policy.eval()
    states = []
    outputs = []
    state = None
    try:
        for index in range(len(frames)):
            frame = torch.from_numpy(frames[index:index + 1].astype(np.float32) / 255.0)
            imu_row = None if imu is None else torch.from_numpy(imu[index:index + 1])
            dt_row = torch.from_numpy(np.asarray(dt[index:index + 1], dtype=np.float32))
            output, state = policy.step(frame, imu_row, dt_row, state)
            outputs.append(output[0].numpy())
            states.append(policy.neuron_states(state)[0].numpy())
    finally:
        policy.train(was_training)
    return np.stack(states), np.stack(outputs)
