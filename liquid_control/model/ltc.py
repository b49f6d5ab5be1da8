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

from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from liquid_control.model.wirings import Wiring

# Elapsed times below this many time units are treated as this value, which keeps C/h
# finite; the state then barely moves, as it should for an instant.
MIN_ELAPSED = 1e-6


def inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    """Return x with softplus(x) == value, for value > 0."""
    return value + torch.log(-torch.expm1(-value))


class SynapseMatrices(NamedTuple):
    """Per-forward constants derived from the parameters (positivity already applied).

    ``gather`` (rows, E) puts sigma_e at (source_e, e) so ``x @ gather + offset`` gives
    sigma (x_source - mu) for every synapse; ``scatter`` (E, 2N) sums w s E into the first
    N columns and w s into the last N columns of each synapse's target.
    """

    sensory_gather: torch.Tensor   # (S, Es)
    sensory_offset: torch.Tensor   # (1, Es)
    sensory_scatter: torch.Tensor  # (Es, 2N)
    gather: torch.Tensor           # (N, E)
    offset: torch.Tensor           # (1, E)
    scatter: torch.Tensor          # (E, 2N)
    leak: torch.Tensor             # (1, 2N): [g V, g]
    capacitance: torch.Tensor      # (1, N): C


class LTCCell(nn.Module):
    """LTC cell on a sparse wiring: inputs (B, S), state (B, N), elapsed (B,) -> state (B, N).

    Elapsed time is in the cell's time units (the policy divides seconds by its reference
    step). Capacitances, leak conductances and synaptic weights are softplus of
    unconstrained parameters, so they stay positive whatever the optimiser does.
    """

    def __init__(self, wiring: Wiring, ode_unfolds: int = 6,
                 generator: Optional[torch.Generator] = None):
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

        # Initial ranges: time constants C/g from about 0.4 to a few hundred time units,
        # steep sigmoids (sigma 3..8) centred at 0.3..0.8, reversal potentials at +-1 by
        # the synapse's polarity.
        n_sensory, n_internal, units = len(sensory), len(internal), self.units
        self.sensory_weight = nn.Parameter(inverse_softplus(uniform(n_sensory, 0.01, 1.0)))
        self.sensory_sigma = nn.Parameter(uniform(n_sensory, 3.0, 8.0))
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
        """Build the per-forward matrices; cached while gradients are off and weights unchanged."""
        if torch.is_grad_enabled():
            return self._build_matrices()
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if key != self._cache_key or self._cache is None:
            self._cache = self._build_matrices()
            self._cache_key = key
        return self._cache

    def _build_matrices(self) -> SynapseMatrices:
        sensory_weight = F.softplus(self.sensory_weight)
        weight = F.softplus(self.weight)
        leak = F.softplus(self.leak_conductance)

        def scatter(target: torch.Tensor, weight: torch.Tensor, erev: torch.Tensor):
            weighted = target * weight[:, None]
            return torch.cat([weighted * erev[:, None], weighted], dim=1)

        return SynapseMatrices(
            sensory_gather=self.sensory_source * self.sensory_sigma,
            sensory_offset=(-self.sensory_sigma * self.sensory_mu)[None, :],
            sensory_scatter=scatter(self.sensory_target, sensory_weight, self.sensory_erev),
            gather=self.source * self.sigma,
            offset=(-self.sigma * self.mu)[None, :],
            scatter=scatter(self.target, weight, self.erev),
            leak=torch.cat([leak * self.resting_potential, leak])[None, :],
            capacitance=F.softplus(self.capacitance)[None, :],
        )

    def forward(self, inputs: torch.Tensor, state: torch.Tensor, elapsed: torch.Tensor,
                matrices: Optional[SynapseMatrices] = None) -> torch.Tensor:
        """Advance ``state`` (B, N) by ``elapsed`` (B,) or (B, 1) time units.

        ``inputs`` (B, S) are held constant over the step.
        """
        m = self.matrices() if matrices is None else matrices
        units = self.units

        # Sensory synapses see the same input for the whole step: sum them once.
        sensory_activation = torch.sigmoid(torch.addmm(m.sensory_offset, inputs, m.sensory_gather))
        constant = torch.addmm(m.leak, sensory_activation, m.sensory_scatter)  # (B, 2N)

        # C/h per sample, then fold it into the denominator half of the constant term.
        elapsed = elapsed.reshape(-1, 1).clamp_min(MIN_ELAPSED)
        capacitance_rate = m.capacitance * (self.ode_unfolds / elapsed)  # (B, N)
        numerator_base, denominator_base = constant[:, :units], constant[:, units:]
        constant = torch.cat([numerator_base, denominator_base + capacitance_rate], dim=1)

        v = state
        for _ in range(self.ode_unfolds):
            activation = torch.sigmoid(torch.addmm(m.offset, v, m.gather))  # (B, E)
            sums = torch.addmm(constant, activation, m.scatter)  # (B, 2N)
            v = torch.addcmul(sums[:, :units], capacitance_rate, v) / sums[:, units:]
        return v

    def derivative(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Return dv/dt (B, N) of the ODE itself, for reference solvers and tests."""
        m = self._build_matrices()
        units = self.units
        sensory = torch.sigmoid(inputs @ m.sensory_gather + m.sensory_offset) @ m.sensory_scatter
        internal = torch.sigmoid(state @ m.gather + m.offset) @ m.scatter
        sums = sensory + internal
        leak = m.leak[:, units:]
        resting_term = m.leak[:, :units]
        current = resting_term - leak * state + sums[:, :units] - sums[:, units:] * state
        return current / m.capacitance

    def parameter_count(self) -> int:
        """Number of trainable parameters: 4 per synapse and 3 per neuron."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class LTC(nn.Module):
    """LTC recurrent core: an affine map per input, the cell, and an affine map per motor neuron.

    Shapes: ``forward(inputs (B, T, S), elapsed (B, T), state (B, N) or None)`` returns
    ``(outputs (B, T, O), state (B, N))``; ``step`` does the same for one time step with
    (B, S), (B,) and (B, O). The outputs are the motor neurons' potentials after the output
    map, which is how a policy reads its commands.
    """

    def __init__(self, wiring: Wiring, ode_unfolds: int = 6,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.wiring = wiring
        self.cell = LTCCell(wiring, ode_unfolds, generator)
        self.input_weight = nn.Parameter(torch.ones(wiring.input_size))
        self.input_bias = nn.Parameter(torch.zeros(wiring.input_size))
        self.output_weight = nn.Parameter(torch.ones(wiring.output_size))
        self.output_bias = nn.Parameter(torch.zeros(wiring.output_size))
        self.state_size = wiring.units
        self.neuron_count = wiring.units
        self.output_size = wiring.output_size

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
        mapped = torch.addcmul(self.input_bias, inputs, self.input_weight)
        state = self.cell(mapped, state, elapsed)
        return self._map_output(state), state

    def forward(self, inputs: torch.Tensor, elapsed: torch.Tensor,
                state: Optional[torch.Tensor] = None):
        """Run a sequence: inputs (B, T, S), elapsed (B, T) -> (outputs (B, T, O), state)."""
        if state is None:
            state = self.initial_state(inputs.shape[0])
        # Positivity transforms and gather/scatter matrices once per sequence, not per step.
        matrices = self.cell.matrices()
        mapped = torch.addcmul(self.input_bias, inputs, self.input_weight)
        outputs = []
        for t in range(inputs.shape[1]):
            state = self.cell(mapped[:, t], state, elapsed[:, t], matrices)
            outputs.append(self._map_output(state))
        return torch.stack(outputs, dim=1), state

    def parameter_counts(self) -> dict:
        """Count trainable parameters of the cell ('recurrent') and the affine maps ('head')."""
        recurrent = self.cell.parameter_count()
        head = sum(p.numel() for p in (self.input_weight, self.input_bias,
                                       self.output_weight, self.output_bias))
        return {'recurrent': recurrent, 'head': head}
