"""PolicyRunner over real checkpoints, and the node's reaction to non-finite policy output."""

import numpy as np
import pytest
import torch

from liquid_control.errors import CheckpointError
from liquid_control.inference import load_runner
from node_harness import NodeProcess, Peer, is_zero, make_checkpoint, node_command

FRAME = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
IMU = np.array([0.0, 0.0, 0.2, 0.1, 0.0, 9.81], np.float32)


@pytest.fixture(scope='module')
def imu_model(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('model') / 'imu.lcm', imu_enabled=True)


@pytest.fixture(scope='module')
def cropped_model(tmp_path_factory):
    preprocessing = {'crop_top': 0.25, 'crop_bottom': 0.0, 'crop_left': 0.0,
                     'crop_right': 0.0, 'height': 48, 'width': 64}
    return make_checkpoint(tmp_path_factory.mktemp('model') / 'crop.lcm', imu_enabled=False,
                           preprocessing=preprocessing)


@pytest.fixture(scope='module')
def nan_model(tmp_path_factory):
    """Return a checkpoint whose last parameter is near the float32 limit, so every output
    overflows to NaN. (The loader rejects weights that are already infinite.)"""
    from liquid_control.model.checkpoint import save_checkpoint
    from liquid_control.model.policy import PolicyConfig, build_policy

    policy = build_policy(PolicyConfig(imu_enabled=False))
    name, parameter = list(policy.named_parameters())[-1]
    with torch.no_grad():
        parameter.fill_(3e38)
    path = tmp_path_factory.mktemp('model') / 'nan.lcm'
    save_checkpoint(path, policy, {'source': f'test fixture, {name} set to 3e38'})
    return path


def _run(runner, steps=5, imu=IMU):
    return np.stack([runner.step(FRAME, imu, 0.05) for _ in range(steps)])


def test_runner_step_returns_outputs(imu_model):
    runner = load_runner(imu_model)
    outputs = runner.step(FRAME, IMU, 0.05)
    assert outputs.shape == (2,)
    assert np.all(np.isfinite(outputs))
    assert runner.output_names == ('angular_z', 'linear_x')


def test_runner_reset_repeats_sequence(imu_model):
    runner = load_runner(imu_model)
    first = _run(runner)
    runner.reset()
    second = _run(runner)
    np.testing.assert_allclose(first, second, rtol=1e-6)


def test_runner_state_carries_over(imu_model):
    runner = load_runner(imu_model)
    outputs = _run(runner, steps=3)
    assert not np.allclose(outputs[0], outputs[2])


def test_runner_uses_imu(imu_model):
    runner = load_runner(imu_model)
    with_imu = _run(runner)
    runner.reset()
    without_imu = _run(runner, imu=None)
    assert not np.allclose(with_imu, without_imu)


def test_runner_neuron_states_shape(imu_model):
    runner = load_runner(imu_model)
    assert runner.neuron_states().shape == (19,)
    runner.step(FRAME, IMU, 0.05)
    assert np.all(np.isfinite(runner.neuron_states()))


def test_runner_preprocessing_from_checkpoint(cropped_model):
    runner = load_runner(cropped_model)
    assert runner.preprocessing.height == 48
    assert runner.preprocessing.crop_top == 0.25
    assert runner.preprocess(FRAME).shape == (3, 48, 64)
    assert runner.step(FRAME, IMU, 0.05).shape == (2,)


def test_runner_ignores_imu_without_imu_input(cropped_model):
    runner = load_runner(cropped_model)
    with_imu = runner.step(FRAME, IMU, 0.05)
    runner.reset()
    np.testing.assert_allclose(runner.step(FRAME, None, 0.05), with_imu, rtol=1e-6)


@pytest.mark.parametrize('dt', [0.0, -0.05, float('nan'), float('inf')])
def test_runner_rejects_invalid_dt(imu_model, dt):
    with pytest.raises(ValueError, match='dt'):
        load_runner(imu_model).step(FRAME, IMU, dt)


def test_runner_rejects_non_finite_imu(imu_model):
    with pytest.raises(ValueError, match='IMU'):
        load_runner(imu_model).step(FRAME, [0, 0, float('nan'), 0, 0, 9.8], 0.05)


def test_runner_rejects_wrong_frame_shape(imu_model):
    with pytest.raises(ValueError, match='frame'):
        load_runner(imu_model).step_preprocessed(np.zeros((3, 10, 10), np.float32), None, 0.05)


def test_load_runner_missing_file(tmp_path):
    with pytest.raises(CheckpointError):
        load_runner(tmp_path / 'missing.lcm')


def test_node_non_finite_output_gives_zero(ros_env, tmp_path, nan_model):
    node = NodeProcess(node_command(nan_model, {'input_timeout': 1.0}), ros_env,
                       tmp_path / 'node.log')
    peer = Peer(ros_env)
    try:
        assert node.wait_for_output('ready:', timeout=60), node.output()
        peer.wait_connected(imu=False)
        peer.stream(1.0, imu=False)
        commands = peer.command_list()
        assert len(commands) >= 10
        assert all(is_zero(c) for c in commands)
        assert node.alive()
        assert 'policy output is not finite' in node.output()
        assert peer.wait_for(lambda: int(peer.latest_diagnostics().get(
            'invalid_outputs', 0)) >= 10, 2.0)
        diagnostics = peer.latest_diagnostics()
        # Logged once per throttle period of 2 s, not once per step (20 a second).
        errors = node.output().count('policy output is not finite')
        assert errors <= int(diagnostics['invalid_outputs']) / 5
        assert int(diagnostics['state_resets']) >= 10
        assert diagnostics['_message'].endswith('non-finite outputs')
    finally:
        assert node.stop() == 0
        peer.close()
