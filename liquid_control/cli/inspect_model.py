"""liquid-control inspect MODEL: print a checkpoint's architecture, parameters and wiring.

Reads only the checkpoint (never runs code from it), rebuilds the policy, and prints the
family, input size, outputs with units, parameter counts per block, normalisation,
metadata and, for wired cells, the synapses between layers. ``--png`` draws the wiring.
"""

import argparse
import json
from collections import Counter
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the inspect options to ``parser``."""
    parser.add_argument('model', type=Path, metavar='MODEL',
                        help='checkpoint file (.lcm); "bundled" for the model shipped with '
                             'the package')
    parser.add_argument('--png', type=Path, metavar='FILE',
                        help='draw the wiring (inputs, layers, synapses) to a PNG file')
    parser.add_argument('--synapses', action='store_true',
                        help='also list every synapse as source -> target and polarity')
    parser.add_argument('--json', action='store_true',
                        help='print a JSON summary instead of text')


def _layer_name(wiring, neuron: int) -> str:
    return wiring.layer_of(neuron)


def synapse_table(wiring) -> list:
    """Return (source layer, target layer, excitatory, inhibitory) rows, inputs first."""
    counts = Counter()
    for _, target, polarity in wiring.sensory_synapses():
        counts[('inputs', _layer_name(wiring, int(target)), int(polarity))] += 1
    for source, target, polarity in wiring.synapses():
        counts[(_layer_name(wiring, int(source)), _layer_name(wiring, int(target)),
                int(polarity))] += 1
    order = ['inputs'] + [name for name, _ in wiring.layers]
    pairs = sorted({(source, target) for source, target, _ in counts},
                   key=lambda pair: (order.index(pair[0]), order.index(pair[1])))
    return [(source, target, counts[(source, target, 1)], counts[(source, target, -1)])
            for source, target in pairs]


def summary(path: Path, header: dict, policy) -> dict:
    """Return the JSON summary of a checkpoint."""
    wiring = policy.wiring
    result = {
        'file': str(path),
        'format_version': header['format_version'],
        'library_version': header.get('library_version'),
        'config': policy.config.to_dict(),
        'parameter_counts': policy.parameter_counts(),
        'state_size': policy.state_size,
        'normalization': header.get('normalization'),
        'metadata': header.get('metadata'),
    }
    if wiring is not None:
        result['wiring'] = {
            'kind': wiring.kind, 'seed': wiring.seed, 'units': wiring.units,
            'inputs': wiring.input_size,
            'layers': {name: indices for name, indices in wiring.layers},
            'sensory_synapses': wiring.sensory_synapse_count,
            'internal_synapses': wiring.synapse_count,
            'synapses_by_layer': [
                {'source': source, 'target': target, 'excitatory': excitatory,
                 'inhibitory': inhibitory}
                for source, target, excitatory, inhibitory in synapse_table(wiring)],
        }
    return result


def _format_value(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + '...'


def print_text(path: Path, header: dict, policy, list_synapses: bool) -> None:
    """Print the human-readable report."""
    size = path.stat().st_size
    print(f'checkpoint: {path} ({size:,} bytes, format version {header["format_version"]}, '
          f'written by liquid_control {header.get("library_version", "?")})')
    print(policy.describe())

    preprocessing = policy.config.preprocessing
    print('preprocessing: crop top {crop_top}, bottom {crop_bottom}, left {crop_left}, '
          'right {crop_right} (fractions), resize to {height} x {width}'.format(
              **preprocessing))
    print('output scaling (mean, std):')
    for index, (name, unit) in enumerate(zip(policy.output_names, policy.output_units)):
        mean = float(policy.output_mean[index])
        std = float(policy.output_std[index])
        print(f'  {name}: {mean:.4g}, {std:.4g} [{unit}]')
    if policy.config.imu_enabled:
        means = ', '.join(f'{value:.3g}' for value in policy.imu_mean.tolist())
        stds = ', '.join(f'{value:.3g}' for value in policy.imu_std.tolist())
        print(f'IMU normalisation: mean [{means}], std [{stds}]')

    metadata = header.get('metadata') or {}
    if metadata:
        print('metadata:')
        for key in sorted(metadata):
            if key != 'test_metrics':
                print(f'  {key}: {_format_value(metadata[key])}')
    test_metrics = metadata.get('test_metrics')
    if isinstance(test_metrics, dict) and test_metrics:
        print('held-out test part (scored at the end of training):')
        for key in sorted(test_metrics):
            value = test_metrics[key]
            text = f'{value:.4g}' if isinstance(value, float) else _format_value(value)
            print(f'  {key}: {text}')

    wiring = policy.wiring
    if wiring is None:
        return
    print('wiring layers:')
    for name, indices in wiring.layers:
        print(f'  {name} ({len(indices)}): neurons {indices}')
    for neuron, output in zip(wiring.motor_neurons, policy.output_names):
        print(f'  motor neuron {neuron} drives {output}')
    print('synapses by layer (excitatory + inhibitory):')
    for source, target, excitatory, inhibitory in synapse_table(wiring):
        print(f'  {source} -> {target}: {excitatory + inhibitory} '
              f'({excitatory} + {inhibitory})')
    if list_synapses:
        print('sensory synapses (input -> neuron, polarity):')
        for source, target, polarity in wiring.sensory_synapses():
            print(f'  {source} -> {target} {"+" if polarity > 0 else "-"}')
        print('internal synapses (neuron -> neuron, polarity):')
        for source, target, polarity in wiring.synapses():
            print(f'  {source} -> {target} {"+" if polarity > 0 else "-"}')


def run(args: argparse.Namespace) -> int:
    """Print the checkpoint report and draw the wiring if asked."""
    from liquid_control.cli.export import resolve_model
    from liquid_control.errors import ConfigError
    from liquid_control.model.checkpoint import load_checkpoint, read_header

    path = resolve_model(args.model)
    header, _ = read_header(path)
    policy, _ = load_checkpoint(path)
    if args.png is not None and policy.wiring is None:
        raise ConfigError(f'the {policy.config.family} policy in {path} has no wiring to '
                          'draw; --png works for ncp_ltc, ncp_cfc and fc_ltc policies')
    if args.json:
        print(json.dumps(summary(path, header, policy), indent=2))
    else:
        print_text(path, header, policy, args.synapses)
    if args.png is not None:
        from liquid_control.evaluation.plots import plot_wiring
        args.png.parent.mkdir(parents=True, exist_ok=True)
        plot_wiring(policy.wiring, args.png, policy.output_names)
        if not args.json:
            print(f'wrote {args.png}')
    return 0
