"""The driving policy: conv encoder, optional IMU input, a recurrent core and output scaling.

``PolicyConfig`` describes the architecture as plain values and is stored in every
checkpoint; ``build_policy(config)`` builds the same network from it.

Data flow for one step (B samples)::

    frame (B, 3, H, W) in [0, 1] -> Encoder -> features (B, F), standardised
    imu (B, 6) -> standardised (missing readings become 0, the training mean)
    [features, imu] (B, S) + elapsed dt (B,) seconds / dt_reference_s -> core
    core outputs (B, O), normalised -> * output_std + output_mean -> commands in units

IMU order: angular velocity x, y, z (rad/s), then linear acceleration x, y, z (m/s^2).

With ``frame_gap`` k > 0 the encoder also sees the frame of k steps earlier (its input is
the current frame and the change since then, see ``encoder.py``). The last k frames then
live in the state after the core's own values, followed by a flag that is 1 once they
contain frames. A sequence that starts from no state, or from the zero state, uses its first
frame as the earlier one until k frames have arrived. The state stays a single
(B, S) tensor, and whoever carries the state carries the frames too.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from liquid_control.errors import ConfigError, reject_unknown_keys
from liquid_control.model import wirings
from liquid_control.model.baselines import FeedForward, GatedRecurrent
from liquid_control.model.cfc import WiredCfC
from liquid_control.model.encoder import (DEFAULT_CHANNELS, DEFAULT_KERNEL_SIZES,
                                          DEFAULT_STRIDES, Encoder, conv_output_size)
from liquid_control.model.ltc import LTC, SENSORY_SIGMA

FAMILIES = ('ncp_ltc', 'ncp_cfc', 'fc_ltc', 'lstm', 'gru', 'cnn')
IMU_SIZE = 6
MAX_FRAME_GAP = 10
# The maximum tensor elements that building a policy may allocate, as estimate_elements
# counts them. The default ncp_ltc policy allocates about 90,000, the models of the docs and
# benchmarks below 1 million, and 100 million take 400 MB as float32. Training and
# load_checkpoint both apply it (size_limit_problem), so a model that trains also loads.
MAX_ELEMENTS = 100_000_000
IMU_FIELDS = ('angular_velocity_x', 'angular_velocity_y', 'angular_velocity_z',
              'linear_acceleration_x', 'linear_acceleration_y', 'linear_acceleration_z')


def default_encoder() -> Dict[str, Any]:
    """Return the encoder settings of the NCP conv head (5 convolutions, 8 x 4 features)."""
    return {'channels': list(DEFAULT_CHANNELS), 'kernel_sizes': list(DEFAULT_KERNEL_SIZES),
            'strides': list(DEFAULT_STRIDES), 'features_per_channel': 4, 'dropout': 0.0}


def default_preprocessing() -> Dict[str, Any]:
    """Return the default preprocessing: the whole frame resized to 66 x 200 (height x width).

    The keys are those of ``liquid_control.data.preprocess.Preprocessing.to_dict()``.
    """
    return {'crop_top': 0.0, 'crop_bottom': 0.0, 'crop_left': 0.0, 'crop_right': 0.0,
            'height': 66, 'width': 200}


@dataclass
class PolicyConfig:
    """Architecture of a policy, as JSON-compatible values.

    - ``family``: one of ``FAMILIES``. ``ncp_ltc`` and ``ncp_cfc`` use ``wiring``, and
      ``fc_ltc`` is an LTC with a fully connected wiring. ``lstm`` and ``gru`` have
      ``units`` hidden units. ``cnn`` has a ``units``-wide hidden layer and no state.
    - ``units``: neurons of the recurrent core (for NCPs, including the motor neurons).
    - ``wiring``: settings for ``wirings.build_wiring`` (kind and its arguments).
    - ``ode_unfolds``: semi-implicit Euler sub-steps per LTC step.
    - ``sensory_sigma``: range (low, high) of the initial slopes of the LTC's input
      synapses, sigmoid(sigma (x - mu)). The inputs are standardised, so slopes near 1
      respond gradually over their range, while the ncps library's 3..8 switch sharply.
    - ``dt_reference_s``: seconds that make one time unit of the cell; an elapsed dt is
      divided by it, so at the nominal control rate each step is 1 time unit.
    - ``preprocessing``: crop and resize settings; ``height``/``width`` size the encoder.
    - ``frame_gap``: 0 for single frames; k > 0 also feeds the encoder the change since
      the frame k steps earlier (at 20 Hz, k = 2 is 0.1 s).
    """

    family: str = 'ncp_ltc'
    units: int = 19
    wiring: Dict[str, Any] = field(default_factory=lambda: {'kind': 'auto_ncp',
                                                            'sparsity': 0.5})
    ode_unfolds: int = 6
    sensory_sigma: Tuple[float, float] = SENSORY_SIGMA
    dt_reference_s: float = 0.05
    encoder: Dict[str, Any] = field(default_factory=default_encoder)
    imu_enabled: bool = False
    output_names: Tuple[str, ...] = ('angular_z', 'linear_x')
    output_units: Tuple[str, ...] = ('rad/s', 'm/s')
    preprocessing: Dict[str, Any] = field(default_factory=default_preprocessing)
    seed: int = 0
    frame_gap: int = 0

    def __post_init__(self) -> None:
        self.output_names = tuple(self.output_names)
        self.output_units = tuple(self.output_units)
        self.sensory_sigma = _sigma_range(self.sensory_sigma)
        if self.family not in FAMILIES:
            raise ConfigError(f'unknown policy family {self.family!r}; use one of {FAMILIES}')
        if not isinstance(self.units, int) or self.units < 1:
            raise ConfigError(f'policy units={self.units!r} is invalid: use an integer >= 1')
        if not isinstance(self.ode_unfolds, int) or not 1 <= self.ode_unfolds <= 100:
            raise ConfigError(f'ode_unfolds={self.ode_unfolds!r} is invalid: use 1..100')
        if isinstance(self.frame_gap, bool) or not isinstance(self.frame_gap, int) or \
                not 0 <= self.frame_gap <= MAX_FRAME_GAP:
            raise ConfigError(f'frame_gap={self.frame_gap!r} is invalid: use 0 (single frames) '
                              f'or a number of steps 1..{MAX_FRAME_GAP}')
        if not self.dt_reference_s > 0:
            raise ConfigError(f'dt_reference_s={self.dt_reference_s} is invalid: use a '
                              'positive number of seconds')
        if not self.output_names:
            raise ConfigError('output_names is empty: name at least one output')
        if len(set(self.output_names)) != len(self.output_names):
            raise ConfigError(f'output_names {list(self.output_names)} contain duplicates')
        if len(self.output_units) != len(self.output_names):
            raise ConfigError(f'output_units {list(self.output_units)} must have one unit per '
                              f'output name {list(self.output_names)}')
        unknown = set(self.encoder) - set(default_encoder())
        if unknown:
            raise ConfigError(f'unknown encoder settings {sorted(unknown)}; known: '
                              f'{sorted(default_encoder())}')
        for key in ('height', 'width'):
            value = self.preprocessing.get(key)
            if not isinstance(value, int) or value < 8:
                raise ConfigError(f'preprocessing {key}={value!r} is invalid: use an integer '
                                  '>= 8')

    @property
    def input_height(self) -> int:
        """Height in pixels of the frames the encoder takes."""
        return int(self.preprocessing['height'])

    @property
    def input_width(self) -> int:
        """Width in pixels of the frames the encoder takes."""
        return int(self.preprocessing['width'])

    @property
    def output_size(self) -> int:
        """Number of outputs (commands)."""
        return len(self.output_names)

    def to_dict(self) -> Dict[str, Any]:
        """Return a JSON-compatible dict; ``from_dict`` rebuilds an equal config."""
        values = asdict(self)
        values['output_names'] = list(self.output_names)
        values['output_units'] = list(self.output_units)
        values['sensory_sigma'] = list(self.sensory_sigma)
        return values

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'PolicyConfig':
        """Build a config from ``to_dict()`` output; raise ConfigError on unknown keys."""
        reject_unknown_keys(values, cls, 'policy')
        values = dict(values)
        if 'encoder' in values:
            values['encoder'] = {**default_encoder(), **values['encoder']}
        if 'preprocessing' in values:
            values['preprocessing'] = {**default_preprocessing(), **values['preprocessing']}
        return cls(**values)


def _sigma_range(value) -> Tuple[float, float]:
    """Check a (low, high) range of initial synapse slopes and return it as floats."""
    problem = f'sensory_sigma={value!r} is invalid: use [low, high] with 0 < low <= high'
    if isinstance(value, (str, bytes)) or not hasattr(value, '__len__') or len(value) != 2:
        raise ConfigError(problem)
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value):
        raise ConfigError(problem)
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ConfigError(problem)
    return low, high


def _as_elapsed(dt, batch: int, steps: Optional[int], reference: float,
                like: torch.Tensor) -> torch.Tensor:
    """Turn dt in seconds (scalar, (B,), (B, 1), (B, T) or (B, T, 1)) into time units."""
    dt = torch.as_tensor(dt, dtype=like.dtype, device=like.device)
    shape = (batch,) if steps is None else (batch, steps)
    if dt.dim() > len(shape) and dt.shape[-1] == 1:
        dt = dt.squeeze(-1)
    try:
        dt = dt.expand(shape) if dt.dim() <= len(shape) else dt.reshape(shape)
    except RuntimeError as error:
        raise ValueError(f'dt of shape {tuple(dt.shape)} does not fit the batch shape '
                         f'{shape}') from error
    return dt * (1.0 / reference)


class Policy(nn.Module):
    """Encoder + recurrent core + output scaling; see the module docstring for the data flow.

    All buffers (normalisation statistics) are saved in checkpoints. Outputs are in the
    physical units of ``output_units`` unless a method is asked for normalised values.
    """

    def __init__(self, config: PolicyConfig, wiring: Optional[wirings.Wiring] = None):
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        # Seed the global generator too, for layers that initialise from it (conv, linear).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoder = Encoder(config.input_height, config.input_width,
                                   frames=2 if config.frame_gap else 1, **config.encoder)
            sensory_size = self.encoder.feature_count + (IMU_SIZE if config.imu_enabled else 0)
            self.wiring, self.core = _build_core(config, sensory_size, wiring, generator)

        # The frame history: frame_gap frames of 3 x H x W, then the flag.
        self.frame_size = 3 * config.input_height * config.input_width
        self.history_size = config.frame_gap * self.frame_size + 1 if config.frame_gap else 0
        features = self.encoder.feature_count
        outputs = config.output_size
        self.register_buffer('feature_mean', torch.zeros(features))
        self.register_buffer('feature_std', torch.ones(features))
        self.register_buffer('imu_mean', torch.zeros(IMU_SIZE))
        self.register_buffer('imu_std', torch.ones(IMU_SIZE))
        self.register_buffer('output_mean', torch.zeros(outputs))
        self.register_buffer('output_std', torch.ones(outputs))

    # Interface -------------------------------------------------------------------------

    @property
    def output_names(self) -> Tuple[str, ...]:
        """Names of the outputs, e.g. ('angular_z', 'linear_x')."""
        return self.config.output_names

    @property
    def output_units(self) -> Tuple[str, ...]:
        """Physical unit of each output, e.g. ('rad/s', 'm/s')."""
        return self.config.output_units

    @property
    def state_size(self) -> int:
        """Length S of the state vector of one sample: the core's, then the frame history."""
        return self.core.state_size + self.history_size

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Return the state before the first step, shape (batch_size, S)."""
        core = self.core.initial_state(batch_size)
        if not self.history_size:
            return core
        return torch.cat([core, core.new_zeros(batch_size, self.history_size)], dim=1)

    def neuron_states(self, state: torch.Tensor) -> torch.Tensor:
        """Return neuron activity (B, N): LTC/CfC potentials, LSTM/GRU hidden units."""
        return self.core.neuron_states(state[:, :self.core.state_size])

    def encoder_inputs(self, frames: torch.Tensor, state: Optional[torch.Tensor]):
        """Pair each frame with the frame ``frame_gap`` steps earlier.

        frames (B, T, 3, H, W), state (B, S) or None. Returns (encoder inputs
        (B, T, C, H, W), the history part of the next state (B, history_size)). C is 3,
        or 6 with a frame gap. Single-frame policies return the frames and an empty history.
        """
        gap = self.config.frame_gap
        batch, steps = frames.shape[:2]
        if not gap:
            return frames, frames.new_zeros(batch, 0)
        first = frames[:, :1].expand(batch, gap, *frames.shape[2:])
        if state is None:
            history = first
        else:
            self._check_state(state)
            stored = state[:, self.core.state_size:]
            filled = stored[:, -1:].reshape(batch, 1, 1, 1, 1)
            history = stored[:, :-1].reshape(first.shape)
            # A zero flag (no frames yet) falls back to the first frame, without a branch
            # on the values, so exported graphs take the same path.
            history = filled * history + (1.0 - filled) * first
        sequence = torch.cat([history, frames], dim=1)  # (B, gap + T, 3, H, W)
        inputs = torch.cat([frames, sequence[:, :steps]], dim=2)
        kept = sequence[:, steps:].reshape(batch, -1)
        return inputs, torch.cat([kept, kept.new_ones(batch, 1)], dim=1)

    def _check_state(self, state: torch.Tensor) -> None:
        if state.dim() != 2 or state.shape[1] != self.state_size:
            raise ValueError(f'state must have shape (B, {self.state_size}), got '
                             f'{tuple(state.shape)}')

    def _split_state(self, state: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Return the core's part of ``state`` (or None)."""
        if state is None or not self.history_size:
            return state
        self._check_state(state)
        return state[:, :self.core.state_size]

    def _join_state(self, core_state: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return torch.cat([core_state, history], dim=1) if self.history_size else core_state

    def set_normalization(self, feature_mean=None, feature_std=None, imu_mean=None,
                          imu_std=None, output_mean=None, output_std=None) -> None:
        """Set the standardisation statistics; arguments left as None keep their values.

        Features (F,) and IMU readings (6,) are standardised before the core. The encoder
        already ends in a layer norm, so the identity default for features is usable.
        Outputs (O,) are the training targets' mean and std, which turn the core's
        normalised outputs into physical units. Standard deviations must be positive.
        """
        for name, value in (('feature_mean', feature_mean), ('feature_std', feature_std),
                            ('imu_mean', imu_mean), ('imu_std', imu_std),
                            ('output_mean', output_mean), ('output_std', output_std)):
            if value is None:
                continue
            buffer = getattr(self, name)
            tensor = torch.as_tensor(value, dtype=buffer.dtype).reshape(-1)
            if tensor.shape != buffer.shape:
                raise ConfigError(f'{name} has {tensor.numel()} values, expected '
                                  f'{buffer.numel()}')
            if not torch.isfinite(tensor).all():
                raise ConfigError(f'{name} contains NaN or infinite values: {tensor.tolist()}')
            if name.endswith('_std') and not (tensor > 0).all():
                raise ConfigError(f'{name} must be positive, got {tensor.tolist()}')
            buffer.copy_(tensor.to(buffer.device))

    def normalize_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """Turn physical outputs (..., O) into the core's normalised targets."""
        return (outputs - self.output_mean) / self.output_std

    def denormalize_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """Turn the core's normalised outputs (..., O) into physical units."""
        return outputs * self.output_std + self.output_mean

    # Computation -----------------------------------------------------------------------

    def _sensory_inputs(self, features: torch.Tensor, imu: Optional[torch.Tensor]):
        # features (..., F), imu (..., 6) or None -> (..., S)
        features = (features - self.feature_mean) / self.feature_std
        if not self.config.imu_enabled:
            return features
        if imu is None:
            imu_inputs = features.new_zeros(features.shape[:-1] + (IMU_SIZE,))
        else:
            if imu.shape[-1] != IMU_SIZE or imu.shape[:-1] != features.shape[:-1]:
                raise ValueError(f'imu must have shape {tuple(features.shape[:-1])} + (6,), '
                                 f'got {tuple(imu.shape)}')
            imu_inputs = (imu.to(features.dtype) - self.imu_mean) / self.imu_std
            # A missing reading (NaN) becomes 0, the training mean.
            imu_inputs = torch.nan_to_num(imu_inputs, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.cat([features, imu_inputs], dim=-1)

    def forward(self, frames: torch.Tensor, imu: Optional[torch.Tensor], dt,
                state: Optional[torch.Tensor] = None, denormalize: bool = True):
        """Run a sequence.

        frames (B, T, 3, H, W) in [0, 1], imu (B, T, 6) or None, dt (B, T) seconds since
        the previous step, state (B, S) or None for the initial state. Returns
        (outputs (B, T, O), final state (B, S)); outputs are in physical units unless
        ``denormalize`` is False.
        """
        if frames.dim() != 5:
            raise ValueError(f'frames must have shape (B, T, 3, H, W), got {tuple(frames.shape)}')
        batch, steps = frames.shape[:2]
        encoder_inputs, history = self.encoder_inputs(frames, state)
        features = self.encoder(encoder_inputs.reshape((batch * steps,)
                                                       + encoder_inputs.shape[2:]))
        outputs, core_state = self._core_sequence(features.reshape(batch, steps, -1), imu, dt,
                                                  self._split_state(state), denormalize)
        return outputs, self._join_state(core_state, history)

    def forward_features(self, features: torch.Tensor, imu: Optional[torch.Tensor], dt,
                         state: Optional[torch.Tensor] = None, denormalize: bool = True):
        """Run a sequence from encoder features (B, T, F) instead of frames.

        Same as ``forward`` after the encoder, for callers that cache features. A frame
        history in ``state`` passes through unchanged, as in ``step_features``.
        """
        if features.dim() != 3:
            raise ValueError(f'features must have shape (B, T, F), got {tuple(features.shape)}')
        outputs, core_state = self._core_sequence(features, imu, dt, self._split_state(state),
                                                  denormalize)
        return outputs, self._with_history(core_state, state)

    def _core_sequence(self, features, imu, dt, core_state, denormalize: bool):
        batch, steps = features.shape[:2]
        inputs = self._sensory_inputs(features, imu)  # (B, T, S)
        elapsed = _as_elapsed(dt, batch, steps, self.config.dt_reference_s, inputs)
        outputs, core_state = self.core(inputs, elapsed, core_state)
        return (self.denormalize_outputs(outputs) if denormalize else outputs), core_state

    def step(self, frame: torch.Tensor, imu: Optional[torch.Tensor], dt,
             state: Optional[torch.Tensor] = None, denormalize: bool = True):
        """Run one control step.

        frame (B, 3, H, W) in [0, 1], imu (B, 6) or None, dt (B,) seconds since the
        previous step (a float applies to every sample), state (B, S) or None. Returns
        (outputs (B, O) in physical units unless ``denormalize`` is False, state (B, S)).
        """
        if frame.dim() != 4:
            raise ValueError(f'frame must have shape (B, 3, H, W), got {tuple(frame.shape)}')
        encoder_inputs, history = self.encoder_inputs(frame.unsqueeze(1), state)
        outputs, core_state = self._core_step(self.encoder(encoder_inputs[:, 0]), imu, dt,
                                              self._split_state(state), denormalize)
        return outputs, self._join_state(core_state, history)

    def step_features(self, features: torch.Tensor, imu: Optional[torch.Tensor], dt,
                      state: Optional[torch.Tensor] = None, denormalize: bool = True):
        """Run one control step from encoder features (B, F) instead of a frame.

        Same as ``step`` after the encoder, for callers that cache features. A frame
        history in ``state`` passes through unchanged, since no frame comes in.
        """
        outputs, core_state = self._core_step(features, imu, dt, self._split_state(state),
                                              denormalize)
        return outputs, self._with_history(core_state, state)

    def _with_history(self, core_state: torch.Tensor, state: Optional[torch.Tensor]):
        """Append the frame history of ``state`` (zeros without a state) to ``core_state``."""
        if not self.history_size:
            return core_state
        if state is None:
            history = core_state.new_zeros(core_state.shape[0], self.history_size)
        else:
            history = state[:, self.core.state_size:]
        return torch.cat([core_state, history], dim=1)

    def _core_step(self, features, imu, dt, core_state, denormalize: bool):
        batch = features.shape[0]
        inputs = self._sensory_inputs(features, imu)  # (B, S)
        elapsed = _as_elapsed(dt, batch, None, self.config.dt_reference_s, inputs)
        outputs, core_state = self.core.step(inputs, elapsed, core_state)  # (B, O), (B, S)
        return (self.denormalize_outputs(outputs) if denormalize else outputs), core_state

    def parameter_counts(self) -> Dict[str, int]:
        """Return trainable parameters per block: 'encoder', 'recurrent', 'head', 'total'."""
        encoder = sum(p.numel() for p in self.encoder.parameters() if p.requires_grad)
        counts = {'encoder': encoder, **self.core.parameter_counts()}
        # The cores count only weights that exist in their wiring (a CfC's masked-out
        # entries are stored but never used), so the total is the sum of the blocks.
        counts['total'] = counts['encoder'] + counts['recurrent'] + counts['head']
        return counts

    def describe(self) -> str:
        """Return a multi-line summary of the architecture for logs and ``inspect``."""
        config = self.config
        counts = self.parameter_counts()
        map_height, map_width = self.encoder.head.map_shape
        output_text = ', '.join(f'{name} [{unit}]' for name, unit in
                                zip(config.output_names, config.output_units))
        lines = [
            f'family: {config.family}',
            f'input: {config.input_height} x {config.input_width} RGB frames'
            + (f', with the change since {config.frame_gap} steps earlier'
               if config.frame_gap else '')
            + (' + IMU (6)' if config.imu_enabled else ''),
            f'encoder: {len(self.encoder.head.convolutions)} convolutions, last map '
            f'{map_height} x {map_width}, {self.encoder.feature_count} features',
            f'outputs: {output_text}',
            f'state size: {self.state_size}',
        ]
        if self.wiring is not None:
            lines.append(f'wiring: {self.wiring.describe()}')
        if config.family in ('ncp_ltc', 'fc_ltc'):
            lines.append(f'ode unfolds: {config.ode_unfolds}, time unit: '
                         f'{config.dt_reference_s} s')
        lines.append('parameters: ' + ', '.join(f'{key} {value:,}'
                                                for key, value in counts.items()))
        return '\n'.join(lines)


def _build_core(config: PolicyConfig, sensory_size: int,
                wiring: Optional[wirings.Wiring], generator: torch.Generator):
    """Return (wiring or None, core module) for the configured family."""
    outputs = config.output_size
    family = config.family
    if family in ('ncp_ltc', 'ncp_cfc', 'fc_ltc'):
        if wiring is None:
            spec = dict(config.wiring)
            if family == 'fc_ltc':
                spec = {'kind': 'fully_connected'}
            wiring = wirings.build_wiring(spec, sensory_size, config.units, outputs,
                                          seed=config.seed)
        _check_wiring(wiring, sensory_size, config)
        if family == 'ncp_cfc':
            return wiring, WiredCfC(wiring, generator=generator)
        return wiring, LTC(wiring, config.ode_unfolds, generator, config.sensory_sigma)
    if wiring is not None:
        raise ConfigError(f'policy family {family} takes no wiring')
    if family in ('lstm', 'gru'):
        return None, GatedRecurrent(family, sensory_size, config.units, outputs)
    return None, FeedForward(sensory_size, config.units, outputs)


def _check_wiring(wiring: wirings.Wiring, sensory_size: int, config: PolicyConfig) -> None:
    if wiring.input_size != sensory_size:
        raise ConfigError(f'wiring has {wiring.input_size} inputs but the policy feeds '
                          f'{sensory_size} (encoder features + IMU)')
    if wiring.units != config.units:
        raise ConfigError(f'wiring has {wiring.units} neurons but units={config.units}')
    if wiring.output_size != config.output_size:
        raise ConfigError(f'wiring has {wiring.output_size} motor neurons but the policy '
                          f'has {config.output_size} outputs')


def build_policy(config: PolicyConfig, wiring: Optional[wirings.Wiring] = None) -> Policy:
    """Build a policy from its config; pass ``wiring`` to reuse a stored wiring exactly."""
    return Policy(config, wiring)


def count_encoder_parameters(config: PolicyConfig) -> int:
    """Return the parameter count of the encoder that ``config`` describes, without building it.

    It equals the count of ``build_policy(config).encoder`` for every config that builds.
    """
    settings = config.encoder
    in_channels = 6 if config.frame_gap else 3
    height, width = config.input_height, config.input_width
    count = 0
    for out_channels, kernel_size, stride in zip(settings['channels'], settings['kernel_sizes'],
                                                 settings['strides']):
        count += in_channels * out_channels * kernel_size * kernel_size + out_channels
        height = conv_output_size(height, kernel_size, stride)
        width = conv_output_size(width, kernel_size, stride)
        in_channels = out_channels
    # The per-channel dense layers: an (H W, k) weight and k biases per channel.
    return count + in_channels * (height * width + 1) * settings['features_per_channel']


def estimate_elements(config: PolicyConfig,
                      synapse_counts: Optional[Tuple[int, int]] = None) -> int:
    """Estimate from above the tensor elements that ``build_policy(config)`` allocates.

    Counts parameters, normalisation buffers, the wiring's matrices and the cores' helper
    tensors (the LTC's one-hot synapse matrices, the CfC's masks), so a caller can reject
    a config too large to build before building it. ``synapse_counts`` (internal,
    sensory) of a stored wiring tighten the LTC's bound. Without them every possible
    synapse is counted.
    """
    channels = config.encoder['channels']
    features = (channels[-1] if channels else 0) * config.encoder['features_per_channel']
    sensory = features + (IMU_SIZE if config.imu_enabled else 0)
    units, outputs = config.units, config.output_size
    total = count_encoder_parameters(config) + 2 * (features + IMU_SIZE + outputs)
    if config.family in ('ncp_ltc', 'ncp_cfc', 'fc_ltc'):
        total += units * (units + sensory)  # the wiring's adjacency matrices
    if config.family in ('ncp_ltc', 'fc_ltc'):
        internal, sensory_synapses = synapse_counts or (units * units, sensory * units)
        # Per synapse four parameters and a row of the edge list (three values), then
        # the one-hot gather and scatter matrices of ltc.LTCCell.
        total += 7 * (internal + sensory_synapses) + 3 * units + 2 * (sensory + outputs)
        total += sensory_synapses * (sensory + units) + 2 * internal * units
    elif config.family == 'ncp_cfc':
        # Each layer's three heads form a dense (3 n, inputs + n) weight. With its mask and
        # the copies made while initialising, that is about 4 such matrices, and over all
        # layers n (inputs + n) adds up to at most N (S + 2 N).
        total += 12 * units * (sensory + 2 * units) + 3 * units + 2 * outputs
    elif config.family in ('lstm', 'gru'):
        gates = 4 if config.family == 'lstm' else 3
        total += gates * units * (sensory + 1 + units + 2) + outputs * (units + 1)
    else:
        total += units * (sensory + 1) + outputs * (units + 1)
    return total


def size_limit_problem(config: PolicyConfig,
                       synapse_counts: Optional[Tuple[int, int]] = None) -> Optional[str]:
    """Return how the policy of ``config`` exceeds MAX_ELEMENTS, or None when it fits.

    ``synapse_counts`` are those of ``estimate_elements``.
    """
    elements = estimate_elements(config, synapse_counts)
    if elements <= MAX_ELEMENTS:
        return None
    return (f'its {config.family} policy (units={config.units}, encoder channels '
            f'{config.encoder["channels"]}, kernel sizes {config.encoder["kernel_sizes"]}, '
            f'input {config.input_height} x {config.input_width}) would allocate about '
            f'{elements:,} tensor elements, more than the limit of {MAX_ELEMENTS:,}')


def sensory_size(config: PolicyConfig) -> int:
    """Return the number of inputs of the recurrent core: encoder features, then IMU."""
    channels = config.encoder['channels']
    features = (channels[-1] if channels else 0) * config.encoder['features_per_channel']
    return features + (IMU_SIZE if config.imu_enabled else 0)


def wiring_synapse_counts(config: PolicyConfig) -> Optional[Tuple[int, int]]:
    """Return the (internal, sensory) synapse counts of the wiring ``build_policy`` makes.

    Returns None for families without a wiring, and for wirings whose adjacency matrices
    alone would have more than MAX_ELEMENTS entries, which are not built.
    """
    if config.family not in ('ncp_ltc', 'ncp_cfc', 'fc_ltc'):
        return None
    sensory = sensory_size(config)
    if config.units * (config.units + sensory) > MAX_ELEMENTS:
        return None
    # The same wiring as _build_core's: the same settings, sizes and seed.
    spec = {'kind': 'fully_connected'} if config.family == 'fc_ltc' else dict(config.wiring)
    wiring = wirings.build_wiring(spec, sensory, config.units, config.output_size,
                                  seed=config.seed)
    return wiring.synapse_count, wiring.sensory_synapse_count
