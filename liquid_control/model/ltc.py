"""Liquid time-constant (LTC) cell with sparse synapses and a fused semi-implicit Euler solver.

Each neuron j has a potential v_j that follows (Hasani et al., "Liquid time-constant
networks", AAAI 2021)

    C_j dv_j/dt = g_j (V_j - v_j) + sum_i w_ij s_ij(x_i) (E_ij - v_j),
    s_ij(x) = sigmoid(sigma_ij (x - mu_ij)),

where the sum runs over the synapses into j from inputs and neurons, C_j > 0 is the
membrane capacitance, g_j > 0 the leak conductance, V_j the resting potential, w_ij > 0 the
synaptic weight and E_ij the reversal potential. Dividing by C_j gives the form
dv/dt = -(1/tau + f) v + f A with tau = C/g and f = sum w s / C.

One call advances the state by an elapsed time dt in ``ode_unfolds`` sub-steps of
h = dt / unfolds with the fused semi-implicit Euler step, which treats the v_j terms
implicitly and the synaptic activations explicitly:

    v <- (C/h v + g V + sum w s E) / (C/h + g + sum w s).

The denominator is positive by construction, so the step is stable for any h.

Only synapses that exist have parameters: every synapse parameter is a vector over the
wiring's synapse list. Per step, two small matrix products gather the presynaptic
potentials and scatter the weighted activations to their targets, so a sub-step costs a
few tensor operations whatever the number of neurons.
"""

import ctypes
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from liquid_control.model import native
from liquid_control.model.wirings import Wiring

# Range of the initial slopes sigma of the input synapses, the ncps library's 3..8.
SENSORY_SIGMA = (3.0, 8.0)

# Elapsed times below this many time units count as this value, so C/h stays finite.
# The state then barely moves, as it should for an instant.
MIN_ELAPSED = 1e-6


def inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    """Return x with softplus(x) == value, for value > 0."""
    return value + torch.log(-torch.expm1(-value))


class SynapseMatrices(NamedTuple):
    """Per-forward constants derived from the parameters (positivity already applied).

    A ``gather`` matrix (rows, E) has sigma_e at (source_e, e), so ``x @ gather + offset``
    gives sigma (x_source - mu) for every synapse. The ``scatter`` matrices (E, N) have
    w_e E_e (numerator) or w_e (denominator) at (e, target_e), so ``s @ scatter`` sums
    each synapse's activation into its target neuron.
    """

    sensory_gather: torch.Tensor             # (S, Es)
    sensory_offset: torch.Tensor             # (1, Es)
    sensory_scatter: torch.Tensor            # (Es, 2N): numerator then denominator columns
    gather: torch.Tensor                     # (N, E)
    offset: torch.Tensor                     # (1, E)
    scatter_numerator: torch.Tensor          # (E, N)
    scatter_denominator: torch.Tensor        # (E, N)
    leak: torch.Tensor                       # (1, 2N): [g V, g]
    capacitance: torch.Tensor                # (1, N): C


class LTCCell(nn.Module):
    """LTC cell on a sparse wiring: inputs (B, S), state (B, N), elapsed (B,) -> state (B, N).

    Elapsed time is in the cell's time units (the policy divides seconds by its reference
    step). Capacitances, leak conductances and synaptic weights are softplus of
    unconstrained parameters, so they stay positive whatever the optimiser does.
    """

    def __init__(self, wiring: Wiring, ode_unfolds: int = 6,
                 generator: Optional[torch.Generator] = None,
                 sensory_sigma: Tuple[float, float] = SENSORY_SIGMA):
        super().__init__()
        if ode_unfolds < 1:
            raise ValueError(f'ode_unfolds={ode_unfolds} is invalid: use at least 1')
        self.wiring = wiring
        self.ode_unfolds = int(ode_unfolds)
        self.input_size = wiring.input_size
        self.units = wiring.units

        sensory = wiring.sensory_synapses()
        internal = wiring.synapses()
        self._register_one_hot('sensory_source', sensory[:, 0], self.input_size, rows=True)
        self._register_one_hot('sensory_target', sensory[:, 1], self.units, rows=False)
        self._register_one_hot('source', internal[:, 0], self.units, rows=True)
        self._register_one_hot('target', internal[:, 1], self.units, rows=False)

        def uniform(size: int, low: float, high: float) -> torch.Tensor:
            return torch.rand(size, generator=generator) * (high - low) + low

        # Initial ranges: time constants C/g from about 0.4 to 60 time units, steep
        # sigmoids (sigma 3..8) centred at 0.3..0.8, reversal potentials at +-1 by the
        # synapse's polarity. The sensory slopes come from ``sensory_sigma``.
        n_sensory, n_internal, units = len(sensory), len(internal), self.units
        self.sensory_weight = nn.Parameter(inverse_softplus(uniform(n_sensory, 0.01, 1.0)))
        self.sensory_sigma = nn.Parameter(uniform(n_sensory, *sensory_sigma))
        self.sensory_mu = nn.Parameter(uniform(n_sensory, 0.3, 0.8))
        self.sensory_erev = nn.Parameter(torch.as_tensor(sensory[:, 2], dtype=torch.float32))
        self.weight = nn.Parameter(inverse_softplus(uniform(n_internal, 0.01, 1.0)))
        self.sigma = nn.Parameter(uniform(n_internal, 3.0, 8.0))
        self.mu = nn.Parameter(uniform(n_internal, 0.3, 0.8))
        self.erev = nn.Parameter(torch.as_tensor(internal[:, 2], dtype=torch.float32))
        self.leak_conductance = nn.Parameter(inverse_softplus(uniform(units, 0.01, 1.0)))
        self.resting_potential = nn.Parameter(uniform(units, -0.2, 0.2))
        self.capacitance = nn.Parameter(inverse_softplus(uniform(units, 0.4, 0.6)))

        self._cache_key = None
        self._cache: Optional[SynapseMatrices] = None
        self._cache_tensors = None

    def _register_one_hot(self, name: str, indices: np.ndarray, size: int, rows: bool) -> None:
        # rows=True: (size, E) with a 1 at (index_e, e); rows=False: (E, size).
        count = len(indices)
        matrix = torch.zeros(size, count) if rows else torch.zeros(count, size)
        columns = torch.arange(count)
        index = torch.as_tensor(indices, dtype=torch.long)
        if rows:
            matrix[index, columns] = 1.0
        else:
            matrix[columns, index] = 1.0
        self.register_buffer(name, matrix, persistent=False)

    @property
    def synapse_count(self) -> int:
        """Number of neuron-to-neuron synapses (each has 4 parameters)."""
        return self.weight.numel()

    @property
    def sensory_synapse_count(self) -> int:
        """Number of input-to-neuron synapses (each has 4 parameters)."""
        return self.sensory_weight.numel()

    def matrices(self) -> SynapseMatrices:
        """Build the per-forward matrices, cached while gradients are off and weights unchanged."""
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._build_matrices()
        if self._cache_tensors is None:
            self._cache_tensors = list(self.parameters())
        # In-place updates (optimiser steps, load_state_dict) bump a tensor's _version.
        key = [(p.data_ptr(), p._version) for p in self._cache_tensors]
        if key != self._cache_key or self._cache is None:
            self._cache = self._build_matrices()
            self._cache_key = key
        return self._cache

    def _build_matrices(self) -> SynapseMatrices:
        sensory_weight = F.softplus(self.sensory_weight)
        sensory_weighted = self.sensory_target * sensory_weight[:, None]
        weighted = self.target * F.softplus(self.weight)[:, None]
        leak = F.softplus(self.leak_conductance)
        return SynapseMatrices(
            sensory_gather=self.sensory_source * self.sensory_sigma,
            sensory_offset=(-self.sensory_sigma * self.sensory_mu)[None, :],
            sensory_scatter=torch.cat(
                [sensory_weighted * self.sensory_erev[:, None], sensory_weighted], dim=1),
            gather=self.source * self.sigma,
            offset=(-self.sigma * self.mu)[None, :],
            scatter_numerator=weighted * self.erev[:, None],
            scatter_denominator=weighted,
            leak=torch.cat([leak * self.resting_potential, leak])[None, :],
            capacitance=F.softplus(self.capacitance)[None, :],
        )

    def prepare(self, inputs: torch.Tensor, elapsed: torch.Tensor,
                matrices: SynapseMatrices):
        """Compute the terms that stay fixed during one step, for any leading shape L.

        inputs (*L, S) and elapsed (*L) give (numerator, denominator, rate), each (*L, N):
        the sensory and leak parts of the step's numerator and denominator, with C/h already
        in the denominator, and the rate C/h that multiplies v in the numerator.
        """
        m = matrices
        units = self.units
        leading = inputs.shape[:-1]
        flat = inputs.reshape(-1, self.input_size)
        # Sensory synapses see the same input for the whole step: sum them once.
        activation = torch.sigmoid(torch.addmm(m.sensory_offset, flat, m.sensory_gather))
        constant = torch.addmm(m.leak, activation, m.sensory_scatter)  # (L, 2N)
        constant = constant.reshape(leading + (2 * units,))
        elapsed = elapsed.reshape(leading + (1,)).clamp_min(MIN_ELAPSED)
        rate = m.capacitance * (self.ode_unfolds / elapsed)  # C / h, (*L, N)
        return constant[..., :units], constant[..., units:] + rate, rate

    def unfold(self, state: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
               rate: torch.Tensor, matrices: SynapseMatrices) -> torch.Tensor:
        """Integrate T steps from ``state`` (B, N); the fixed terms are (T, B, N).

        Returns the state after each step, (T, B, N). With gradients enabled this runs
        through ``SemiImplicitUnfold``, whose hand-written backward pass runs fewer tensor
        operations than autograd would.
        """
        m = matrices
        arguments = (state, numerator, denominator, rate, m.gather, m.offset,
                     m.scatter_numerator, m.scatter_denominator)
        if torch.is_grad_enabled() and any(t.requires_grad for t in arguments):
            return SemiImplicitUnfold.apply(*arguments, self.ode_unfolds)
        return _unfold_steps(*arguments, self.ode_unfolds)[0]

    def forward(self, inputs: torch.Tensor, state: torch.Tensor, elapsed: torch.Tensor,
                matrices: Optional[SynapseMatrices] = None) -> torch.Tensor:
        """Advance ``state`` (B, N) by ``elapsed`` (B,) or (B, 1) time units.

        ``inputs`` (B, S) are held constant over the step.
        """
        m = self.matrices() if matrices is None else matrices
        numerator, denominator, rate = self.prepare(inputs, elapsed.reshape(-1), m)
        return self.unfold(state, numerator[None], denominator[None], rate[None], m)[0]

    def derivative(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Return dv/dt (B, N) of the ODE itself, for reference solvers and tests."""
        m = self._build_matrices()
        units = self.units
        sensory = torch.sigmoid(inputs @ m.sensory_gather + m.sensory_offset) @ m.sensory_scatter
        activation = torch.sigmoid(state @ m.gather + m.offset)
        numerator = sensory[:, :units] + activation @ m.scatter_numerator
        conductance = sensory[:, units:] + activation @ m.scatter_denominator
        leak_current = m.leak[:, :units] - m.leak[:, units:] * state
        return (leak_current + numerator - conductance * state) / m.capacitance

    def parameter_count(self) -> int:
        """Count trainable parameters: 4 per synapse and 3 per neuron."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _unfold_steps(state, numerator, denominator, rate, gather, offset, scatter_numerator,
                  scatter_denominator, unfolds: int, keep: bool = False):
    """Run the fused semi-implicit Euler sub-steps; return (states (T, B, N), saved lists).

    Each sub-step is v <- (n0 + s Wn + r v) / (d0 + s Wd) with s = sigmoid(v G + offset).
    With ``keep`` the lists of sub-step inputs v, activations s and denominators are
    returned for the backward pass.
    """
    v = state
    outputs, inputs, activations, denominators = [], [], [], []
    for n0, d0, r in zip(numerator.unbind(0), denominator.unbind(0), rate.unbind(0)):
        for _ in range(unfolds):
            s = torch.sigmoid(torch.addmm(offset, v, gather))
            d = torch.addmm(d0, s, scatter_denominator)
            if keep:
                inputs.append(v)
                activations.append(s)
                denominators.append(d)
            v = torch.addcmul(torch.addmm(n0, s, scatter_numerator), r, v) / d
        outputs.append(v)
    return torch.stack(outputs), (inputs, activations, denominators)


class SemiImplicitUnfold(torch.autograd.Function):
    """Autograd node for the whole unfold loop, with a hand-derived backward pass.

    Backward runs the sub-steps in reverse carrying g = dL/dv. For one sub-step with
    output v' = n / d, where n = n0 + s Wn + r v and d = d0 + s Wd:

        dL/dn = g / d,   dL/dd = -dL/dn * v',   dL/ds = dL/dn Wn^T + dL/dd Wd^T,
        dL/dp = dL/ds * s (1 - s)  (p = v G + offset),
        dL/dv = dL/dn * r + dL/dp G^T.

    Only those sequential terms run per sub-step. The weight gradients are sums of
    outer products over all sub-steps and are computed afterwards with one matrix
    product each.
    """

    @staticmethod
    def forward(ctx, state, numerator, denominator, rate, gather, offset, scatter_numerator,
                scatter_denominator, unfolds):
        outputs, (inputs, activations, denominators) = _unfold_steps(
            state, numerator, denominator, rate, gather, offset, scatter_numerator,
            scatter_denominator, unfolds, keep=True)
        ctx.unfolds = unfolds
        ctx.save_for_backward(torch.stack(inputs), torch.stack(activations),
                              torch.stack(denominators), outputs, rate, gather,
                              scatter_numerator, scatter_denominator)
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs):
        (inputs, activations, denominators, outputs, rate, gather, scatter_numerator,
         scatter_denominator) = ctx.saved_tensors
        unfolds = ctx.unfolds
        steps, batch, units = outputs.shape

        # Sub-step outputs: each sub-step's output is the next one's input.
        sub_outputs = torch.cat([inputs[1:], outputs[-1:]]).reshape(inputs.shape)
        reciprocal = denominators.reciprocal()
        slope = activations * (1.0 - activations)  # sigmoid'(p)
        gather_t = gather.t()
        numerator_t = scatter_numerator.t()
        denominator_t = scatter_denominator.t()

        g = torch.zeros_like(outputs[0])
        grad_n, grad_d, grad_p = [], [], []
        for t in reversed(range(steps)):
            g = g + grad_outputs[t]
            r = rate[t]
            for k in reversed(range(t * unfolds, (t + 1) * unfolds)):
                gn = g * reciprocal[k]
                gd = -gn * sub_outputs[k]
                gs = torch.addmm(gn @ numerator_t, gd, denominator_t)
                gp = gs * slope[k]
                g = torch.addmm(gn * r, gp, gather_t)
                grad_n.append(gn)
                grad_d.append(gd)
                grad_p.append(gp)

        # The lists run backwards in time; flip them to sub-step order.
        grad_n = torch.stack(grad_n[::-1])  # (K, B, N), K = T * unfolds
        grad_d = torch.stack(grad_d[::-1])
        grad_p = torch.stack(grad_p[::-1])  # (K, B, E)
        flat_activations = activations.reshape(-1, activations.shape[-1])
        flat_inputs = inputs.reshape(-1, units)
        grad_gather = flat_inputs.t() @ grad_p.reshape(-1, grad_p.shape[-1])
        grad_offset = grad_p.sum(dim=(0, 1))[None, :]
        grad_scatter_numerator = flat_activations.t() @ grad_n.reshape(-1, units)
        grad_scatter_denominator = flat_activations.t() @ grad_d.reshape(-1, units)
        per_step = (steps, unfolds, batch, units)
        grad_numerator = grad_n.reshape(per_step).sum(1)
        grad_denominator = grad_d.reshape(per_step).sum(1)
        grad_rate = (grad_n * inputs).reshape(per_step).sum(1)
        return (g, grad_numerator, grad_denominator, grad_rate, grad_gather, grad_offset,
                grad_scatter_numerator, grad_scatter_denominator, None)


class LTC(nn.Module):
    """LTC recurrent core: an affine map per input, the cell, and an affine map per motor neuron.

    Shapes: ``forward(inputs (B, T, S), elapsed (B, T), state (B, N) or None)`` returns
    ``(outputs (B, T, O), state (B, N))``; ``step`` does the same for one time step with
    (B, S), (B,) and (B, O). The outputs are the motor neurons' potentials after the output
    map, which is how a policy reads its commands.
    """

    def __init__(self, wiring: Wiring, ode_unfolds: int = 6,
                 generator: Optional[torch.Generator] = None,
                 sensory_sigma: Tuple[float, float] = SENSORY_SIGMA):
        super().__init__()
        self.wiring = wiring
        self.cell = LTCCell(wiring, ode_unfolds, generator, sensory_sigma)
        self.input_weight = nn.Parameter(torch.ones(wiring.input_size))
        self.input_bias = nn.Parameter(torch.zeros(wiring.input_size))
        self.output_weight = nn.Parameter(torch.ones(wiring.output_size))
        self.output_bias = nn.Parameter(torch.zeros(wiring.output_size))
        self.state_size = wiring.units
        self.neuron_count = wiring.units
        self.output_size = wiring.output_size
        # Without gradients on the CPU, run whole steps in the compiled kernel when it is
        # available (see liquid_control.model.native); export code switches this off.
        self.native_enabled = True
        self._native_key = None
        self._native_pack = None
        self._native_tensors = None
        self._inference_key = None
        self._inference_pack = None

    def __getstate__(self):
        # The kernel's ctypes struct cannot be copied or pickled; copies rebuild it.
        state = dict(self.__dict__)
        state.update(_native_key=None, _native_pack=None, _native_tensors=None,
                     _inference_key=None, _inference_pack=None)
        return state

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Return the resting state, zeros of shape (batch_size, N)."""
        return self.input_weight.new_zeros(batch_size, self.state_size)

    def neuron_states(self, state: torch.Tensor) -> torch.Tensor:
        """Return the neuron potentials (B, N); for the LTC they are the state itself."""
        return state

    def _map_output(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, :self.output_size] * self.output_weight + self.output_bias

    def step(self, inputs: torch.Tensor, elapsed: torch.Tensor,
             state: Optional[torch.Tensor] = None):
        """Advance one step: inputs (B, S), elapsed (B,) -> (outputs (B, O), state (B, N))."""
        if state is None:
            state = self.initial_state(inputs.shape[0])
        if self._inference_only():
            if self._native_usable(inputs, elapsed, state):
                outputs, state = self._run_native(inputs[:, None], elapsed.reshape(-1, 1),
                                                  state)
                return outputs[:, 0], state
            return self._step_inference(inputs, elapsed, state)
        mapped = torch.addcmul(self.input_bias, inputs, self.input_weight)
        state = self.cell(mapped, state, elapsed)
        return self._map_output(state), state

    def forward(self, inputs: torch.Tensor, elapsed: torch.Tensor,
                state: Optional[torch.Tensor] = None):
        """Run a sequence: inputs (B, T, S), elapsed (B, T) -> (outputs (B, T, O), state)."""
        if state is None:
            state = self.initial_state(inputs.shape[0])
        if self._inference_only() and self._native_usable(inputs, elapsed, state):
            return self._run_native(inputs, elapsed, state)
        # Positivity transforms, matrices and the sensory terms of all T steps at once;
        # only the unfolds run step by step.
        matrices = self.cell.matrices()
        mapped = torch.addcmul(self.input_bias, inputs, self.input_weight)
        numerator, denominator, rate = self.cell.prepare(
            mapped.transpose(0, 1), elapsed.transpose(0, 1), matrices)  # (T, B, N) each
        states = self.cell.unfold(state, numerator, denominator, rate, matrices)
        states = states.transpose(0, 1)  # (B, T, N)
        outputs = states[..., :self.output_size] * self.output_weight + self.output_bias
        return outputs, states[:, -1]

    # Inference paths (no gradients) ----------------------------------------------------

    def _inference_only(self) -> bool:
        # Tracing and export must see the plain operations, so they never take these paths.
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        return not torch.compiler.is_compiling()

    def _weights_key(self) -> list:
        if self._native_tensors is None:
            self._native_tensors = list(self.parameters())
        # In-place updates (optimiser steps, load_state_dict) bump a tensor's _version.
        return [self.cell.ode_unfolds] + [(p.data_ptr(), p._version)
                                          for p in self._native_tensors]

    def _step_inference(self, inputs: torch.Tensor, elapsed: torch.Tensor,
                        state: torch.Tensor):
        """Run one step in PyTorch with the input map folded into the sensory synapses.

        Same values as the training path with about a third fewer tensor operations,
        for machines without the compiled kernel.
        """
        key = self._weights_key()
        if key != self._inference_key:
            m = self.cell._build_matrices()
            self._inference_pack = (
                self.input_weight[:, None] * m.sensory_gather,  # (S, Es)
                self.input_bias[None, :] @ m.sensory_gather + m.sensory_offset,  # (1, Es)
                m.sensory_scatter, m.leak, m.capacitance * self.cell.ode_unfolds,
                m.gather, m.offset,
                torch.cat([m.scatter_numerator, m.scatter_denominator], dim=1),  # (E, 2N)
            )
            self._inference_key = key
        (sensory_gather, sensory_offset, sensory_scatter, leak, capacitance_unfolds,
         gather, offset, scatter) = self._inference_pack
        units = self.cell.units

        activation = torch.sigmoid(torch.addmm(sensory_offset, inputs, sensory_gather))
        constant = torch.addmm(leak, activation, sensory_scatter)  # (B, 2N)
        rate = capacitance_unfolds / elapsed.reshape(-1, 1).clamp_min(MIN_ELAPSED)  # C / h
        constant[:, units:] += rate
        v = state
        for _ in range(self.cell.ode_unfolds):
            s = torch.sigmoid(torch.addmm(offset, v, gather))  # (B, E)
            sums = torch.addmm(constant, s, scatter)  # (B, 2N)
            v = torch.addcmul(sums[:, :units], rate, v).div_(sums[:, units:])
        return self._map_output(v), v

    def _native_usable(self, *tensors: torch.Tensor) -> bool:
        if not self.native_enabled:
            return False
        if any(t.dtype != torch.float32 or t.device.type != 'cpu' for t in tensors):
            return False
        return native.load_kernel() is not None

    def _native_parameters(self):
        """Return the kernel's parameter struct, rebuilt when the weights change."""
        key = self._weights_key()
        if key == self._native_key:
            return self._native_pack[0]

        cell = self.cell
        sensory = cell.wiring.sensory_synapses()
        internal = cell.wiring.synapses()
        sensory_weight = F.softplus(cell.sensory_weight)
        weight = F.softplus(cell.weight)
        leak = F.softplus(cell.leak_conductance)
        arrays = {
            'input_weight': self.input_weight, 'input_bias': self.input_bias,
            'output_weight': self.output_weight, 'output_bias': self.output_bias,
            'sensory_source': sensory[:, 0], 'sensory_target': sensory[:, 1],
            'sensory_sigma': cell.sensory_sigma,
            'sensory_offset': -cell.sensory_sigma * cell.sensory_mu,
            'sensory_weight_erev': sensory_weight * cell.sensory_erev,
            'sensory_weight': sensory_weight,
            'source': internal[:, 0], 'target': internal[:, 1],
            'sigma': cell.sigma, 'offset': -cell.sigma * cell.mu,
            'weight_erev': weight * cell.erev, 'weight': weight,
            'leak_numerator': leak * cell.resting_potential, 'leak_denominator': leak,
            'capacitance': F.softplus(cell.capacitance),
        }

        keep = []
        pointers = {}
        for name, value in arrays.items():
            if isinstance(value, np.ndarray):
                tensor = torch.as_tensor(value.astype(np.int32))
                pointer_type = ctypes.POINTER(ctypes.c_int)
            else:
                tensor = value.detach().to(torch.float32).contiguous().clone()
                pointer_type = ctypes.POINTER(ctypes.c_float)
            keep.append(tensor)
            pointers[name] = ctypes.cast(tensor.data_ptr(), pointer_type)

        parameters = native.Parameters(
            inputs=cell.input_size, units=cell.units, outputs=self.output_size,
            sensory_count=len(sensory), synapse_count=len(internal),
            unfolds=cell.ode_unfolds, min_elapsed=MIN_ELAPSED, **pointers)
        # The struct points into these tensors, so they live as long as it does.
        self._native_pack = (parameters, keep)
        self._native_key = key
        return parameters

    def _run_native(self, inputs: torch.Tensor, elapsed: torch.Tensor, state: torch.Tensor):
        # inputs (B, T, S), elapsed (B, T), state (B, N) -> (outputs (B, T, O), state (B, N))
        batch, steps = inputs.shape[:2]
        parameters = self._native_parameters()
        inputs = inputs.contiguous()
        elapsed = elapsed.reshape(batch, steps).contiguous()
        final = state.clone(memory_format=torch.contiguous_format)
        outputs = inputs.new_empty(batch, steps, self.output_size)
        work = inputs.new_empty(5 * self.cell.units + self.cell.input_size)
        native.load_kernel().ltc_run(ctypes.byref(parameters), batch, steps,
                                     inputs.data_ptr(), elapsed.data_ptr(), final.data_ptr(),
                                     outputs.data_ptr(), work.data_ptr())
        return outputs, final

    def parameter_counts(self) -> dict:
        """Count trainable parameters of the cell ('recurrent') and the affine maps ('head')."""
        recurrent = self.cell.parameter_count()
        head = sum(p.numel() for p in (self.input_weight, self.input_bias,
                                       self.output_weight, self.output_bias))
        return {'recurrent': recurrent, 'head': head}
