"""Pure helpers of the policy node: limits, watchdog, timing, parameters, message checks."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from liquid_control.data.images import encode_jpeg
from liquid_control.errors import ConfigError, DataError
from liquid_control.nodes.control import (ElapsedTime, InputWatchdog, Mode, OutputLimiter,
                                          RateMeter, SampleWindow, StepWorker,
                                          WarningThrottle, missed_periods)
from liquid_control.nodes.messages import (compressed_msg_to_rgb, image_msg_to_rgb,
                                           imu_msg_to_array, stamp_to_seconds)
from liquid_control.nodes.params import SPECS, PolicyNodeParams, check_value


# OutputLimiter

def test_limiter_clamps_each_channel():
    limiter = OutputLimiter([0.5, 1.0], [0.0, 0.0])
    np.testing.assert_allclose(limiter.apply([2.0, -3.0], 0.05), [0.5, -1.0])
    np.testing.assert_allclose(limiter.apply([0.1, 0.2], 0.05), [0.1, 0.2])


def test_limiter_slew_rate_ramps_up():
    limiter = OutputLimiter([10.0, 10.0], [1.0, 0.0])  # 1 m/s^2, angular unlimited
    first = limiter.apply([1.0, 5.0], 0.1)
    np.testing.assert_allclose(first, [0.1, 5.0])
    second = limiter.apply([1.0, 5.0], 0.1)
    np.testing.assert_allclose(second, [0.2, 5.0])


def test_limiter_slew_rate_ramps_down():
    limiter = OutputLimiter([10.0, 10.0], [2.0, 2.0])
    limiter.reset([1.0, -1.0])
    np.testing.assert_allclose(limiter.apply([0.0, 0.0], 0.25), [0.5, -0.5])


def test_limiter_reset_restarts_from_zero():
    limiter = OutputLimiter([10.0, 10.0], [1.0, 1.0])
    limiter.reset([3.0, 3.0])
    limiter.reset()
    np.testing.assert_allclose(limiter.apply([3.0, 3.0], 1.0), [1.0, 1.0])


def test_limiter_negative_dt_holds_command():
    limiter = OutputLimiter([10.0, 10.0], [1.0, 1.0])
    np.testing.assert_allclose(limiter.apply([3.0, 3.0], -1.0), [0.0, 0.0])


def test_limiter_lowered_limit_beats_slew():
    limiter = OutputLimiter([0.5, 1.0], [0.1, 0.1])
    limiter.reset([0.5, -1.0])
    limiter.set_limits([0.1, 0.0], [0.1, 0.1])
    np.testing.assert_allclose(limiter.apply([0.5, -1.0], 0.05), [0.1, 0.0])


def test_limiter_rejects_wrong_limit_count():
    limiter = OutputLimiter([1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError):
        limiter.set_limits([1.0], [0.0, 0.0])


# ElapsedTime and missed_periods

def test_elapsed_time_first_step_has_none():
    elapsed = ElapsedTime()
    assert elapsed.update(10.0) == (None, False)
    dt, went_back = elapsed.update(10.05)
    assert dt == pytest.approx(0.05)
    assert went_back is False


def test_elapsed_time_detects_clock_going_back():
    elapsed = ElapsedTime()
    elapsed.update(10.0)
    assert elapsed.update(3.0) == (None, True)
    dt, went_back = elapsed.update(3.1)
    assert dt == pytest.approx(0.1)
    assert went_back is False


@pytest.mark.parametrize('elapsed, expected', [
    (0.05, 0), (0.07, 0), (0.08, 1), (0.10, 1), (0.20, 3), (0.0, 0), (-1.0, 0)])
def test_missed_periods_at_20_hz(elapsed, expected):
    assert missed_periods(elapsed, 0.05) == expected


# InputWatchdog

def _watchdog(imu_required=True, continue_without_imu=False) -> InputWatchdog:
    return InputWatchdog(input_timeout=0.25, imu_timeout=0.1, imu_required=imu_required,
                         continue_without_imu=continue_without_imu)


@pytest.mark.parametrize('enabled, camera, imu, expected', [
    (False, 9.9, 9.95, Mode.DISABLED),
    (True, None, 9.95, Mode.WAITING_FOR_CAMERA),
    (True, 9.7, 9.95, Mode.CAMERA_STALE),
    (True, 9.9, None, Mode.WAITING_FOR_IMU),
    (True, 9.9, 9.8, Mode.IMU_STALE),
    (True, 9.9, 9.95, Mode.RUNNING),
    (True, 10.5, 9.95, Mode.CAMERA_STALE),  # received "after" now: the clock went back
])
def test_watchdog_modes_at_time_10(enabled, camera, imu, expected):
    assert _watchdog().evaluate(10.0, enabled, camera, imu) is expected


def test_watchdog_continues_without_stale_imu():
    watchdog = _watchdog(continue_without_imu=True)
    assert watchdog.evaluate(10.0, True, 9.9, 9.0) is Mode.RUNNING_WITHOUT_IMU


def test_watchdog_ignores_imu_when_not_required():
    assert _watchdog(imu_required=False).evaluate(10.0, True, 9.9, None) is Mode.RUNNING


def test_watchdog_camera_age_boundary_is_fresh():
    assert _watchdog().evaluate(10.0, True, 9.75, 9.95) is Mode.RUNNING


def test_watchdog_update_reports_transitions_once():
    watchdog = _watchdog()
    assert watchdog.update(Mode.WAITING_FOR_CAMERA) is None
    assert watchdog.update(Mode.RUNNING) is Mode.WAITING_FOR_CAMERA
    assert watchdog.update(Mode.RUNNING) is None
    assert watchdog.update(Mode.CAMERA_STALE) is Mode.RUNNING


def test_modes_running_policy():
    running = {mode for mode in Mode if mode.runs_policy}
    assert running == {Mode.RUNNING, Mode.RUNNING_WITHOUT_IMU}


# SampleWindow and RateMeter

def test_sample_window_percentiles():
    window = SampleWindow(size=100)
    for value in range(1, 101):
        window.add(value)
    assert window.percentile(50) == pytest.approx(50.5)
    assert window.percentile(99) == pytest.approx(99.01)


def test_sample_window_keeps_newest():
    window = SampleWindow(size=3)
    for value in (100.0, 1.0, 2.0, 3.0):
        window.add(value)
    assert len(window) == 3
    assert window.total == 4
    assert window.percentile(100) == 3.0


def test_sample_window_empty_is_nan():
    assert math.isnan(SampleWindow().percentile(50))


def test_rate_meter_20_hz():
    meter = RateMeter(size=50)
    for index in range(50):
        meter.add(index * 0.05)
    assert meter.rate() == pytest.approx(20.0)


def test_rate_meter_restarts_when_time_goes_back():
    meter = RateMeter()
    for index in range(10):
        meter.add(100 + index * 0.1)
    meter.add(1.0)
    assert meter.rate() == 0.0


# StepWorker

def test_worker_runs_offered_tick():
    import threading
    done = threading.Event()
    ticks = []
    worker = StepWorker(lambda tick: (ticks.append(tick), done.set()))
    assert worker.offer(1)
    assert done.wait(5.0)
    worker.stop()
    assert ticks == [1]
    assert not worker.alive()


def test_worker_skips_tick_while_busy():
    import threading
    release = threading.Event()
    started = threading.Event()
    ticks = []

    def step(tick):
        ticks.append(tick)
        started.set()
        release.wait(5.0)

    worker = StepWorker(step)
    assert worker.offer('first')
    assert started.wait(5.0)
    assert not worker.offer('second')
    release.set()
    worker.stop()
    assert ticks == ['first']


def test_worker_keeps_step_error():
    worker = StepWorker(lambda tick: 1 / 0)
    worker.offer(None)
    worker._thread.join(5.0)
    assert isinstance(worker.error, ZeroDivisionError)
    assert not worker.alive()
    assert not worker.offer(None)


# WarningThrottle

def test_throttle_suppresses_same_kind():
    throttle = WarningThrottle(period=2.0)
    assert throttle.check('frame has 10 bytes', 0.0) == 0
    assert throttle.check('frame has 12 bytes', 0.5) is None
    assert throttle.check('frame has 14 bytes', 1.0) is None
    assert throttle.check('frame has 16 bytes', 2.5) == 2


def test_throttle_logs_other_kind_at_once():
    throttle = WarningThrottle(period=2.0)
    assert throttle.check('frame has 10 bytes', 0.0) == 0
    assert throttle.check('unsupported encoding yuv422', 0.1) == 0


def test_throttle_negative_elapsed_logs():
    throttle = WarningThrottle(period=2.0)
    throttle.check('clock message 5', 10.0)
    assert throttle.check('clock message 6', 1.0) == 0


# Parameters

def test_params_defaults_validate():
    params = PolicyNodeParams.defaults()
    assert params.validate() is None
    assert params.control_period == pytest.approx(0.05)


def test_params_every_spec_has_description():
    for spec in SPECS:
        assert spec.description.endswith('.'), spec.name
        assert check_value(spec.name, spec.default) is None, spec.name


@pytest.mark.parametrize('name, value, fragment', [
    ('control_rate_hz', 0.0, "'control_rate_hz' must be at least"),
    ('control_rate_hz', float('nan'), 'NaN'),
    ('input_timeout', -1.0, "'input_timeout' must be at least"),
    ('max_linear_x', 1e9, "'max_linear_x' must be at most"),
    ('imu_stale_action', 'ignore', "'imu_stale_action' must be one of stop, continue"),
    ('twist_stamped', 'yes', "'twist_stamped' must be of type bool"),
    ('num_threads', 0, "'num_threads' must be at least"),
    ('no_such_parameter', 1, 'unknown parameter'),
])
def test_params_reject_invalid_value(name, value, fragment):
    with pytest.raises(ConfigError) as error:
        PolicyNodeParams.from_values({name: value})
    assert fragment in str(error.value)


def test_params_accept_int_for_float():
    assert PolicyNodeParams.from_values({'control_rate_hz': 30}).control_rate_hz == 30.0


def test_params_reject_empty_frame_id_when_stamped():
    with pytest.raises(ConfigError, match='frame_id'):
        PolicyNodeParams.from_values({'twist_stamped': True, 'frame_id': ' '})


def test_params_runtime_change_of_read_only_rejected():
    params, reason = PolicyNodeParams.defaults().with_changes({'compressed': True})
    assert params is None
    assert 'read-only' in reason


def test_params_runtime_change_applies():
    params, reason = PolicyNodeParams.defaults().with_changes({'max_linear_x': 2.0})
    assert reason is None
    assert params.max_linear_x == 2.0


# Message conversion (plain objects with the message fields)

def _image(encoding='rgb8', width=4, height=3, channels=3, step=None, data=None):
    step = width * channels if step is None else step
    data = bytes(range(step * height)) if data is None else data
    return SimpleNamespace(encoding=encoding, width=width, height=height, step=step,
                           data=data, is_bigendian=0)


def test_image_msg_rgb8_round_trip():
    rgb = image_msg_to_rgb(_image())
    assert rgb.shape == (3, 4, 3)
    assert rgb[0, 1].tolist() == [3, 4, 5]


def test_image_msg_bgr8_swaps_channels():
    rgb = image_msg_to_rgb(_image(encoding='bgr8'))
    assert rgb[0, 0].tolist() == [2, 1, 0]


def test_image_msg_data_too_short_rejected():
    with pytest.raises(DataError, match='step'):
        image_msg_to_rgb(_image(data=bytes(20)))


def test_image_msg_data_too_long_rejected():
    with pytest.raises(DataError, match='bytes'):
        image_msg_to_rgb(_image(data=bytes(40)))


def test_image_msg_step_shorter_than_row_rejected():
    with pytest.raises(DataError, match='invalid step'):
        image_msg_to_rgb(_image(encoding='rgb8', channels=1))


def test_image_msg_unknown_encoding_rejected():
    with pytest.raises(DataError, match='unsupported image encoding'):
        image_msg_to_rgb(_image(encoding='yuv422'))


def _compressed(data: bytes, format_name='jpeg'):
    return SimpleNamespace(format=format_name, data=data)


def test_compressed_jpeg_decodes():
    jpeg = encode_jpeg(np.full((48, 64, 3), 120, np.uint8))
    rgb = compressed_msg_to_rgb(_compressed(jpeg))
    assert rgb.shape == (48, 64, 3)


def test_compressed_truncated_jpeg_rejected():
    jpeg = encode_jpeg(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    with pytest.raises(DataError, match='truncated'):
        compressed_msg_to_rgb(_compressed(jpeg[:len(jpeg) // 2]))


def test_compressed_corrupt_jpeg_rejected():
    jpeg = encode_jpeg(np.full((48, 64, 3), 120, np.uint8))
    corrupt = jpeg[:2] + bytes(len(jpeg) - 4) + jpeg[-2:]
    with pytest.raises(DataError):
        compressed_msg_to_rgb(_compressed(corrupt))


def _png(rgb: np.ndarray) -> bytes:
    import cv2
    ok, encoded = cv2.imencode('.png', rgb)
    assert ok
    return encoded.tobytes()


def test_compressed_png_decodes():
    rgb = compressed_msg_to_rgb(_compressed(_png(np.full((10, 12, 3), 7, np.uint8)), 'png'))
    assert rgb.shape == (10, 12, 3)
    assert rgb[0, 0].tolist() == [7, 7, 7]


def test_compressed_truncated_png_rejected():
    png = _png(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
    with pytest.raises(DataError, match='no IEND'):
        compressed_msg_to_rgb(_compressed(png[:len(png) // 2], 'png'))


def test_compressed_unknown_codec_rejected():
    with pytest.raises(DataError, match='neither JPEG nor PNG'):
        compressed_msg_to_rgb(_compressed(b'GIF89a' + bytes(100), 'gif'))


def test_compressed_empty_rejected():
    with pytest.raises(DataError, match='empty'):
        compressed_msg_to_rgb(_compressed(b''))


def _imu(gyro=(0.1, 0.2, 0.3), accel=(0.0, 0.0, 9.81)):
    vector = lambda values: SimpleNamespace(x=values[0], y=values[1], z=values[2])  # noqa: E731
    return SimpleNamespace(angular_velocity=vector(gyro), linear_acceleration=vector(accel))


def test_imu_msg_order_gyro_then_accel():
    values = imu_msg_to_array(_imu())
    np.testing.assert_allclose(values, [0.1, 0.2, 0.3, 0.0, 0.0, 9.81], rtol=1e-6)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf'), 1e300])
def test_imu_msg_non_finite_rejected(bad):
    with pytest.raises(DataError, match='IMU'):
        imu_msg_to_array(_imu(accel=(0.0, bad, 9.81)))


def test_stamp_to_seconds():
    assert stamp_to_seconds(SimpleNamespace(sec=12, nanosec=500_000_000)) == 12.5
