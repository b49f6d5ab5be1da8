"""Wirings: layer structure, synapse counts, seeding and dict round trips."""

import json

import numpy as np
import pytest

from liquid_control.errors import ConfigError
from liquid_control.model import wirings
from liquid_control.model.ltc import LTCCell


def test_lane_keeping_ncp_counts():
    wiring = wirings.lane_keeping_ncp(32, seed=0)
    assert wiring.units == 19
    assert [len(indices) for _, indices in wiring.layers] == [12, 6, 1]
    assert wiring.sensory_synapse_count == 32 * 6
    assert wiring.synapse_count == 12 * 4 + 6 + 6
    assert wiring.sensory_synapse_count + wiring.synapse_count == 252


@pytest.mark.parametrize('seed', range(5))
def test_lane_keeping_ltc_parameter_count(seed):
    cell = LTCCell(wirings.lane_keeping_ncp(32, seed=seed))
    # 4 parameters per synapse (w, sigma, mu, E) and 3 per neuron (C, g, V).
    assert cell.parameter_count() == 4 * 252 + 3 * 19 == 1065


def test_ncp_layer_structure():
    wiring = wirings.ncp(10, inter_neurons=5, command_neurons=4, motor_neurons=2,
                         sensory_fanout=3, inter_fanout=2, recurrent_command_synapses=5,
                         motor_fanin=3, seed=7)
    layers = dict(wiring.layers)
    inter, command, motor = layers['inter'], layers['command'], layers['motor']
    assert motor == [0, 1]
    # Sensory inputs reach only inter neurons, each with the configured fan-out.
    assert not wiring.sensory_adjacency[:, command + motor].any()
    assert (np.count_nonzero(wiring.sensory_adjacency, axis=1) == 3).all()
    # Inter neurons reach only command neurons, two each.
    assert not wiring.adjacency[np.ix_(inter, inter + motor)].any()
    assert (np.count_nonzero(wiring.adjacency[inter], axis=1) == 2).all()
    # Command -> command: exactly the recurrent synapses; command -> inter: none.
    assert np.count_nonzero(wiring.adjacency[np.ix_(command, command)]) == 5
    assert not wiring.adjacency[np.ix_(command, inter)].any()
    # Motor neurons have the configured fan-in or more (extra synapses cover command
    # neurons that had no outgoing one) and no outgoing synapses.
    assert (np.count_nonzero(wiring.adjacency[np.ix_(command, motor)], axis=0) >= 3).all()
    assert not wiring.adjacency[motor].any()


def test_ncp_every_neuron_has_input():
    for seed in range(20):
        wiring = wirings.ncp(3, inter_neurons=8, command_neurons=6, motor_neurons=2,
                             sensory_fanout=1, inter_fanout=1, recurrent_command_synapses=0,
                             motor_fanin=1, seed=seed)
        inputs = np.count_nonzero(wiring.adjacency, axis=0) + np.count_nonzero(
            wiring.sensory_adjacency, axis=0)
        assert (inputs > 0).all(), f'seed {seed}: a neuron has no incoming synapse'
        command = dict(wiring.layers)['command']
        assert (np.count_nonzero(wiring.adjacency[command], axis=1) > 0).all()


def test_sensory_motor_fanin_adds_direct_synapses():
    plain = wirings.auto_ncp(12, 10, 2, sparsity=0.5, seed=4)
    direct = wirings.auto_ncp(12, 10, 2, sparsity=0.5, seed=4, sensory_motor_fanin=5)
    motor = direct.motor_neurons
    # Each motor neuron gets 5 distinct inputs, and the rest matches the plain wiring.
    assert (np.count_nonzero(direct.sensory_adjacency[:, motor], axis=0) == 5).all()
    assert not plain.sensory_adjacency[:, motor].any()
    others = [index for index in range(direct.units) if index not in motor]
    np.testing.assert_array_equal(direct.sensory_adjacency[:, others],
                                  plain.sensory_adjacency[:, others])
    np.testing.assert_array_equal(direct.adjacency, plain.adjacency)
    assert direct.settings['sensory_motor_fanin'] == 5
    assert 'sensory_motor_fanin' not in plain.settings
    # 4 parameters per synapse: 2 motor neurons x 5 inputs more.
    assert LTCCell(direct).parameter_count() - LTCCell(plain).parameter_count() == 4 * 10
    assert wirings.Wiring.from_dict(json.loads(json.dumps(direct.to_dict()))) == direct


def test_sensory_motor_fanin_is_checked():
    with pytest.raises(ConfigError, match='sensory_motor_fanin=13 exceeds input_size=12'):
        wirings.auto_ncp(12, 10, 2, sensory_motor_fanin=13)
    with pytest.raises(ConfigError, match='sensory_motor_fanin'):
        wirings.auto_ncp(12, 10, 2, sensory_motor_fanin=-1)


def test_auto_ncp_sizes():
    sizes = wirings.auto_ncp_sizes(19, 2, sparsity=0.5)
    assert sizes['motor_neurons'] == 2
    assert sizes['inter_neurons'] + sizes['command_neurons'] == 17
    wiring = wirings.auto_ncp(32, 19, 2, sparsity=0.5, seed=1)
    assert wiring.units == 19
    assert wiring.output_size == 2
    assert wiring.sensory_synapse_count == 32 * sizes['sensory_fanout']


def test_auto_ncp_rejects_too_few_units():
    with pytest.raises(ConfigError, match='units'):
        wirings.auto_ncp(32, 3, 2)


def test_fully_connected_counts():
    wiring = wirings.fully_connected(5, 7, 2, seed=0)
    assert wiring.synapse_count == 49
    assert wiring.sensory_synapse_count == 35
    no_self = wirings.fully_connected(5, 7, 2, seed=0, self_connections=False)
    assert no_self.synapse_count == 42


def test_random_wiring_keeps_share():
    wiring = wirings.random(10, 20, 2, sparsity=0.75, seed=3)
    assert wiring.synapse_count == 100
    assert wiring.sensory_synapse_count == 50


@pytest.mark.parametrize('build', [
    lambda seed: wirings.lane_keeping_ncp(32, seed=seed),
    lambda seed: wirings.auto_ncp(38, 19, 2, seed=seed),
    lambda seed: wirings.fully_connected(4, 6, 1, seed=seed),
    lambda seed: wirings.random(4, 6, 1, sparsity=0.3, seed=seed),
], ids=['ncp', 'auto_ncp', 'fully_connected', 'random'])
def test_wiring_seeding_and_round_trip(build):
    first, second, other = build(11), build(11), build(12)
    assert first == second
    assert not (np.array_equal(first.adjacency, other.adjacency)
                and np.array_equal(first.sensory_adjacency, other.sensory_adjacency))
    restored = wirings.Wiring.from_dict(json.loads(json.dumps(first.to_dict())))
    assert np.array_equal(restored.adjacency, first.adjacency)
    assert np.array_equal(restored.sensory_adjacency, first.sensory_adjacency)
    assert restored.layers == first.layers
    assert restored.kind == first.kind
    assert restored.seed == first.seed


def test_polarity_is_signed():
    wiring = wirings.lane_keeping_ncp(32, seed=0)
    values = set(np.unique(wiring.sensory_adjacency).tolist())
    assert values == {-1, 0, 1}


def test_from_dict_rejects_bad_synapse():
    values = wirings.lane_keeping_ncp(32).to_dict()
    values['synapses'].append([0, 99, 1])
    with pytest.raises(ConfigError, match='out of range'):
        wirings.Wiring.from_dict(values)


def test_build_wiring_checks_sizes():
    with pytest.raises(ConfigError, match='units'):
        wirings.build_wiring({'kind': 'lane_keeping'}, 32, units=20, output_size=1)
    with pytest.raises(ConfigError, match='unknown wiring kind'):
        wirings.build_wiring({'kind': 'mesh'}, 32, units=19, output_size=1)
