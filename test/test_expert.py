"""The pure pursuit expert and its steering noise, without ROS."""

import math

import numpy as np
import pytest

from liquid_control.sim.car_racing import CarRacingSim
from liquid_control.sim.expert import ExpertConfig, PurePursuitExpert, SteeringNoise
from liquid_control.sim.track import Track


def _straight_then_circle() -> Track:
    """A 200 m straight along +x, then a left half circle of radius 20 m, closed."""
    straight = np.stack([np.arange(0.0, 200.0, 2.0), np.zeros(100)], axis=1)
    angles = np.linspace(-math.pi / 2, math.pi / 2, 32)
    turn = np.stack([200.0 + 20.0 * np.cos(angles), 20.0 + 20.0 * np.sin(angles)], axis=1)
    back = np.stack([np.arange(198.0, 0.0, -2.0), np.full(99, 40.0)], axis=1)
    return Track(np.concatenate([straight, turn, back]))


def test_expert_on_centre_line_goes_straight():
    expert = PurePursuitExpert(_straight_then_circle())
    linear_x, angular_z = expert.command(20.0, 0.0, 0.0, speed=10.0)
    assert linear_x > 0.0
    assert angular_z == pytest.approx(0.0, abs=1e-9)


def test_expert_right_of_line_turns_left():
    expert = PurePursuitExpert(_straight_then_circle())
    _, angular_z = expert.command(20.0, -3.0, 0.0, speed=10.0)
    assert angular_z > 0.0


def test_expert_left_of_line_turns_right():
    expert = PurePursuitExpert(_straight_then_circle())
    _, angular_z = expert.command(20.0, 3.0, 0.0, speed=10.0)
    assert angular_z < 0.0


def test_expert_slows_before_corner():
    config = ExpertConfig(max_speed=60.0, max_lateral_accel=20.0, max_braking=20.0,
                          preview_distance=100.0)
    expert = PurePursuitExpert(_straight_then_circle(), config)
    far, _ = expert.command(20.0, 0.0, 0.0, speed=30.0)
    expert.reset()
    near, _ = expert.command(190.0, 0.0, 0.0, speed=30.0)
    corner_speed = math.sqrt(20.0 * 20.0)  # sqrt(a_lat * radius)
    # 10 m before the corner: sqrt(20^2 + 2 * 20 * 10) = 28.3 m/s, a little more because
    # the curvature smoothing softens the entry.
    assert far == pytest.approx(60.0)
    assert near < 35.0
    assert near >= corner_speed - 1.0


def test_expert_speed_stays_within_limits():
    config = ExpertConfig(min_speed=12.0, max_speed=30.0)
    expert = PurePursuitExpert(_straight_then_circle(), config)
    for x in np.arange(0.0, 200.0, 10.0):
        linear_x, _ = expert.command(x, 0.0, 0.0, speed=20.0)
        assert 12.0 <= linear_x <= 30.0


@pytest.mark.parametrize('settings', [{'max_speed': -1.0}, {'min_speed': 70.0},
                                      {'lookahead_min': 30.0}, {'curvature_smoothing': -1}])
def test_expert_config_rejects_invalid(settings):
    with pytest.raises(ValueError):
        ExpertConfig(**settings)


def test_expert_drives_a_lap_in_the_simulator():
    sim = CarRacingSim(seed=5)
    try:
        expert = PurePursuitExpert(sim.track)
        steps_off_track = 0
        while not sim.done and sim.steps < 2000:
            pose = sim.pose()
            sim.step_twist(*expert.command(pose.x, pose.y, pose.yaw, sim.forward_speed))
            steps_off_track += sim.off_track
        status = sim.status()
    finally:
        sim.close()
    assert status.lap_finished
    assert status.tiles_visited == status.tiles_total
    assert status.score > 850.0
    assert steps_off_track == 0


def test_noise_zero_std_is_zero():
    noise = SteeringNoise(0.0, 0.5)
    assert all(noise.sample(t) == 0.0 for t in np.arange(0.0, 1.0, 0.02))


def test_noise_has_configured_std_and_correlation():
    noise = SteeringNoise(10.0, 0.5, seed=1)
    samples = np.array([noise.sample(t) for t in np.arange(0.0, 2000.0, 0.02)])
    assert samples.std() == pytest.approx(10.0, rel=0.1)
    lag_one = np.corrcoef(samples[:-1], samples[1:])[0, 1]
    assert lag_one == pytest.approx(math.exp(-0.02 / 0.5), abs=0.02)


def test_noise_curvature_scales_with_inverse_speed_squared():
    fast = SteeringNoise(10.0, 0.5, seed=2)
    slow = SteeringNoise(10.0, 0.5, seed=2)
    fast.sample(0.0)
    slow.sample(0.0)
    assert fast.curvature(0.02, 40.0) * 16 == pytest.approx(slow.curvature(0.02, 10.0))


def test_noise_reset_restarts_sequence():
    noise = SteeringNoise(5.0, 0.5, seed=3)
    noise.sample(0.0)
    noise.sample(0.02)
    noise.reset()
    assert noise.sample(10.0) == pytest.approx(0.0)
