"""Closed-form continuous-time (CfC) core on an NCP wiring.

A CfC neuron replaces the LTC's ODE solve by the closed-form approximation of Hasani et
al., "Closed-form continuous-time neural networks", Nature Machine Intelligence 4, 2022:

    x(t + dt) = sigmoid(-f dt) * g + (1 - sigmoid(-f dt)) * h,

where f, g and h are functions of the step's input and the previous state: here one
masked linear layer each, with tanh on g and h. A long elapsed time moves the state
towards h, a short one keeps it near the mix of g and h.

The wiring's layers are evaluated in order within one step: inter, then command, then
motor neurons. Each layer reads the layer before it through the wiring's synapses, and
the first layer reads the sensory inputs. It also reads its own previous state through
the wiring's synapses within the layer plus each neuron's self-connection. Weights
outside the wiring are masked to zero and get no gradient.
"""

from typing import List, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from liquid_control.errors import ConfigError
from liquid_control.model.wirings import Wiring


class MaskedLinear(nn.Module):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask: (B, in) -> (B, out)."""

    def __init__(self, mask: np.ndarray, generator: Optional[torch.Generator] = None):
        super().__init__()
        out_features, in_features = mask.shape
        bound = 1.0 / max(1.0, float(mask.sum(axis=1).mean())) ** 0.5
        weight = (torch.rand(out_features, in_features, generator=generator) * 2 - 1) * bound
        self.register_buffer('mask', torch.as_tensor(mask, dtype=torch.float32),
                             persistent=False)
        self.weight = nn.Parameter(weight * self.mask)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, self.weight * self.mask, self.bias)

    def effective_parameter_count(self) -> int:
        """Number of weights inside the mask plus the biases."""
        return int(self.mask.sum().item()) + self.bias.numel()


class CfCLayer(nn.Module):
    """One wiring layer of CfC neurons: (input (B, I), state (B, n), elapsed (B, 1)) -> (B, n)."""

    def __init__(self, input_mask: np.ndarray, recurrent_mask: np.ndarray,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.size = recurrent_mask.shape[0]
        # input_mask is (I, n) and recurrent_mask (n, n), both source x target. The three
        # heads f, g and h share one masked layer with 3n outputs.
        mask = np.concatenate([input_mask, recurrent_mask], axis=0).T  # (n, I + n)
        self.heads = MaskedLinear(np.concatenate([mask, mask, mask], axis=0), generator)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor,
                elapsed: torch.Tensor) -> torch.Tensor:
        heads = self.heads(torch.cat([inputs, state], dim=1))  # (B, 3n)
        rate, start, target = heads.split(self.size, dim=1)
        gate = torch.sigmoid(-rate * elapsed)
        return gate * torch.tanh(start) + (1.0 - gate) * torch.tanh(target)


class WiredCfC(nn.Module):
    """CfC core on an NCP wiring with an affine map per motor neuron.

    Shapes: ``forward(inputs (B, T, S), elapsed (B, T), state (B, N) or None)`` returns
    ``(outputs (B, T, O), state (B, N))``; ``step`` does one step with (B, S) and (B,).
    """

    def __init__(self, wiring: Wiring, generator: Optional[torch.Generator] = None):
        super().__init__()
        if wiring.kind not in ('ncp', 'auto_ncp'):
            raise ConfigError(f'a CfC core needs a layered NCP wiring, got {wiring.kind}')
        later_layers = [index for _, indices in wiring.layers[1:] for index in indices]
        if wiring.sensory_adjacency[:, later_layers].any():
            raise ConfigError('invalid wiring for a CfC core: it has sensory synapses to later '
                              'layers, but a CfC feeds the inputs to its first layer only. Use '
                              'sensory_motor_fanin: 0, or an LTC family such as ncp_ltc')
        self.wiring = wiring
        self.state_size = wiring.units
        self.neuron_count = wiring.units
        self.output_size = wiring.output_size
        self.layer_indices: List[List[int]] = [indices for _, indices in wiring.layers]

        layers = []
        previous = None
        for indices in self.layer_indices:
            if previous is None:
                input_mask = wiring.sensory_adjacency[:, indices] != 0
            else:
                input_mask = wiring.adjacency[np.ix_(previous, indices)] != 0
            recurrent_mask = (wiring.adjacency[np.ix_(indices, indices)] != 0) | np.eye(
                len(indices), dtype=bool)
            layers.append(CfCLayer(input_mask.astype(np.float32),
                                   recurrent_mask.astype(np.float32), generator))
            previous = indices
        self.layers = nn.ModuleList(layers)

        order = [index for indices in self.layer_indices for index in indices]
        self.register_buffer('layer_order', torch.as_tensor(order, dtype=torch.long),
                             persistent=False)
        self.register_buffer('neuron_order', torch.as_tensor(np.argsort(order),
                                                             dtype=torch.long),
                             persistent=False)
        self.output_weight = nn.Parameter(torch.ones(wiring.output_size))
        self.output_bias = nn.Parameter(torch.zeros(wiring.output_size))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Return zeros of shape (batch_size, N)."""
        return self.output_weight.new_zeros(batch_size, self.state_size)

    def neuron_states(self, state: torch.Tensor) -> torch.Tensor:
        """Return the neuron states (B, N), which are the state itself."""
        return state

    def step(self, inputs: torch.Tensor, elapsed: torch.Tensor,
             state: Optional[torch.Tensor] = None):
        """Advance one step: inputs (B, S), elapsed (B,) -> (outputs (B, O), state (B, N))."""
        if state is None:
            state = self.initial_state(inputs.shape[0])
        elapsed = elapsed.reshape(-1, 1)
        layer_input = inputs
        new_states = []
        for layer, indices in zip(self.layers, self.layer_indices):
            layer_state = state[:, indices]
            layer_input = layer(layer_input, layer_state, elapsed)
            new_states.append(layer_input)
        state = torch.cat(new_states, dim=1)[:, self.neuron_order]
        outputs = state[:, :self.output_size] * self.output_weight + self.output_bias
        return outputs, state

    def forward(self, inputs: torch.Tensor, elapsed: torch.Tensor,
                state: Optional[torch.Tensor] = None):
        """Run a sequence: inputs (B, T, S), elapsed (B, T) -> (outputs (B, T, O), state)."""
        outputs = []
        for t in range(inputs.shape[1]):
            output, state = self.step(inputs[:, t], elapsed[:, t], state)
            outputs.append(output)
        return torch.stack(outputs, dim=1), state

    def parameter_counts(self) -> dict:
        """Return trainable weights inside the wiring ('recurrent') and of the output map."""
        recurrent = sum(layer.heads.effective_parameter_count() for layer in self.layers)
        return {'recurrent': recurrent,
                'head': self.output_weight.numel() + self.output_bias.numel()}
