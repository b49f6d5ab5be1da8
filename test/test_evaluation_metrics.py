"""Metrics, perturbations and SSIM of the evaluation, checked against independent numbers."""

import math

import numpy as np
import pytest
from scipy import stats

from liquid_control.errors import ConfigError
from liquid_control.evaluation.metrics import (MAX_LAG_FRAMES, _shifted_pairs, change_metrics,
                                               describe_lag, error_by_magnitude,
                                               regression_metrics, spread_metrics,
                                               timing_metrics)
from liquid_control.evaluation.perturbations import (
    DEFAULT_PERTURBATIONS, parse_perturbation, parse_perturbations)
from liquid_control.evaluation.ssim import mean_ssim, ssim
from liquid_control.evaluation.verdict import output_warnings


def test_metrics_match_hand_computed_values():
    prediction = np.array([0.0, 1.0, 2.0, 4.0])
    target = np.array([0.0, 2.0, 2.0, 2.0])
    result = regression_metrics(prediction, target, baseline_value=1.0)
    assert result['mae'] == pytest.approx(0.75)
    assert result['rmse'] == pytest.approx(math.sqrt(5 / 4))
    # SS_res = 0 + 1 + 0 + 4 = 5, SS_tot = 2.25 + 0.25 * 3 = 3
    assert result['r2'] == pytest.approx(1 - 5 / 3)
    assert result['pearson'] == pytest.approx(stats.pearsonr(prediction, target)[0])
    assert result['baseline_mae'] == pytest.approx((1 + 1 + 1 + 1) / 4)
    assert result['scored_frames'] == 4
    assert result['unscored_frames'] == 0


def test_metrics_skip_frames_without_target():
    prediction = np.array([5.0, 1.0, 2.0, 3.0])
    target = np.array([np.nan, 1.0, 2.0, 4.0])
    result = regression_metrics(prediction, target)
    assert result['scored_frames'] == 3
    assert result['unscored_frames'] == 1
    assert result['mae'] == pytest.approx(1 / 3)
    assert math.isnan(result['baseline_mae'])


def test_metrics_of_constant_target_are_nan():
    result = regression_metrics(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.5, 0.5]), 0.5)
    assert math.isnan(result['r2'])
    assert math.isnan(result['pearson'])
    assert result['baseline_mae'] == 0.0


def test_metrics_with_no_scored_frame_are_nan():
    result = regression_metrics(np.zeros(3), np.full(3, np.nan), 0.0)
    assert result['scored_frames'] == 0
    assert math.isnan(result['mae'])


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match='one value a frame'):
        regression_metrics(np.zeros(3), np.zeros(4))


def test_metrics_reject_non_finite_predictions():
    with pytest.raises(ValueError, match='not finite'):
        regression_metrics(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))


def test_spread_compares_ranges():
    prediction = np.array([-0.5, 0.0, 0.5, 9.0, 0.2])
    target = np.array([-1.0, 0.0, 1.0, np.nan, 0.4])
    result = spread_metrics(prediction, target)
    # The frame without a target (prediction 9.0) does not count.
    assert result['prediction_min'] == -0.5
    assert result['prediction_max'] == 0.5
    assert result['target_min'] == -1.0
    assert result['target_max'] == 1.0
    assert result['prediction_std'] == pytest.approx(np.std([-0.5, 0.0, 0.5, 0.2]))
    assert result['target_std'] == pytest.approx(np.std([-1.0, 0.0, 1.0, 0.4]))
    # -1 and 1 lie beyond the policy's [-0.5, 0.5].
    assert result['frames_beyond_prediction_range'] == 2


def test_spread_without_targets_is_nan():
    result = spread_metrics(np.zeros(3), np.full(3, np.nan))
    assert math.isnan(result['prediction_std'])
    assert result['frames_beyond_prediction_range'] == 0


def test_error_by_magnitude_bins():
    target = np.array([0.0, 0.05, -0.3, 0.6, -1.0, np.nan])
    prediction = np.array([0.1, 0.05, -0.1, 0.3, -0.5, 5.0])
    groups = {group['bin']: group for group in error_by_magnitude(prediction, target)}
    assert list(groups) == ['near zero', 'moderate', 'large']
    # |target| / 1.0: 0 and 0.05 are near zero, 0.3 moderate, 0.6 and 1.0 (the edge) large.
    assert groups['near zero']['frames'] == 2
    assert groups['near zero']['mae'] == pytest.approx(0.05)
    assert groups['moderate']['frames'] == 1
    assert groups['moderate']['mae'] == pytest.approx(0.2)
    assert groups['large']['frames'] == 2
    assert groups['large']['mae'] == pytest.approx((0.3 + 0.5) / 2)
    assert groups['large']['mean_abs_target'] == pytest.approx(0.8)
    assert groups['large']['mean_abs_prediction'] == pytest.approx(0.4)
    assert groups['moderate']['low'] == pytest.approx(0.1)
    assert groups['moderate']['high'] == pytest.approx(0.5)


def test_magnitude_bins_scale_to_largest():
    groups = error_by_magnitude(np.zeros(3), np.array([0.2, 1.0, 2.0]))
    assert [group['frames'] for group in groups] == [0, 1, 2]
    assert groups[2]['low'] == pytest.approx(1.0)
    assert math.isnan(groups[0]['mae'])


def test_error_by_magnitude_of_zero_targets_is_empty():
    assert error_by_magnitude(np.ones(3), np.zeros(3)) == []


def _checked(prediction, target, baseline=0.0):
    """Return the warnings on the metrics of a prediction, as the pipeline computes them."""
    values = regression_metrics(prediction, target, baseline)
    values.update(spread_metrics(prediction, target))
    return {warning['check']: warning for warning in output_warnings('angular_z', values)}


def test_warning_for_reversed_sign():
    target = np.sin(np.linspace(0, 6, 200))
    warnings = _checked(-0.8 * target, target)
    assert 'reversed_sign' in warnings
    assert '--angular-scale' in warnings['reversed_sign']['message']


def test_warning_for_mae_near_baseline():
    target = np.sin(np.linspace(0, 6, 200))
    # A weak copy of the human's command: MAE 0.97 of the constant 0's.
    warnings = _checked(0.03 * target, target)
    assert 'near_baseline' in warnings
    assert '0.970 of the constant' in warnings['near_baseline']['message']


def test_near_baseline_warning_names_overshoot():
    target = np.sin(np.linspace(0, 6, 200))
    # Follows the human exactly (r 1) but twice as far: MAE equals the constant 0's.
    warnings = _checked(2.0 * target, target)
    message = warnings['near_baseline']['message']
    assert 'Its Pearson r is 1.000, so it does follow the human' in message
    assert 'too large or offset' in message


def test_warning_for_flat_output():
    target = np.sin(np.linspace(0, 6, 200))
    warnings = _checked(0.05 * target + 0.3, target, baseline=0.3)
    assert 'flat_output' in warnings


def test_warning_for_one_sided_short_range():
    target = np.sin(np.linspace(0, 6, 200))
    values = regression_metrics(np.clip(target, -1.0, 0.5), target, 0.0)
    values.update(spread_metrics(np.clip(target, -1.0, 0.5), target))
    warnings = [w for w in output_warnings('angular_z', values) if w['check'] == 'short_range']
    assert len(warnings) == 1
    assert 'never commands past +0.5 while the human reached +1' in warnings[0]['message']
    assert "largest positive command" in warnings[0]['message']


def test_no_warning_for_good_policy():
    target = np.sin(np.linspace(0, 6, 200))
    assert _checked(0.8 * target, target) == {}


def test_change_stays_inside_segments():
    prediction = np.array([0.0, 1.0, 3.0, 10.0, 10.5])
    target = np.array([0.0, 0.5, np.nan, 4.0, 4.0])
    segment = np.array([0, 0, 0, 1, 1])
    result = change_metrics(prediction, target, segment)
    # Pairs (0, 1), (1, 2) and (3, 4): the jump from 3 to 10 is a new segment.
    assert result['mean_abs_change'] == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    # The human's pairs with a NaN are left out: (0, 1) and (3, 4).
    assert result['target_mean_abs_change'] == pytest.approx((0.5 + 0.0) / 2)


def test_change_without_pairs_is_nan():
    result = change_metrics(np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.array([0, 1]))
    assert math.isnan(result['mean_abs_change'])
    assert math.isnan(result['target_mean_abs_change'])


def _late_copy(target, segment, delay):
    """The target delayed by ``delay`` frames inside each segment, as a slow policy."""
    late = target.copy()
    for name in np.unique(segment):
        index = np.flatnonzero(segment == name)
        late[index[delay:]] = target[index[:-delay]]
        late[index[:delay]] = target[index[0]]
    return late


def test_timing_finds_known_delay():
    rng = np.random.default_rng(0)
    target = np.cumsum(rng.normal(size=400))
    segment = np.repeat([0, 1], 200)
    late = _late_copy(target, segment, 3)
    result = timing_metrics(late, target, segment, frame_period_s=0.05)
    assert result['lag_frames'] == 3
    assert result['lag_s'] == pytest.approx(0.15)
    assert result['pearson_at_lag'] == pytest.approx(1.0)
    # A policy ahead of the human gets a negative lag.
    early = timing_metrics(target, late, segment, frame_period_s=0.05)
    assert early['lag_frames'] == -3


def test_describe_lag_cases():
    base = {'pearson_at_lag': 0.8, 'pearson_fast': 0.4}
    late = describe_lag({**base, 'lag_frames': 3, 'lag_s': 0.15})
    assert late.startswith('lag behind the human 150 ms (r 0.800 there)')
    assert late.endswith('r of fast changes 0.400')
    early = describe_lag({**base, 'lag_frames': -2, 'lag_s': -0.1})
    assert early.startswith('ahead of the human by 100 ms')
    # A best shift at the search limit is not reported as a lag.
    edge = describe_lag({**base, 'lag_frames': -MAX_LAG_FRAMES, 'lag_s': -0.5})
    assert edge.startswith(f'no clear lag within {MAX_LAG_FRAMES} frames')
    assert 'ms' not in edge


def test_timing_pairs_stay_inside_segments():
    values = np.arange(12.0)
    segment = np.repeat([0, 1], 6)
    late, early = _shifted_pairs(values, values, segment, 2)
    assert late.size == 8   # 4 pairs in each segment of 6 frames
    assert np.all(late - early == 2)
    assert np.all((late < 6) == (early < 6))


def test_timing_fast_r_catches_smoothing():
    time = np.arange(600) * 0.05
    slow = np.sin(2 * np.pi * time / 10.0)            # a 10 s turn
    jerks = 0.3 * np.sign(np.sin(2 * np.pi * time / 0.4))   # 0.4 s corrections
    target = slow + jerks
    segment = np.zeros(600, dtype=int)
    smooth = timing_metrics(slow, target, segment, frame_period_s=0.05)
    exact = timing_metrics(target, target, segment, frame_period_s=0.05)
    assert exact['pearson_fast'] == pytest.approx(1.0)
    assert abs(smooth['pearson_fast']) < 0.2
    # Over the whole signal the smooth policy still correlates well.
    assert regression_metrics(slow, target)['pearson'] > 0.8


def test_timing_skips_nan_and_short_segments():
    rng = np.random.default_rng(1)
    target = np.cumsum(rng.normal(size=300))
    prediction = target + rng.normal(scale=0.1, size=300)
    with_gaps = target.copy()
    with_gaps[100:110] = np.nan
    segment = np.zeros(300, dtype=int)
    result = timing_metrics(prediction, with_gaps, segment, frame_period_s=0.05)
    assert result['lag_frames'] == 0
    assert np.isfinite(result['pearson_fast'])
    # Segments shorter than the one-second window give no fast part.
    short = timing_metrics(prediction[:15], target[:15], np.zeros(15), frame_period_s=0.05)
    assert short['lag_frames'] == 0
    assert math.isnan(short['pearson_fast'])
    # Two frames are too few for any r.
    pair = timing_metrics(prediction[:2], target[:2], np.zeros(2), frame_period_s=0.05)
    assert all(math.isnan(value) for value in pair.values())


def test_timing_rejects_bad_input():
    values = np.zeros(5)
    with pytest.raises(ValueError, match='4 and 5'):
        timing_metrics(values, values[:4], values, frame_period_s=0.05)
    with pytest.raises(ValueError, match='frame_period_s=0'):
        timing_metrics(values, values, values, frame_period_s=0.0)


def test_change_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match='one value per frame'):
        change_metrics(np.zeros(3), np.zeros(3), np.zeros(2))


def test_noise_has_requested_variance():
    images = np.full((64, 3, 40, 50), 0.5, dtype=np.float32)
    for variance in (0.01, 0.02):
        noisy = parse_perturbation(f'noise:{variance}').apply(images, np.random.default_rng(0))
        # Clipping at 0 and 1 is rare at these variances, so the variance survives.
        assert float(np.var(noisy - images)) == pytest.approx(variance, rel=0.05)
        assert abs(float(np.mean(noisy - images))) < 0.002


def test_noise_output_stays_in_unit_range():
    images = np.random.default_rng(1).random((4, 3, 20, 30)).astype(np.float32)
    noisy = parse_perturbation('noise:0.3').apply(images, np.random.default_rng(0))
    assert noisy.dtype == np.float32
    assert noisy.min() >= 0.0
    assert noisy.max() <= 1.0


def test_noise_is_reproducible_with_seed():
    images = np.full((2, 3, 8, 8), 0.5, dtype=np.float32)
    noise = parse_perturbation('noise:0.1')
    first = noise.apply(images, np.random.default_rng(7))
    second = noise.apply(images, np.random.default_rng(7))
    np.testing.assert_array_equal(first, second)


def test_brightness_shifts_and_clips():
    images = np.array([0.0, 0.5, 0.9], dtype=np.float32).reshape(1, 3, 1, 1)
    brighter = parse_perturbation('brightness:+0.2').apply(images, np.random.default_rng())
    np.testing.assert_allclose(brighter.ravel(), [0.2, 0.7, 1.0], atol=1e-6)
    darker = parse_perturbation('brightness:-0.2').apply(images, np.random.default_rng())
    np.testing.assert_allclose(darker.ravel(), [0.0, 0.3, 0.7], atol=1e-6)


def test_blur_spreads_point_keeps_mass():
    images = np.zeros((1, 3, 31, 31), dtype=np.float32)
    images[0, :, 15, 15] = 1.0
    blurred = parse_perturbation('blur:2').apply(images, np.random.default_rng())
    assert blurred[0, 0, 15, 15] < 0.1
    assert blurred[0, 0, 15, 17] > 0.0
    assert float(blurred[0, 0].sum()) == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(blurred[0, 0], blurred[0, 0].T, atol=1e-6)


def test_noise_description_gives_std():
    described = parse_perturbation('noise:0.1').describe()
    assert 'variance 0.1' in described
    assert 'standard deviation 0.32' in described


def test_default_perturbations_parse_to_their_names():
    names = [perturbation.name for perturbation in parse_perturbations(DEFAULT_PERTURBATIONS)]
    assert names == list(DEFAULT_PERTURBATIONS)


@pytest.mark.parametrize('name, message', [
    ('noise', 'KIND:VALUE'),
    ('fog:0.1', 'KIND:VALUE'),
    ('noise:abc', 'not a number'),
    ('noise:0', 'variance'),
    ('noise:nan', 'finite'),
    ('brightness:2', 'brightness'),
    ('blur:-1', 'sigma'),
])
def test_perturbation_rejects_invalid_names(name, message):
    with pytest.raises(ConfigError, match=message):
        parse_perturbation(name)


def test_perturbations_reject_duplicates():
    with pytest.raises(ConfigError, match='more than once'):
        parse_perturbations(['noise:0.1', 'noise:0.10'])


def _reference_ssim(first: np.ndarray, second: np.ndarray) -> float:
    """SSIM with scipy's Gaussian filter (11-pixel support, reflected borders)."""
    from scipy.ndimage import gaussian_filter

    def local_mean(image):
        return gaussian_filter(image, 1.5, truncate=3.5, mode='mirror')

    mean_first, mean_second = local_mean(first), local_mean(second)
    variance_first = local_mean(first * first) - mean_first ** 2
    variance_second = local_mean(second * second) - mean_second ** 2
    covariance = local_mean(first * second) - mean_first * mean_second
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float(np.mean((2 * mean_first * mean_second + c1) * (2 * covariance + c2) /
                         ((mean_first ** 2 + mean_second ** 2 + c1) *
                          (variance_first + variance_second + c2))))


def test_ssim_matches_reference_implementation():
    rng = np.random.default_rng(0)
    first = rng.random((66, 200))
    second = np.clip(first + rng.normal(0, 0.1, first.shape), 0, 1)
    assert ssim(first, second) == pytest.approx(_reference_ssim(first, second), abs=1e-6)


def test_ssim_orders_by_similarity():
    rng = np.random.default_rng(0)
    image = rng.random((40, 60))
    slightly = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)
    strongly = np.clip(image + rng.normal(0, 0.3, image.shape), 0, 1)
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(image, slightly) > ssim(image, strongly)
    assert mean_ssim(np.stack([image, image]), np.stack([image, slightly])) < 1.0


def test_ssim_rejects_shape_mismatch():
    with pytest.raises(ValueError, match='one shape'):
        ssim(np.zeros((4, 4)), np.zeros((4, 5)))
