"""Regression metrics of a policy's outputs against the human's commands.

Every function takes 1-D arrays of equal length. ``regression_metrics`` drops the frames
whose target is NaN (no human command was recorded) before scoring. Its result includes
the count of scored frames, so a reader can see how much data a number rests on.
``change_metrics`` measures how much a command moves from one frame to the next, which
an actuator feels as jitter and the accuracy metrics do not show.
"""

import math
from typing import Dict, Optional

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
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    if prediction.shape != target.shape:
        raise ValueError(f'prediction has {prediction.size} values but target has '
                         f'{target.size}; both must have one value a frame')

    scored = ~np.isnan(target)
    prediction = prediction[scored]
    target = target[scored]
    result = {
        'mae': math.nan, 'rmse': math.nan, 'r2': math.nan, 'pearson': math.nan,
        'baseline_mae': math.nan,
        'scored_frames': int(scored.sum()),
        'unscored_frames': int((~scored).sum()),
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


def change_metrics(prediction: np.ndarray, target: np.ndarray,
                   segment: np.ndarray) -> Dict[str, float]:
    """Compute the mean absolute change of a command between consecutive frames.

    ``mean_abs_change`` is the policy's, over every pair of consecutive frames in one
    segment (a replay that the state carries through). ``target_mean_abs_change`` is the
    human's, over the pairs whose two targets are not NaN. Both are NaN without such pairs.
    """
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    segment = np.asarray(segment).reshape(-1)
    if not prediction.shape == target.shape == segment.shape:
        raise ValueError(f'prediction, target and segment have {prediction.size}, '
                         f'{target.size} and {segment.size} values, but each needs one '
                         'value per frame')
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
