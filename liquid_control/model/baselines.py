"""Baseline recurrent cores (LSTM, GRU) and a feed-forward core, under the LTC core's interface.

Every core takes ``forward(inputs (B, T, S), elapsed (B, T), state (B, state_size) or None)``
and returns ``(outputs (B, T, O), state)``, with ``step`` for one time step, so the policy,
training and evaluation code treat all families alike.

The LSTM and GRU are discrete-time. They get the elapsed time as one extra input,
elapsed / reference step - 1, which is 0 at the nominal rate. So they can at least see
irregular timing, which the continuous-time cells integrate over.
"""

from typing import Optional

import torch
from torch import nn


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class GatedRecurrent(nn.Module):
    """LSTM or GRU core with a linear output head.

    State: (B, 2H) for the LSTM (hidden then cell state), (B, H) for the GRU.
    """

    def __init__(self, kind: str, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        if kind not in ('lstm', 'gru'):
            raise ValueError(f'unknown gated recurrent kind {kind!r}; use lstm or gru')
        self.kind = kind
        self.hidden_size = int(hidden_size)
        self.output_size = int(output_size)
        self.neuron_count = self.hidden_size
        self.state_size = self.hidden_size * (2 if kind == 'lstm' else 1)
        module = nn.LSTM if kind == 'lstm' else nn.GRU
        self.rnn = module(input_size + 1, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, output_size)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Return zeros of shape (batch_size, state_size)."""
        return self.head.weight.new_zeros(batch_size, self.state_size)

    def neuron_states(self, state: torch.Tensor) -> torch.Tensor:
        """Return the hidden units (B, H)."""
        return state[:, :self.hidden_size]

    def _split(self, state: torch.Tensor):
        if self.kind == 'lstm':
            hidden, cell = state[:, :self.hidden_size], state[:, self.hidden_size:]
            return (hidden.unsqueeze(0).contiguous(), cell.unsqueeze(0).contiguous())
        return state.unsqueeze(0).contiguous()

    def _join(self, rnn_state) -> torch.Tensor:
        if self.kind == 'lstm':
            return torch.cat([rnn_state[0][0], rnn_state[1][0]], dim=1)
        return rnn_state[0]

    def forward(self, inputs: torch.Tensor, elapsed: torch.Tensor,
                state: Optional[torch.Tensor] = None):
        """Run a sequence: inputs (B, T, S), elapsed (B, T) -> (outputs (B, T, O), state)."""
        if state is None:
            state = self.initial_state(inputs.shape[0])
        timing = (elapsed - 1.0).unsqueeze(-1)  # (B, T, 1); elapsed is in reference steps
        hidden, rnn_state = self.rnn(torch.cat([inputs, timing], dim=-1), self._split(state))
        return self.head(hidden), self._join(rnn_state)

    def step(self, inputs: torch.Tensor, elapsed: torch.Tensor,
             state: Optional[torch.Tensor] = None):
        """Advance one step: inputs (B, S), elapsed (B,) -> (outputs (B, O), state)."""
        outputs, state = self.forward(inputs.unsqueeze(1), elapsed.reshape(-1, 1), state)
        return outputs[:, 0], state

    def parameter_counts(self) -> dict:
        """Return trainable parameters of the recurrent layer and of the linear head."""
        return {'recurrent': _count(self.rnn), 'head': _count(self.head)}


class FeedForward(nn.Module):
    """Stateless core: a two-layer perceptron on each step's inputs (the CNN-only baseline).

    The state has size 0, so it passes through the same interface unchanged.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.output_size = int(output_size)
        self.neuron_count = int(hidden_size)
        self.state_size = 0
        self.hidden = nn.Linear(input_size, hidden_size)
        self.head = nn.Linear(hidden_size, output_size)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Return an empty state of shape (batch_size, 0)."""
        return self.head.weight.new_zeros(batch_size, 0)

    def neuron_states(self, state: torch.Tensor) -> torch.Tensor:
        """Return an empty (B, 0) tensor: this core keeps no state between steps."""
        return state

    def forward(self, inputs: torch.Tensor, elapsed: torch.Tensor,
                state: Optional[torch.Tensor] = None):
        """Map inputs (B, T, S) to (outputs (B, T, O), empty state (B, 0)); elapsed is unused."""
        if state is None:
            state = self.initial_state(inputs.shape[0])
        return self.head(torch.tanh(self.hidden(inputs))), state

    def step(self, inputs: torch.Tensor, elapsed: torch.Tensor,
             state: Optional[torch.Tensor] = None):
        """Map inputs (B, S) to (outputs (B, O), empty state (B, 0))."""
        outputs, state = self.forward(inputs.unsqueeze(1), elapsed.reshape(-1, 1), state)
        return outputs[:, 0], state

    def parameter_counts(self) -> dict:
        """Return trainable parameters: the hidden layer counts as 'recurrent' for comparison."""
        return {'recurrent': _count(self.hidden), 'head': _count(self.head)}
