"""Wirings: which neurons of a recurrent cell connect, and with which polarity.

A wiring is a plain numpy object with two signed adjacency matrices:

- ``sensory_adjacency`` of shape (input_size, units): synapse from input i to neuron j;
- ``adjacency`` of shape (units, units): synapse from neuron i to neuron j.

Entries are +1 (excitatory), -1 (inhibitory) or 0 (no synapse). The first
``output_size`` neurons are the motor neurons, whose states are the cell's outputs.

Every random choice draws from ``numpy.random.default_rng(seed)``, so the same
arguments give the same wiring, and ``to_dict()``/``from_dict()`` store the realised
synapses themselves, so a saved wiring reloads identically even if the sampling code
changes.

Neural circuit policy (NCP) wirings follow Lechner et al., "Neural circuit policies
enabling auditable autonomy", Nature Machine Intelligence 2, 2020: four layers
(sensory -> inter -> command -> motor) with a fixed fan-out per sensory and inter
neuron, recurrent synapses among the command neurons and a fixed fan-in per motor
neuron.
"""

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from liquid_control.errors import ConfigError

WIRING_FORMAT = 1
KINDS = ('ncp', 'auto_ncp', 'fully_connected', 'random')


class Wiring:
    """Signed sensory and recurrent adjacency of ``units`` neurons fed by ``input_size`` inputs.

    Layers are named groups of neuron indices used for drawing and for the layered CfC
    cell; ``layers[-1]`` is always the motor layer.
    """

    def __init__(self, kind: str, input_size: int, sensory_adjacency: np.ndarray,
                 adjacency: np.ndarray, output_size: int,
                 layers: List[Tuple[str, List[int]]], seed: int,
                 settings: Optional[Dict[str, Any]] = None):
        sensory_adjacency = np.asarray(sensory_adjacency, dtype=np.int8)
        adjacency = np.asarray(adjacency, dtype=np.int8)
        units = adjacency.shape[0]
        if adjacency.shape != (units, units):
            raise ConfigError(f'wiring adjacency must be square, got shape {adjacency.shape}')
        if sensory_adjacency.shape != (input_size, units):
            raise ConfigError(f'wiring sensory adjacency has shape {sensory_adjacency.shape}, '
                              f'expected ({input_size}, {units})')
        for name, matrix in (('adjacency', adjacency), ('sensory adjacency', sensory_adjacency)):
            if not np.isin(matrix, (-1, 0, 1)).all():
                raise ConfigError(f'wiring {name} may contain only -1, 0 and +1')
        if not 1 <= output_size <= units:
            raise ConfigError(f'wiring output_size={output_size} must be in 1..{units}')
        covered = sorted(index for _, indices in layers for index in indices)
        if covered != list(range(units)):
            raise ConfigError('wiring layers must list every neuron exactly once')
        self.kind = kind
        self.input_size = int(input_size)
        self.units = int(units)
        self.output_size = int(output_size)
        self.sensory_adjacency = sensory_adjacency
        self.adjacency = adjacency
        self.layers = [(str(name), [int(i) for i in indices]) for name, indices in layers]
        self.seed = int(seed)
        self.settings = dict(settings or {})

    # Counts and views ------------------------------------------------------------------

    @property
    def synapse_count(self) -> int:
        """Number of neuron-to-neuron synapses."""
        return int(np.count_nonzero(self.adjacency))

    @property
    def sensory_synapse_count(self) -> int:
        """Number of input-to-neuron synapses."""
        return int(np.count_nonzero(self.sensory_adjacency))

    @property
    def motor_neurons(self) -> List[int]:
        """Indices of the output neurons (always ``0 .. output_size - 1``)."""
        return list(range(self.output_size))

    def synapses(self) -> np.ndarray:
        """Return neuron-to-neuron synapses as (E, 3) rows of (source, target, polarity)."""
        return _edge_list(self.adjacency)

    def sensory_synapses(self) -> np.ndarray:
        """Return input-to-neuron synapses as (E, 3) rows of (input, target, polarity)."""
        return _edge_list(self.sensory_adjacency)

    def layer_of(self, neuron: int) -> str:
        """Return the name of the layer that contains ``neuron``."""
        for name, indices in self.layers:
            if neuron in indices:
                return name
        raise IndexError(f'neuron {neuron} is not in this wiring of {self.units} units')

    def describe(self) -> str:
        """Return a short human-readable summary: kind, sizes, layers and synapse counts."""
        layer_text = ', '.join(f'{len(indices)} {name}' for name, indices in self.layers)
        return (f'{self.kind} wiring (seed {self.seed}): {self.input_size} inputs -> '
                f'{self.units} neurons ({layer_text}); {self.sensory_synapse_count} sensory '
                f'and {self.synapse_count} internal synapses')

    # Serialisation ---------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """Return a JSON-compatible dict with the realised synapses (not only the seed)."""
        return {
            'format': WIRING_FORMAT,
            'kind': self.kind,
            'input_size': self.input_size,
            'units': self.units,
            'output_size': self.output_size,
            'seed': self.seed,
            'settings': dict(self.settings),
            'layers': [[name, list(indices)] for name, indices in self.layers],
            'synapses': self.synapses().tolist(),
            'sensory_synapses': self.sensory_synapses().tolist(),
        }

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'Wiring':
        """Rebuild a wiring from ``to_dict()`` output; raise ConfigError if it is inconsistent."""
        try:
            if values.get('format', WIRING_FORMAT) != WIRING_FORMAT:
                raise ConfigError(f'wiring format {values.get("format")} is not supported; '
                                  f'this version reads format {WIRING_FORMAT}')
            units = int(values['units'])
            input_size = int(values['input_size'])
            adjacency = _matrix_from_edges(values['synapses'], units, units, 'synapses')
            sensory = _matrix_from_edges(values['sensory_synapses'], input_size, units,
                                         'sensory_synapses')
            layers = [(name, list(indices)) for name, indices in values['layers']]
            return cls(values['kind'], input_size, sensory, adjacency,
                       int(values['output_size']), layers, int(values['seed']),
                       values.get('settings', {}))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f'invalid wiring dict: {error!r}') from error

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Wiring):
            return NotImplemented
        return (self.kind == other.kind and self.output_size == other.output_size
                and self.layers == other.layers
                and np.array_equal(self.adjacency, other.adjacency)
                and np.array_equal(self.sensory_adjacency, other.sensory_adjacency))

    def __repr__(self) -> str:
        return f'<Wiring {self.describe()}>'


def _edge_list(matrix: np.ndarray) -> np.ndarray:
    sources, targets = np.nonzero(matrix)
    return np.stack([sources, targets, matrix[sources, targets]], axis=1).astype(np.int64)


def _matrix_from_edges(edges, rows: int, columns: int, name: str) -> np.ndarray:
    matrix = np.zeros((rows, columns), dtype=np.int8)
    for source, target, polarity in edges:
        if not (0 <= source < rows and 0 <= target < columns and polarity in (-1, 1)):
            raise ConfigError(f'wiring {name} entry {(source, target, polarity)} is out of '
                              f'range for a {rows} x {columns} matrix')
        matrix[source, target] = polarity
    return matrix


def _polarity(rng: np.random.Generator, size=None, excitatory_fraction: float = 0.5):
    # +1 with probability excitatory_fraction, else -1.
    return np.where(rng.random(size) < excitatory_fraction, 1, -1).astype(np.int8)


def _check_positive(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f'wiring {name}={value!r} is invalid: use an integer >= {minimum}')
    return int(value)


# Builders ------------------------------------------------------------------------------


def ncp(input_size: int, inter_neurons: int, command_neurons: int, motor_neurons: int,
        sensory_fanout: int, inter_fanout: int, recurrent_command_synapses: int,
        motor_fanin: int, seed: int = 0, sensory_motor_fanin: int = 0) -> Wiring:
    """Build a neural circuit policy wiring: sensory -> inter -> command -> motor.

    Each input connects to ``sensory_fanout`` distinct inter neurons, and each inter
    neuron to ``inter_fanout`` distinct command neurons. ``recurrent_command_synapses``
    distinct (source, target) pairs, self-synapses allowed, connect command neurons among
    themselves. Each motor neuron receives ``motor_fanin`` distinct command neurons.
    A neuron left without an incoming synapse (or a command neuron without an outgoing
    one) gets one extra synapse from (to) a random neuron of the adjacent layer, so every
    input can reach a motor neuron. Polarities are +1 or -1 with equal probability.
    ``sensory_motor_fanin`` > 0 also gives each motor neuron synapses from that many
    distinct inputs, a direct path next to the layers; the published NCP has none (0).
    Neuron order: motor ``0..M-1``, command ``M..M+C-1``, inter ``M+C..N-1``.
    """
    input_size = _check_positive('input_size', input_size)
    inter_neurons = _check_positive('inter_neurons', inter_neurons)
    command_neurons = _check_positive('command_neurons', command_neurons)
    motor_neurons = _check_positive('motor_neurons', motor_neurons)
    sensory_fanout = _check_positive('sensory_fanout', sensory_fanout)
    inter_fanout = _check_positive('inter_fanout', inter_fanout)
    recurrent_command_synapses = _check_positive(
        'recurrent_command_synapses', recurrent_command_synapses, minimum=0)
    motor_fanin = _check_positive('motor_fanin', motor_fanin)
    sensory_motor_fanin = _check_positive('sensory_motor_fanin', sensory_motor_fanin,
                                          minimum=0)
    for name, value, limit, layer in (
            ('sensory_motor_fanin', sensory_motor_fanin, input_size, 'input_size'),
            ('sensory_fanout', sensory_fanout, inter_neurons, 'inter_neurons'),
            ('inter_fanout', inter_fanout, command_neurons, 'command_neurons'),
            ('motor_fanin', motor_fanin, command_neurons, 'command_neurons'),
            ('recurrent_command_synapses', recurrent_command_synapses,
             command_neurons * command_neurons, 'command_neurons squared')):
        if value > limit:
            raise ConfigError(f'wiring {name}={value} exceeds {layer}={limit}')

    rng = np.random.default_rng(seed)
    units = inter_neurons + command_neurons + motor_neurons
    motor = np.arange(0, motor_neurons)
    command = np.arange(motor_neurons, motor_neurons + command_neurons)
    inter = np.arange(motor_neurons + command_neurons, units)
    sensory_adjacency = np.zeros((input_size, units), dtype=np.int8)
    adjacency = np.zeros((units, units), dtype=np.int8)

    # Sensory -> inter: fixed fan-out, then cover inter neurons that got no input.
    for source in range(input_size):
        targets = rng.choice(inter, size=sensory_fanout, replace=False)
        sensory_adjacency[source, targets] = _polarity(rng, sensory_fanout)
    for target in inter:
        if not sensory_adjacency[:, target].any():
            sensory_adjacency[rng.integers(input_size), target] = _polarity(rng)

    # Inter -> command: fixed fan-out, then cover command neurons without input.
    for source in inter:
        targets = rng.choice(command, size=inter_fanout, replace=False)
        adjacency[source, targets] = _polarity(rng, inter_fanout)
    for target in command:
        if not adjacency[inter, target].any():
            adjacency[rng.choice(inter), target] = _polarity(rng)

    # Command -> command: distinct recurrent pairs.
    pairs = rng.choice(command_neurons * command_neurons, size=recurrent_command_synapses,
                       replace=False)
    for pair in pairs:
        source, target = command[pair // command_neurons], command[pair % command_neurons]
        adjacency[source, target] = _polarity(rng)

    # Command -> motor: fixed fan-in, then give every command neuron an outgoing synapse.
    for target in motor:
        sources = rng.choice(command, size=motor_fanin, replace=False)
        adjacency[sources, target] = _polarity(rng, motor_fanin)
    for source in command:
        if not adjacency[source, motor].any():
            adjacency[source, rng.choice(motor)] = _polarity(rng)

    # Sensory -> motor synapses are drawn last, so wirings without them keep their draws.
    if sensory_motor_fanin:
        for target in motor:
            sources = rng.choice(input_size, size=sensory_motor_fanin, replace=False)
            sensory_adjacency[sources, target] = _polarity(rng, sensory_motor_fanin)

    settings = {
        'inter_neurons': inter_neurons, 'command_neurons': command_neurons,
        'motor_neurons': motor_neurons, 'sensory_fanout': sensory_fanout,
        'inter_fanout': inter_fanout, 'recurrent_command_synapses': recurrent_command_synapses,
        'motor_fanin': motor_fanin,
    }
    if sensory_motor_fanin:
        settings['sensory_motor_fanin'] = sensory_motor_fanin
    layers = [('inter', inter.tolist()), ('command', command.tolist()),
              ('motor', motor.tolist())]
    return Wiring('ncp', input_size, sensory_adjacency, adjacency, motor_neurons, layers,
                  seed, settings)


def lane_keeping_ncp(input_size: int = 32, seed: int = 0) -> Wiring:
    """Build the NCP of the lane-keeping network of Lechner et al. (2020).

    12 inter, 6 command and 1 motor neuron; sensory fan-out 6, inter fan-out 4,
    6 recurrent command synapses and motor fan-in 6. With 32 inputs that is
    192 sensory + 60 internal = 252 synapses.
    """
    return ncp(input_size, inter_neurons=12, command_neurons=6, motor_neurons=1,
               sensory_fanout=6, inter_fanout=4, recurrent_command_synapses=6, motor_fanin=6,
               seed=seed)


def auto_ncp_sizes(units: int, output_size: int, sparsity: float = 0.5) -> Dict[str, int]:
    """Return the NCP layer sizes and fan-outs chosen for ``units`` neurons.

    Two fifths of the non-motor neurons become command neurons and the rest inter
    neurons. With density d = 1 - sparsity, each fan-out or fan-in connects a fraction d
    of the layer it reaches, and the command layer gets 2 d C recurrent synapses
    (all rounded down, at least 1).
    """
    units = _check_positive('units', units)
    output_size = _check_positive('output_size', output_size)
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f'wiring sparsity={sparsity} is invalid: use 0 <= sparsity < 1')
    hidden = units - output_size
    if hidden < 2:
        raise ConfigError(f'an NCP of {units} units with {output_size} outputs leaves '
                          f'{hidden} inter+command neurons; use units >= output_size + 2')
    density = 1.0 - sparsity
    command = max(int(0.4 * hidden), 1)
    inter = hidden - command
    return {
        'inter_neurons': inter,
        'command_neurons': command,
        'motor_neurons': output_size,
        'sensory_fanout': max(int(inter * density), 1),
        'inter_fanout': max(int(command * density), 1),
        'recurrent_command_synapses': max(int(command * density * 2), 1),
        'motor_fanin': max(int(command * density), 1),
    }


def auto_ncp(input_size: int, units: int, output_size: int, sparsity: float = 0.5,
             seed: int = 0, sensory_motor_fanin: int = 0) -> Wiring:
    """Build an NCP sized automatically from (units, outputs, sparsity); see auto_ncp_sizes.

    ``sensory_motor_fanin`` is passed to ``ncp``.
    """
    sizes = auto_ncp_sizes(units, output_size, sparsity)
    wiring = ncp(input_size, seed=seed, sensory_motor_fanin=sensory_motor_fanin, **sizes)
    wiring.kind = 'auto_ncp'
    wiring.settings['sparsity'] = float(sparsity)
    return wiring


def fully_connected(input_size: int, units: int, output_size: int, seed: int = 0,
                    self_connections: bool = True) -> Wiring:
    """Build a wiring where every input and every neuron reaches every neuron."""
    input_size = _check_positive('input_size', input_size)
    units = _check_positive('units', units)
    rng = np.random.default_rng(seed)
    sensory_adjacency = _polarity(rng, (input_size, units))
    adjacency = _polarity(rng, (units, units))
    if not self_connections:
        np.fill_diagonal(adjacency, 0)
    return Wiring('fully_connected', input_size, sensory_adjacency, adjacency, output_size,
                  _flat_layers(units, output_size), seed,
                  {'self_connections': bool(self_connections)})


def random(input_size: int, units: int, output_size: int, sparsity: float = 0.5,
           seed: int = 0) -> Wiring:
    """Build a wiring that keeps a random ``1 - sparsity`` share of all possible synapses.

    Exactly ``round((1 - sparsity) * count)`` synapses are kept among the neuron pairs and
    among the input-neuron pairs, chosen without replacement.
    """
    input_size = _check_positive('input_size', input_size)
    units = _check_positive('units', units)
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f'wiring sparsity={sparsity} is invalid: use 0 <= sparsity < 1')
    rng = np.random.default_rng(seed)

    def sample(rows: int) -> np.ndarray:
        matrix = np.zeros(rows * units, dtype=np.int8)
        kept = int(round((1.0 - sparsity) * rows * units))
        chosen = rng.choice(rows * units, size=kept, replace=False)
        matrix[chosen] = _polarity(rng, kept)
        return matrix.reshape(rows, units)

    adjacency = sample(units)
    sensory_adjacency = sample(input_size)
    return Wiring('random', input_size, sensory_adjacency, adjacency, output_size,
                  _flat_layers(units, output_size), seed, {'sparsity': float(sparsity)})


def _flat_layers(units: int, output_size: int) -> List[Tuple[str, List[int]]]:
    if not 1 <= output_size <= units:
        raise ConfigError(f'wiring output_size={output_size} must be in 1..{units}')
    hidden = list(range(output_size, units))
    layers = [('hidden', hidden)] if hidden else []
    return layers + [('motor', list(range(output_size)))]


def build_wiring(spec: Dict[str, Any], input_size: int, units: int, output_size: int,
                 seed: int = 0) -> Wiring:
    """Build a wiring from a settings dict such as ``{'kind': 'auto_ncp', 'sparsity': 0.5}``.

    Kinds: ``ncp`` (explicit layer sizes and fan-outs; ``units`` must equal their sum),
    ``lane_keeping`` (the 12/6/1 NCP), ``auto_ncp``, ``fully_connected`` and ``random``.
    A dict that came from ``Wiring.to_dict()`` (it has ``synapses``) is rebuilt as stored.
    """
    spec = dict(spec)
    if 'synapses' in spec:
        return Wiring.from_dict(spec)
    kind = spec.pop('kind', 'auto_ncp')
    try:
        if kind == 'ncp':
            wiring = ncp(input_size, seed=seed, **spec)
        elif kind == 'lane_keeping':
            wiring = lane_keeping_ncp(input_size, seed=seed, **spec)
        elif kind == 'auto_ncp':
            wiring = auto_ncp(input_size, units, output_size, seed=seed, **spec)
        elif kind == 'fully_connected':
            wiring = fully_connected(input_size, units, output_size, seed=seed, **spec)
        elif kind == 'random':
            wiring = random(input_size, units, output_size, seed=seed, **spec)
        else:
            raise ConfigError(f'unknown wiring kind {kind!r}; use one of '
                              f'{KINDS + ("lane_keeping",)}')
    except TypeError as error:
        raise ConfigError(f'invalid settings for a {kind} wiring: {error}') from error
    if wiring.units != units:
        raise ConfigError(f'the {kind} wiring has {wiring.units} neurons but the policy '
                          f'asks for units={units}; make them equal')
    if wiring.output_size != output_size:
        raise ConfigError(f'the {kind} wiring has {wiring.output_size} motor neurons but the '
                          f'policy has {output_size} outputs; make them equal')
    return wiring
