"""Policy: shapes, step/sequence agreement, normalisation, IMU handling, seeding, counts."""

import pytest
import torch

from liquid_control.errors import ConfigError
from liquid_control.model.encoder import ConvHead, Encoder
from liquid_control.model.policy import FAMILIES, PolicyConfig, build_policy

SMALL = {'height': 24, 'width': 32}


def _config(**changes):
    preprocessing = {**PolicyConfig().preprocessing, **SMALL}
    return PolicyConfig(**{'preprocessing': preprocessing, **changes})


def test_conv_head_parameter_count_at_78x200():
    head = ConvHead(78, 200)
    assert head.map_shape == (10, 25)
    assert sum(p.numel() for p in head.parameters()) == 79420


def test_encoder_default_size_66x200():
    encoder = Encoder(66, 200)
    features = encoder(torch.rand(3, 3, 66, 200))
    assert features.shape == (3, 32)
    # Layer normalisation: zero mean and unit variance per frame.
    assert features.mean(dim=1).abs().max() < 1e-4
    assert (features.std(dim=1, unbiased=False) - 1).abs().max() < 1e-2


def test_encoder_rejects_wrong_frame_size():
    with pytest.raises(ValueError, match='66, 200'):
        Encoder(66, 200)(torch.rand(1, 3, 64, 200))


def test_encoder_features_all_alive():
    torch.manual_seed(0)
    encoder = Encoder(66, 200)
    features = encoder(torch.rand(16, 3, 66, 200))
    assert (features.std(dim=0) > 1e-3).all()


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('imu', [False, True])
def test_policy_shapes_and_step_agreement(family, imu):
    policy = build_policy(_config(family=family, imu_enabled=imu)).eval()
    frames = torch.rand(2, 5, 3, 24, 32)
    imu_values = torch.randn(2, 5, 6) if imu else None
    dt = torch.full((2, 5), 0.05)
    with torch.no_grad():
        outputs, state = policy(frames, imu_values, dt)
        assert outputs.shape == (2, 5, 2)
        assert state.shape == (2, policy.state_size)
        assert policy.neuron_states(state).shape[0] == 2
        step_state = None
        for t in range(5):
            step_output, step_state = policy.step(
                frames[:, t], None if imu_values is None else imu_values[:, t], dt[:, t],
                step_state)
            assert torch.allclose(step_output, outputs[:, t], atol=1e-5)
    assert torch.allclose(step_state, state, atol=1e-5)


def test_policy_state_sizes():
    sizes = {family: build_policy(_config(family=family)).state_size for family in FAMILIES}
    assert sizes == {'ncp_ltc': 19, 'ncp_cfc': 19, 'fc_ltc': 19, 'lstm': 38, 'gru': 19,
                     'cnn': 0}


def test_policy_output_denormalisation():
    policy = build_policy(_config()).eval()
    frames = torch.rand(1, 3, 3, 24, 32)
    with torch.no_grad():
        normalised, _ = policy(frames, None, 0.05, denormalize=False)
        policy.set_normalization(output_mean=[1.0, -2.0], output_std=[3.0, 0.5])
        physical, _ = policy(frames, None, 0.05)
    assert torch.allclose(physical, normalised * torch.tensor([3.0, 0.5])
                          + torch.tensor([1.0, -2.0]), atol=1e-6)
    assert torch.allclose(policy.normalize_outputs(physical), normalised, atol=1e-5)


def test_set_normalization_rejects_bad_values():
    policy = build_policy(_config())
    with pytest.raises(ConfigError, match='output_std'):
        policy.set_normalization(output_std=[1.0, 0.0])
    with pytest.raises(ConfigError, match='imu_mean'):
        policy.set_normalization(imu_mean=[0.0] * 5)
    with pytest.raises(ConfigError, match='NaN'):
        policy.set_normalization(feature_mean=[float('nan')] * 32)


def test_missing_imu_reading_uses_mean():
    policy = build_policy(_config(imu_enabled=True)).eval()
    policy.set_normalization(imu_mean=[0.1] * 6, imu_std=[2.0] * 6)
    frame = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        at_mean, _ = policy.step(frame, torch.full((1, 6), 0.1), 0.05)
        missing, _ = policy.step(frame, None, 0.05)
        nan_reading, _ = policy.step(frame, torch.full((1, 6), float('nan')), 0.05)
    assert torch.allclose(missing, at_mean, atol=1e-6)
    assert torch.allclose(nan_reading, at_mean, atol=1e-6)


def test_elapsed_time_matters_for_liquid_cells():
    for family in ('ncp_ltc', 'ncp_cfc'):
        policy = build_policy(_config(family=family)).eval()
        frames = torch.rand(1, 4, 3, 24, 32)
        with torch.no_grad():
            fast, _ = policy(frames, None, 0.02)
            slow, _ = policy(frames, None, 0.2)
        assert not torch.allclose(fast, slow), family


def test_sensory_motor_synapses_in_ltc_only():
    direct = {'kind': 'auto_ncp', 'sparsity': 0.5, 'sensory_motor_fanin': 32}
    plain = build_policy(_config()).parameter_counts()['recurrent']
    counts = build_policy(_config(wiring=direct)).parameter_counts()
    # 32 features to each of the 2 motor neurons, 4 parameters a synapse.
    assert counts['recurrent'] - plain == 4 * 32 * 2
    with pytest.raises(ConfigError, match='first layer only'):
        build_policy(_config(family='ncp_cfc', wiring=direct))


def test_dt_shapes_accepted():
    policy = build_policy(_config()).eval()
    frame = torch.rand(2, 3, 24, 32)
    with torch.no_grad():
        reference, _ = policy.step(frame, None, torch.tensor([0.05, 0.05]))
        for dt in (0.05, torch.tensor(0.05), torch.full((2, 1), 0.05)):
            output, _ = policy.step(frame, None, dt)
            assert torch.equal(output, reference)
    with pytest.raises(ValueError, match='dt'):
        policy.step(frame, None, torch.ones(3))


@pytest.mark.parametrize('family', FAMILIES)
def test_seeded_construction_deterministic(family):
    first = build_policy(_config(family=family, seed=5))
    second = build_policy(_config(family=family, seed=5))
    third = build_policy(_config(family=family, seed=6))
    first_state, second_state = first.state_dict(), second.state_dict()
    for name, tensor in first_state.items():
        assert torch.equal(tensor, second_state[name]), name
    assert any(not torch.equal(tensor, third.state_dict()[name])
               for name, tensor in first_state.items())


def test_seeding_leaves_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_policy(_config())
    assert torch.equal(torch.rand(3), expected)


def test_parameter_counts_blocks():
    policy = build_policy(PolicyConfig(family='ncp_ltc', units=19, output_names=('angular_z',),
                                       output_units=('rad/s',),
                                       wiring={'kind': 'lane_keeping'},
                                       preprocessing={'height': 78, 'width': 200}))
    counts = policy.parameter_counts()
    assert counts['encoder'] == 79420
    assert counts['recurrent'] == 1065
    assert counts['head'] == 2 * 32 + 2 * 1
    assert counts['total'] == counts['encoder'] + counts['recurrent'] + counts['head']
    assert counts['total'] == sum(p.numel() for p in policy.parameters())


def test_config_round_trip_and_validation():
    config = _config(family='gru', units=8, imu_enabled=True)
    assert PolicyConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match='family'):
        PolicyConfig(family='transformer')
    with pytest.raises(ConfigError, match='output_units'):
        PolicyConfig(output_names=('a', 'b'), output_units=('m/s',))
    with pytest.raises(ConfigError, match='unknown policy settings'):
        PolicyConfig.from_dict({'family': 'gru', 'layers': 3})


def test_sensory_sigma_sets_input_slopes():
    default = build_policy(_config()).core.cell.sensory_sigma.detach()
    assert float(default.min()) >= 3.0
    assert float(default.max()) <= 8.0
    config = _config(sensory_sigma=[1.0, 2.0])
    assert config.sensory_sigma == (1.0, 2.0)
    sigma = build_policy(config).core.cell.sensory_sigma.detach()
    assert 1.0 <= float(sigma.min()) < 1.2
    assert 1.8 < float(sigma.max()) <= 2.0
    # The internal synapses keep their own range.
    assert float(build_policy(config).core.cell.sigma.detach().min()) >= 3.0
    assert PolicyConfig.from_dict(config.to_dict()) == config
    # Configs saved before the setting existed load with the default.
    values = config.to_dict()
    del values['sensory_sigma']
    assert PolicyConfig.from_dict(values).sensory_sigma == (3.0, 8.0)


@pytest.mark.parametrize('value', [[1.0], [2.0, 1.0], [0.0, 1.0], '12', [True, 2.0],
                                   [1.0, float('inf')], 3.0])
def test_sensory_sigma_rejects_bad_ranges(value):
    with pytest.raises(ConfigError, match=r'sensory_sigma=.* use \[low, high\]'):
        PolicyConfig(sensory_sigma=value)


@pytest.mark.parametrize('family', FAMILIES)
def test_gradients_reach_every_parameter(family):
    policy = build_policy(_config(family=family, imu_enabled=True, seed=1))
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 4, 3, 24, 32, generator=generator)
    imu = torch.randn(3, 4, 6, generator=generator)
    dt = 0.03 + 0.04 * torch.rand(3, 4, generator=generator)
    outputs, state = policy(frames, imu, dt, denormalize=False)
    (outputs.square().mean() + state.square().mean()).backward()
    for name, parameter in policy.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_step_features_matches_step():
    policy = build_policy(_config(imu_enabled=True)).eval()
    frame = torch.rand(2, 3, 24, 32)
    imu = torch.randn(2, 6)
    with torch.no_grad():
        expected, expected_state = policy.step(frame, imu, 0.05)
        outputs, state = policy.step_features(policy.encoder(frame), imu, 0.05)
    assert torch.equal(outputs, expected)
    assert torch.equal(state, expected_state)


@pytest.mark.parametrize('family', FAMILIES)
def test_forward_features_matches_forward(family):
    policy = build_policy(_config(family=family, imu_enabled=True)).eval()
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 5, 3, 24, 32, generator=generator)
    imu = torch.randn(2, 5, 6, generator=generator)
    dt = 0.03 + 0.04 * torch.rand(2, 5, generator=generator)
    with torch.no_grad():
        expected, expected_state = policy(frames, imu, dt)
        features = policy.encoder(frames.reshape(10, 3, 24, 32)).reshape(2, 5, -1)
        outputs, state = policy.forward_features(features, imu, dt)
    assert torch.allclose(outputs, expected, atol=1e-6)
    assert torch.allclose(state, expected_state, atol=1e-6)


def test_forward_features_keeps_frame_history():
    policy = build_policy(_config(frame_gap=2)).eval()
    start = policy.initial_state(1)
    start[:, policy.core.state_size:] = 0.5
    features = torch.randn(1, 3, policy.encoder.feature_count)
    with torch.no_grad():
        _, state = policy.forward_features(features, None, 0.05, start)
    assert torch.equal(state[:, policy.core.state_size:], start[:, policy.core.state_size:])
    with pytest.raises(ValueError, match=r'\(B, T, F\)'):
        policy.forward_features(features[0], None, 0.05)
