"""LTC cell: accuracy against a reference ODE solver, stability, gradients and fast paths."""

import pytest
import torch
from scipy.integrate import solve_ivp

from liquid_control.model import native
from liquid_control.model.ltc import LTC, LTCCell, SemiImplicitUnfold, _unfold_steps
from liquid_control.model.wirings import auto_ncp, fully_connected, lane_keeping_ncp


def _cell(unfolds=6, seed=0, wiring=None):
    wiring = wiring or auto_ncp(8, 12, 2, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return LTCCell(wiring, unfolds, generator).double()


def _reference(cell, inputs, state, elapsed):
    """Integrate the cell's ODE with scipy's DOP853 at tight tolerance."""
    def derivative(_, v):
        with torch.no_grad():
            return cell.derivative(inputs, torch.as_tensor(v)[None])[0].numpy()
    result = solve_ivp(derivative, (0.0, elapsed), state[0].numpy(), method='DOP853',
                       rtol=1e-11, atol=1e-12)
    assert result.success
    return torch.as_tensor(result.y[:, -1])[None]


def _step(cell, inputs, state, elapsed, unfolds):
    cell.ode_unfolds = unfolds
    with torch.no_grad():
        return cell(inputs, state, torch.tensor([elapsed], dtype=torch.float64))


def test_unfolds_converge_to_reference():
    cell = _cell()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.rand(1, 8, generator=generator, dtype=torch.float64)
    state = 0.3 * torch.randn(1, 12, generator=generator, dtype=torch.float64)
    reference = _reference(cell, inputs, state, 1.0)
    errors = [float((_step(cell, inputs, state, 1.0, unfolds) - reference).abs().max())
              for unfolds in (1, 4, 16, 64, 256, 1024)]
    # First order: each 4x more unfolds cuts the error by about 4x.
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < coarse / 2.5, errors
    assert errors[-1] < 1e-3, errors
    assert errors[0] > 10 * errors[-1], errors


def test_half_steps_agree_with_full_step():
    cell = _cell(seed=2)
    generator = torch.Generator().manual_seed(3)
    inputs = torch.rand(1, 8, generator=generator, dtype=torch.float64)
    state = 0.3 * torch.randn(1, 12, generator=generator, dtype=torch.float64)
    reference = _reference(cell, inputs, state, 2.0)
    full = _step(cell, inputs, state, 2.0, 6)
    half = _step(cell, inputs, _step(cell, inputs, state, 1.0, 6), 1.0, 6)
    full_error = float((full - reference).abs().max())
    half_error = float((half - reference).abs().max())
    # Two half steps use sub-steps half as long, so they are closer to the reference,
    # and they differ from the full step by no more than the full step's own error.
    assert half_error < full_error
    assert float((half - full).abs().max()) <= full_error + 1e-12


def test_long_rollout_bounded():
    torch.manual_seed(0)
    model = LTC(lane_keeping_ncp(32, seed=4), ode_unfolds=6)
    cell = model.cell
    # Each sub-step is a positively weighted average of v, the resting potentials and
    # the reversal potentials, so the state can never leave their range.
    with torch.no_grad():
        bound = max(cell.resting_potential.abs().max(), cell.erev.abs().max(),
                    cell.sensory_erev.abs().max())
        state = model.initial_state(4)
        for index in range(2000):
            inputs = 50.0 * torch.randn(4, 32)
            elapsed = torch.tensor([1e-4, 1.0, 30.0, 1e4])[torch.randperm(4)]
            outputs, state = model.step(inputs, elapsed, state)
            assert torch.isfinite(state).all(), f'step {index}'
            assert float(state.abs().max()) <= float(bound) + 1e-5, f'step {index}'


def test_elapsed_per_sample_shapes():
    cell = _cell()
    inputs = torch.rand(3, 8, dtype=torch.float64)
    state = torch.zeros(3, 12, dtype=torch.float64)
    elapsed = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    with torch.no_grad():
        flat = cell(inputs, state, elapsed)
        column = cell(inputs, state, elapsed[:, None])
        single = cell(inputs[1:2], state[1:2], elapsed[1:2])
    assert torch.equal(flat, column)
    assert torch.allclose(flat[1:2], single)
    assert not torch.allclose(flat[0], flat[2])


def test_zero_elapsed_keeps_state():
    cell = _cell()
    state = 0.2 * torch.randn(2, 12, dtype=torch.float64)
    with torch.no_grad():
        after = cell(torch.rand(2, 8, dtype=torch.float64), state,
                     torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(after, state, atol=1e-5)


def test_positivity_by_construction():
    cell = _cell()
    with torch.no_grad():
        for parameter in (cell.capacitance, cell.leak_conductance, cell.weight,
                          cell.sensory_weight):
            parameter.fill_(-50.0)
    matrices = cell._build_matrices()
    assert (matrices.capacitance > 0).all()
    assert (matrices.leak[:, 12:] > 0).all()
    assert (matrices.scatter_denominator[cell.target > 0] > 0).all()


def test_parameters_only_for_existing_synapses():
    wiring = auto_ncp(8, 12, 2, seed=0)
    cell = LTCCell(wiring)
    assert cell.weight.numel() == wiring.synapse_count
    assert cell.sensory_weight.numel() == wiring.sensory_synapse_count
    assert cell.parameter_count() == 4 * (wiring.synapse_count
                                          + wiring.sensory_synapse_count) + 3 * 12


def test_custom_backward_gradcheck():
    generator = torch.Generator().manual_seed(0)
    batch, steps, units, synapses = 2, 3, 5, 9

    def tensor(*shape, scale=1.0, shift=0.0):
        values = torch.rand(*shape, generator=generator, dtype=torch.float64)
        return (scale * values + shift).requires_grad_()

    arguments = (tensor(batch, units, scale=0.6, shift=-0.3),
                 tensor(steps, batch, units, scale=0.6, shift=-0.3),
                 tensor(steps, batch, units, shift=2.0),
                 tensor(steps, batch, units, shift=1.0),
                 tensor(units, synapses, scale=6.0, shift=-3.0),
                 tensor(1, synapses, scale=2.0, shift=-1.0),
                 tensor(synapses, units, scale=0.6, shift=-0.3),
                 tensor(synapses, units, scale=0.5))
    assert torch.autograd.gradcheck(lambda *a: SemiImplicitUnfold.apply(*a, 3), arguments)


def test_custom_backward_matches_autograd():
    model = LTC(auto_ncp(10, 12, 2, seed=1)).double()
    inputs = torch.randn(2, 5, 10, dtype=torch.float64)
    elapsed = torch.rand(2, 5, dtype=torch.float64) + 0.5
    outputs, state = model(inputs, elapsed)
    (outputs.sum() + state.square().sum()).backward()
    custom = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    cell = model.cell
    matrices = cell.matrices()
    mapped = torch.addcmul(model.input_bias, inputs, model.input_weight)
    numerator, denominator, rate = cell.prepare(mapped.transpose(0, 1),
                                                elapsed.transpose(0, 1), matrices)
    states, _ = _unfold_steps(model.initial_state(2), numerator, denominator, rate,
                              matrices.gather, matrices.offset, matrices.scatter_numerator,
                              matrices.scatter_denominator, cell.ode_unfolds)
    states = states.transpose(0, 1)
    reference = states[..., :2] * model.output_weight + model.output_bias
    assert torch.allclose(reference, outputs)
    (reference.sum() + states[:, -1].square().sum()).backward()
    for name, parameter in model.named_parameters():
        assert torch.allclose(custom[name], parameter.grad, atol=1e-12), name


def test_gradients_reach_every_parameter():
    model = LTC(fully_connected(6, 8, 2, seed=0))
    outputs, _ = model(torch.randn(4, 6, 6), torch.ones(4, 6))
    outputs.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.skipif(native.load_kernel() is None, reason='no C compiler for the kernel')
@pytest.mark.parametrize('wiring', [lane_keeping_ncp(32, seed=2),
                                    auto_ncp(32, 19, 1, seed=2, sensory_motor_fanin=32)],
                         ids=['lane_keeping', 'sensory_motor'])
def test_native_kernel_matches_pytorch(wiring):
    model = LTC(wiring)
    inputs = torch.randn(3, 7, 32)
    elapsed = torch.rand(3, 7) * 2 + 0.01
    state = 0.2 * torch.randn(3, 19)
    with torch.no_grad():
        fast_outputs, fast_state = model(inputs, elapsed, state)
        fast_step, _ = model.step(inputs[:, 0], elapsed[:, 0], state)
        model.native_enabled = False
        outputs, final_state = model(inputs, elapsed, state)
        step, _ = model.step(inputs[:, 0], elapsed[:, 0], state)
    assert torch.allclose(fast_outputs, outputs, atol=1e-5)
    assert torch.allclose(fast_state, final_state, atol=1e-5)
    assert torch.allclose(fast_step, step, atol=1e-5)


@pytest.mark.skipif(native.load_kernel() is None, reason='no C compiler for the kernel')
def test_native_kernel_follows_weight_updates():
    model = LTC(lane_keeping_ncp(32, seed=2))
    inputs = torch.randn(1, 32)
    with torch.no_grad():
        before, _ = model.step(inputs, torch.ones(1))
        model.cell.sigma.mul_(0.5)
        after, _ = model.step(inputs, torch.ones(1))
        model.native_enabled = False
        expected, _ = model.step(inputs, torch.ones(1))
    assert not torch.allclose(before, after)
    assert torch.allclose(after, expected, atol=1e-5)


def test_unfold_count_is_configurable():
    with pytest.raises(ValueError, match='ode_unfolds'):
        LTCCell(auto_ncp(8, 12, 2), ode_unfolds=0)
    assert _cell(unfolds=3).ode_unfolds == 3


def test_matches_ncps_with_copied_parameters():
    pytest.importorskip('ncps')
    from ncps.torch import LTC as NcpsLTC
    from ncps.wirings import AutoNCP

    from liquid_control.model.benchmark import copy_ncps_parameters, wiring_from_ncps

    torch.manual_seed(0)
    ncps_wiring = AutoNCP(19, 2, seed=5)
    reference = NcpsLTC(32, ncps_wiring, batch_first=True, return_sequences=True)
    model = LTC(wiring_from_ncps(ncps_wiring), ode_unfolds=6)
    copy_ncps_parameters(reference.rnn_cell, model)
    inputs = torch.randn(3, 8, 32)
    with torch.no_grad():
        expected, expected_state = reference(inputs)
        outputs, state = model(inputs, torch.ones(3, 8))
        step, _ = model.step(inputs[:, 0], torch.ones(3))
    assert torch.allclose(outputs, expected, atol=1e-5)
    assert torch.allclose(state, expected_state, atol=1e-5)
    assert torch.allclose(step, expected[:, 0], atol=1e-5)


def _fresh_kernel_state(monkeypatch, tmp_path):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    monkeypatch.setattr(native, '_attempted', False)
    monkeypatch.setattr(native, '_kernel', None)


def test_kernel_compiles_into_cache(monkeypatch, tmp_path):
    if native.shutil.which('cc') is None and native.shutil.which('gcc') is None:
        pytest.skip('no C compiler')
    _fresh_kernel_state(monkeypatch, tmp_path)
    assert native.load_kernel() is not None
    assert len(list((tmp_path / 'liquid_control').glob('ltc_kernel_*.so'))) == 1


def test_kernel_falls_back_without_compiler(monkeypatch, tmp_path):
    _fresh_kernel_state(monkeypatch, tmp_path)
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-compiler'))
    assert native.load_kernel() is None
    model = LTC(lane_keeping_ncp(32, seed=0))
    with torch.no_grad():
        outputs, state = model.step(torch.randn(2, 32), torch.ones(2))
    assert outputs.shape == (2, 1)
    assert torch.isfinite(state).all()


def test_kernel_disabled_by_environment(monkeypatch, tmp_path):
    _fresh_kernel_state(monkeypatch, tmp_path)
    monkeypatch.setenv('LIQUID_CONTROL_NATIVE', '0')
    assert native.load_kernel() is None
    assert not (tmp_path / 'liquid_control').exists()


def test_inference_step_matches_training_path():
    model = LTC(lane_keeping_ncp(32, seed=3)).double()
    inputs = torch.randn(3, 32, dtype=torch.float64)
    elapsed = torch.tensor([0.01, 1.0, 7.0], dtype=torch.float64)
    state = 0.2 * torch.randn(3, 19, dtype=torch.float64)
    training_outputs, training_state = model.step(inputs, elapsed, state)
    with torch.no_grad():
        outputs, final_state = model.step(inputs, elapsed, state)
        model.cell.mu.add_(0.1)
        shifted, _ = model.step(inputs, elapsed, state)
    assert torch.allclose(outputs, training_outputs, atol=1e-12)
    assert torch.allclose(final_state, training_state, atol=1e-12)
    assert not torch.allclose(shifted, outputs)
