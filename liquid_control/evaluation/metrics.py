"""Regression metrics of a policy's outputs against the human's commands.

Every function takes 1-D arrays of equal length. ``regression_metrics`` drops the frames
whose target is NaN (no human command was recorded) before scoring. Its result includes
the count of scored frames, so a reader can see how much data a number rests on.
``change_metrics`` measures how much a command moves from one frame to the next, which
an actuator feels as jitter and the accuracy metrics do not show. ``timing_metrics``
measures how late the policy follows the human and how well it follows the fast part of
the human's commands, which a smooth but late policy misses. ``spread_metrics`` and
``error_by_magnitude`` show where a policy falls short: a range narrower than the human's,
or large errors only on the frames where the human steered hard.
"""

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np


def mae(prediction: np.ndarray, target: np.ndarray) -> float:
    """Return the mean absolute error."""
    return float(np.mean(np.abs(prediction - target)))


def rmse(prediction: np.ndarray, target: np.ndarray) -> float:
    """Return the root mean squared error."""
    return float(np.sqrt(np.mean((prediction - target) ** 2)))


def r2(prediction: np.ndarray, target: np.ndarray) -> float:
    """Return the coefficient of determination, 1 - SS_res / SS_tot.

    It is negative when the prediction is worse than the target's own mean, and NaN when the
    target is constant (SS_tot = 0).
    """
    residual = float(np.sum((target - prediction) ** 2))
    total = float(np.sum((target - np.mean(target)) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - residual / total


def pearson(prediction: np.ndarray, target: np.ndarray) -> float:
    """Return Pearson's correlation coefficient, or NaN when either input is constant."""
    centered_prediction = prediction - np.mean(prediction)
    centered_target = target - np.mean(target)
    denominator = math.sqrt(float(np.sum(centered_prediction ** 2)) *
                            float(np.sum(centered_target ** 2)))
    if denominator == 0.0:
        return math.nan
    return float(np.sum(centered_prediction * centered_target)) / denominator


def regression_metrics(prediction: np.ndarray, target: np.ndarray,
                       baseline_value: Optional[float] = None) -> Dict[str, float]:
    """Score one output and return ``mae``, ``rmse``, ``r2``, ``pearson``, ``baseline_mae``.

    ``baseline_value`` is the constant predictor, normally the training mean of this output.
    When it is None, ``baseline_mae`` is NaN. The result also has ``scored_frames`` and
    ``unscored_frames`` (frames with a NaN target). With no scored frame, every metric is
    NaN. Predictions must be finite on scored frames.
    """
    frames = np.asarray(target).size
    prediction, target = _scored_pairs(prediction, target)
    result = {
        'mae': math.nan, 'rmse': math.nan, 'r2': math.nan, 'pearson': math.nan,
        'baseline_mae': math.nan,
        'scored_frames': int(target.size),
        'unscored_frames': int(frames - target.size),
    }
    if target.size == 0:
        return result
    if not np.all(np.isfinite(prediction)):
        raise ValueError(f'{int(np.sum(~np.isfinite(prediction)))} predictions are not finite')

    result['mae'] = mae(prediction, target)
    result['rmse'] = rmse(prediction, target)
    result['r2'] = r2(prediction, target)
    result['pearson'] = pearson(prediction, target)
    if baseline_value is not None:
        result['baseline_mae'] = mae(np.full_like(target, float(baseline_value)), target)
    return result


# Groups of ``error_by_magnitude``: (name, low, high) fractions of the largest absolute
# human command on the scored frames. For a steering command the largest is usually full
# lock, so the groups are about straight driving, moderate turns and hard turns.
MAGNITUDE_BINS = (('near zero', 0.0, 0.1), ('moderate', 0.1, 0.5), ('large', 0.5, 1.0))


def spread_metrics(prediction: np.ndarray, target: np.ndarray) -> Dict[str, float]:
    """Compare the spread and range of the policy's commands with the human's.

    Uses the frames whose target is not NaN. Returns the standard deviation, minimum and
    maximum of both (``prediction_std``, ``prediction_min``, ``prediction_max``,
    ``target_std``, ``target_min``, ``target_max``) and ``frames_beyond_prediction_range``:
    the frames whose human command lies outside [prediction_min, prediction_max], which the
    policy never reached. Without such frames every value is NaN and the count 0.
    """
    prediction, target = _scored_pairs(prediction, target)
    result = {key: math.nan for key in (
        'prediction_std', 'prediction_min', 'prediction_max',
        'target_std', 'target_min', 'target_max')}
    result['frames_beyond_prediction_range'] = 0
    if target.size == 0:
        return result
    low, high = float(prediction.min()), float(prediction.max())
    result.update(
        prediction_std=float(np.std(prediction)), prediction_min=low, prediction_max=high,
        target_std=float(np.std(target)), target_min=float(target.min()),
        target_max=float(target.max()),
        frames_beyond_prediction_range=int(np.count_nonzero((target < low) | (target > high))))
    return result


def error_by_magnitude(prediction: np.ndarray, target: np.ndarray,
                       bins: Sequence[Tuple[str, float, float]] = MAGNITUDE_BINS
                       ) -> List[Dict[str, object]]:
    """Score the frames in groups by the size of the human's command.

    ``bins`` are (name, low, high) fractions of the largest |target|. A frame belongs to the
    bin with low <= |target| / max |target| < high, and the last bin includes its upper
    edge. Each entry has ``bin`` (the name), ``low`` and ``high`` (the bounds of |target| in
    the output's unit), ``frames``, ``mae``, ``mean_abs_target`` and
    ``mean_abs_prediction``, which are NaN in an empty bin. Frames with a NaN target do not
    count. Returns [] without such frames or when every target is 0.
    """
    prediction, target = _scored_pairs(prediction, target)
    scale = float(np.max(np.abs(target))) if target.size else 0.0
    if scale == 0.0:
        return []
    size = np.abs(target) / scale
    groups = []
    for position, (name, low, high) in enumerate(bins):
        inside = (size >= low) & (size < high)
        if position == len(bins) - 1:
            inside |= size == high
        count = int(np.count_nonzero(inside))
        group = {'bin': name, 'low': low * scale, 'high': high * scale, 'frames': count,
                 'mae': math.nan, 'mean_abs_target': math.nan,
                 'mean_abs_prediction': math.nan}
        if count:
            group.update(mae=mae(prediction[inside], target[inside]),
                         mean_abs_target=float(np.mean(np.abs(target[inside]))),
                         mean_abs_prediction=float(np.mean(np.abs(prediction[inside]))))
        groups.append(group)
    return groups


def _scored_pairs(prediction, target) -> Tuple[np.ndarray, np.ndarray]:
    """Return (prediction, target) as flat float64 arrays without the NaN targets."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    if prediction.shape != target.shape:
        raise ValueError(f'prediction has {prediction.size} values but target has '
                         f'{target.size}; both must have one value a frame')
    scored = ~np.isnan(target)
    return prediction[scored], target[scored]


def _frame_columns(prediction, target, segment) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the three inputs as flat arrays, checking that each has one value a frame."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    segment = np.asarray(segment).reshape(-1)
    if not prediction.shape == target.shape == segment.shape:
        raise ValueError(f'prediction, target and segment have {prediction.size}, '
                         f'{target.size} and {segment.size} values, but each needs one '
                         'value per frame')
    return prediction, target, segment


def change_metrics(prediction: np.ndarray, target: np.ndarray,
                   segment: np.ndarray) -> Dict[str, float]:
    """Compute the mean absolute change of a command between consecutive frames.

    ``mean_abs_change`` is the policy's, over every pair of consecutive frames in one
    segment (a replay that the state carries through). ``target_mean_abs_change`` is the
    human's, over the pairs whose two targets are not NaN. Both are NaN without such pairs.
    """
    prediction, target, segment = _frame_columns(prediction, target, segment)
    same_segment = segment[1:] == segment[:-1]
    prediction_change = np.abs(np.diff(prediction))[same_segment]
    target_change = np.abs(np.diff(target))[same_segment]
    target_change = target_change[~np.isnan(target_change)]
    return {
        'mean_abs_change': float(np.mean(prediction_change)) if prediction_change.size
        else math.nan,
        'target_mean_abs_change': float(np.mean(target_change)) if target_change.size
        else math.nan,
    }


# Largest shift, in frames, that ``timing_metrics`` tries between policy and human.
MAX_LAG_FRAMES = 10


def timing_metrics(prediction: np.ndarray, target: np.ndarray, segment: np.ndarray,
                   frame_period_s: float, max_lag_frames: int = MAX_LAG_FRAMES,
                   fast_window_s: float = 1.0) -> Dict[str, float]:
    """Measure the policy's delay behind the human and its fit to fast changes.

    - ``lag_frames``: the shift L in -max_lag_frames..max_lag_frames that gives the highest
      Pearson r between the policy at frame i + L and the human at frame i, over pairs of
      frames in one segment. L > 0 means the policy acts L frames after the human. Of
      shifts with equal r, the one nearest 0 wins.
    - ``lag_s``: ``lag_frames`` times ``frame_period_s``.
    - ``pearson_at_lag``: the r at that shift.
    - ``pearson_fast``: Pearson r after subtracting from both signals their centred moving
      average over ``fast_window_s``, which leaves the changes faster than about that
      window. Frames whose window leaves the segment or contains a NaN target are left out.

    Frames with a NaN target do not count. Every value is NaN when too few frames remain.
    """
    prediction, target, segment = _frame_columns(prediction, target, segment)
    if not frame_period_s > 0:
        raise ValueError(f'frame_period_s={frame_period_s} is invalid: give the time '
                         'between frames in seconds, above 0')
    result = {'lag_frames': math.nan, 'lag_s': math.nan, 'pearson_at_lag': math.nan,
              'pearson_fast': math.nan}

    best = None
    for lag in sorted(range(-max_lag_frames, max_lag_frames + 1), key=abs):
        late, early = _shifted_pairs(prediction, target, segment, lag)
        if late.size < 3:
            continue
        r = pearson(late, early)
        if not math.isnan(r) and (best is None or r > best[1]):
            best = (lag, r)
    if best is not None:
        result.update(lag_frames=best[0], lag_s=best[0] * frame_period_s,
                      pearson_at_lag=best[1])

    window = max(1, int(round(fast_window_s / frame_period_s)) // 2 * 2 + 1)  # odd
    fast_prediction, fast_target = [], []
    for start, stop in _segment_bounds(segment):
        if stop - start < window:
            continue
        kernel = np.full(window, 1.0 / window)
        for signal, out in ((prediction, fast_prediction), (target, fast_target)):
            piece = signal[start:stop]
            trend = np.convolve(piece, kernel, mode='valid')
            margin = window // 2
            out.append(piece[margin:stop - start - margin] - trend)
    if fast_prediction:
        fast_prediction = np.concatenate(fast_prediction)
        fast_target = np.concatenate(fast_target)
        finite = np.isfinite(fast_target)
        if np.count_nonzero(finite) >= 3:
            result['pearson_fast'] = pearson(fast_prediction[finite], fast_target[finite])
    return result


def _shifted_pairs(prediction: np.ndarray, target: np.ndarray, segment: np.ndarray,
                   lag: int) -> Tuple[np.ndarray, np.ndarray]:
    """Return (prediction[i + lag], target[i]) for the i where both frames share a segment."""
    count = prediction.size
    first = max(0, -lag)
    last = count - max(0, lag)
    if last <= first:
        return np.empty(0), np.empty(0)
    index = np.arange(first, last)
    late, early = prediction[index + lag], target[index]
    paired = (segment[index + lag] == segment[index]) & np.isfinite(early)
    return late[paired], early[paired]


def _segment_bounds(segment: np.ndarray) -> Iterator[Tuple[int, int]]:
    """Yield (start, stop) of each run of equal segment numbers."""
    changes = np.flatnonzero(segment[1:] != segment[:-1]) + 1
    starts = np.concatenate([[0], changes])
    stops = np.concatenate([changes, [segment.size]])
    for start, stop in zip(starts, stops):
        yield int(start), int(stop)


def describe_lag(values: Dict[str, float], max_lag_frames: int = MAX_LAG_FRAMES) -> str:
    """Return one line on the lag and fast-change fit in ``values`` (from ``timing_metrics``).

    A best shift at the edge of the search is no real peak, so the line reports that instead
    of giving it as the lag.
    """
    if abs(values['lag_frames']) >= max_lag_frames:
        lag = (f'no clear lag within {max_lag_frames} frames either way (the best r, '
               f'{values["pearson_at_lag"]:.3f}, is at the limit of the search)')
    elif values['lag_s'] >= 0:
        lag = (f'lag behind the human {1000 * values["lag_s"]:.0f} ms (r '
               f'{values["pearson_at_lag"]:.3f} there)')
    else:
        lag = (f'ahead of the human by {-1000 * values["lag_s"]:.0f} ms (r '
               f'{values["pearson_at_lag"]:.3f} there)')
    return f'{lag}, r of fast changes {values["pearson_fast"]:.3f}'
