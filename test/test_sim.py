"""The simulator wrapper, the cmd_vel mapping, camera perturbations and track geometry."""

import math

import numpy as np
import pytest

from liquid_control.sim.car_racing import STANDARD_GRAVITY, CarRacingSim
from liquid_control.sim.commands import (MAX_WHEEL_ANGLE_RAD, WHEELBASE_M, CommandMapping,
                                         stale_action, twist_to_action, wheel_angle_for_twist)
from liquid_control.sim.perturbations import CameraPerturbation
from liquid_control.sim.track import Track


@pytest.fixture(scope='module')
def sim():
    simulator = CarRacingSim(seed=7)
    yield simulator
    simulator.close()


def _circle(radius: float, count: int = 200, clockwise: bool = False) -> Track:
    angles = np.linspace(0.0, 2.0 * math.pi, count, endpoint=False)
    if clockwise:
        angles = -angles
    return Track(np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1))


# cmd_vel mapping

def test_twist_straight_below_target_speed_opens_throttle():
    steer, gas, brake = twist_to_action(20.0, 0.0, forward_speed=10.0)
    assert steer == 0.0
    assert gas == pytest.approx(1.0)
    assert brake == 0.0


def test_twist_above_target_speed_brakes():
    steer, gas, brake = twist_to_action(10.0, 0.0, forward_speed=30.0)
    assert gas == 0.0
    assert brake == pytest.approx(0.8)


def test_twist_within_deadband_coasts():
    _, gas, brake = twist_to_action(10.0, 0.0, forward_speed=10.5)
    assert gas == 0.0
    assert brake == 0.0


def test_twist_left_turn_steers_left():
    steer, _, _ = twist_to_action(10.0, 1.0, forward_speed=10.0)
    # CarRacing's steer is -1 for full left.
    assert steer < 0.0
    assert steer == pytest.approx(-math.atan(WHEELBASE_M * 1.0 / 10.0), rel=1e-5)


def test_twist_wheel_angle_is_clipped():
    assert wheel_angle_for_twist(1.0, 50.0) == pytest.approx(MAX_WHEEL_ANGLE_RAD)
    assert wheel_angle_for_twist(1.0, -50.0) == pytest.approx(-MAX_WHEEL_ANGLE_RAD)


def test_twist_zero_speed_uses_min_speed():
    angle = wheel_angle_for_twist(0.0, 0.1, CommandMapping(min_speed=2.0))
    assert angle == pytest.approx(math.atan(WHEELBASE_M * 0.1 / 2.0))


def test_twist_negative_speed_stops_the_car():
    _, gas, brake = twist_to_action(-5.0, 0.0, forward_speed=0.0)
    assert gas == 0.0
    assert brake == pytest.approx(0.8)


@pytest.mark.parametrize('command', [(math.nan, 0.0), (1.0, math.inf)])
def test_twist_non_finite_brakes(command):
    action = twist_to_action(*command, forward_speed=5.0)
    assert np.array_equal(action, stale_action())


@pytest.mark.parametrize('settings', [{'gas_gain': 0.0}, {'max_brake': 1.5},
                                      {'brake_deadband': -1.0}, {'wheelbase': -3.0}])
def test_command_mapping_rejects_invalid(settings):
    with pytest.raises(ValueError):
        CommandMapping(**settings)


# Camera perturbations

def test_perturbation_inactive_returns_frame():
    frame = np.full((4, 4, 3), 100, np.uint8)
    result = CameraPerturbation().apply(frame, np.random.default_rng(0))
    assert result is frame


def test_perturbation_color_shift_offsets_channels():
    frame = np.full((4, 4, 3), 100, np.uint8)
    shifted = CameraPerturbation(color_shift=(0.1, 0.0, -0.2)).apply(
        frame, np.random.default_rng(0))
    assert shifted[0, 0].tolist() == [126, 100, 49]


def test_perturbation_noise_has_configured_std():
    frame = np.full((200, 200, 3), 128, np.uint8)
    noisy = CameraPerturbation(noise_std=0.05).apply(frame, np.random.default_rng(0))
    assert noisy.dtype == np.uint8
    assert noisy.astype(np.float64).std() == pytest.approx(0.05 * 255, rel=0.05)


@pytest.mark.parametrize('settings', [{'noise_std': -0.1}, {'noise_std': 1.5},
                                      {'color_shift': (0.1, 0.2)},
                                      {'color_shift': (2.0, 0.0, 0.0)}])
def test_perturbation_rejects_invalid(settings):
    with pytest.raises(ValueError):
        CameraPerturbation(**settings)


# Track geometry

def test_track_circle_length_and_curvature():
    track = _circle(50.0)
    assert track.length == pytest.approx(2.0 * math.pi * 50.0, rel=1e-3)
    assert np.allclose(track.curvature, 1.0 / 50.0, rtol=1e-3)


def test_track_clockwise_curvature_is_negative():
    assert np.allclose(_circle(50.0, clockwise=True).curvature, -1.0 / 50.0, rtol=1e-3)


def test_track_point_ahead_wraps_around():
    track = Track(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]))
    assert np.allclose(track.point_ahead(3, 5.0), [0.0, 5.0])
    assert np.allclose(track.point_ahead(0, 45.0), [5.0, 0.0])


def test_track_nearest_index_with_and_without_hint():
    track = _circle(50.0)
    position = track.points[37] * 1.05
    assert track.nearest_index(position) == 37
    assert track.nearest_index(position, hint=30) == 37


def test_track_rejects_too_few_points():
    with pytest.raises(ValueError):
        Track(np.zeros((2, 2)))


# Simulator

def test_sim_frame_is_96_by_96_rgb(sim):
    frame = sim.reset(7)
    assert frame.shape == (96, 96, 3)
    assert frame.dtype == np.uint8


def test_sim_same_seed_same_track(sim):
    sim.reset(7)
    first = sim.track.points.copy()
    sim.reset(8)
    other = sim.track.points.copy()
    sim.reset(7)
    assert np.array_equal(sim.track.points, first)
    assert other.shape != first.shape or not np.allclose(other, first)


def test_sim_starts_on_track_facing_along_it(sim):
    sim.reset(7)
    pose = sim.pose()
    direction = sim.track.points[5] - sim.track.points[0]
    heading = np.array([math.cos(pose.yaw), math.sin(pose.yaw)])
    assert np.dot(direction / np.linalg.norm(direction), heading) > 0.9
    assert not sim.off_track


def test_sim_throttle_accelerates_forward(sim):
    sim.reset(7)
    for _ in range(50):
        sim.step_twist(60.0, 0.0)
    imu = sim.imu()
    assert sim.forward_speed > 10.0
    assert imu[3] > 1.0  # forward acceleration
    assert imu[5] == pytest.approx(STANDARD_GRAVITY)
    assert sim.sim_time == pytest.approx(1.0)


def test_sim_left_command_turns_counter_clockwise(sim):
    sim.reset(7)
    for _ in range(40):
        sim.step_twist(15.0, 0.0)
    start_yaw = sim.pose().yaw
    for _ in range(15):
        sim.step_twist(15.0, 3.0)
    assert sim.yaw_rate > 0.5
    assert sim.imu()[2] == pytest.approx(sim.yaw_rate)
    turned = (sim.pose().yaw - start_yaw + math.pi) % (2 * math.pi) - math.pi
    assert turned > 0.2


def test_sim_stale_command_brakes_to_stop(sim):
    sim.reset(7)
    for _ in range(50):
        sim.step_twist(30.0, 0.0)
    assert sim.forward_speed > 10.0
    for _ in range(100):
        sim.step_stale()
    assert abs(sim.forward_speed) < 0.5


def test_sim_status_counts_tiles_and_score(sim):
    sim.reset(7)
    for _ in range(100):
        sim.step_twist(20.0, 0.0)
    status = sim.status()
    assert status.steps == 100
    assert status.tiles_visited > 5
    assert status.tiles_total == len(sim.track)
    expected = status.tiles_visited * 1000.0 / status.tiles_total - 0.1 * 100
    assert status.score == pytest.approx(expected, abs=1e-6)
    assert not status.done
    assert set(status.to_dict()) >= {'score', 'tiles_visited', 'off_track', 'done'}


def test_sim_driving_straight_leaves_the_road(sim):
    sim.reset(7)
    left_road = False
    for _ in range(600):
        sim.step_twist(40.0, 0.0)
        if sim.off_track:
            left_road = True
            break
    assert left_road


def test_sim_resizes_and_perturbs_frames():
    simulator = CarRacingSim(seed=3, image_size=(48, 64),
                             perturbation=CameraPerturbation(color_shift=(1.0, 1.0, 1.0)))
    try:
        frame = simulator.step_twist(0.0, 0.0)
        assert frame.shape == (48, 64, 3)
        assert np.all(frame == 255)
    finally:
        simulator.close()


def test_sim_rejects_tiny_image():
    with pytest.raises(ValueError):
        CarRacingSim(image_size=(4, 4))
