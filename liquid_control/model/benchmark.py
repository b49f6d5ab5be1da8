"""Speed of the LTC core against the ``ncps`` reference package (1.0.1), measured in one run.

Three comparisons, all on one CPU thread (``torch.set_num_threads(1)``) and on the same
wiring (``ncps.wirings.AutoNCP(19, outputs)`` built for 32 inputs, copied into a
``Wiring`` synapse by synapse), with 6 ODE unfolds on both sides:

- ``step``: one LTC step at batch 1 without gradients (input map, cell, output map), as a
  policy node runs it. Ours runs the default path, which is the compiled kernel when a C
  compiler is available; the PyTorch-only path is reported beside it.
- ``train``: forward and backward of a 32-step sequence at batch 32.
- ``policy``: a full policy step on a 66 x 200 frame (encoder + LTC) against the encoder
  alone, both at batch 1 without gradients, and the steps after the encoder on their own.

Timings alternate between the two sides in rounds and report medians, because other
processes on a shared machine slow down whole stretches of time.
"""

import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch

from liquid_control.model.ltc import LTC, inverse_softplus
from liquid_control.model.wirings import Wiring

NCPS_SEED = 22222


def wiring_from_ncps(ncps_wiring) -> Wiring:
    """Copy a built ``ncps`` NCP wiring (adjacency, polarity, layers) into a ``Wiring``."""
    layers = [(name, [int(i) for i in ncps_wiring.get_neurons_of_layer(index)])
              for index, name in enumerate(('inter', 'command', 'motor'))]
    return Wiring('ncp', ncps_wiring.input_dim, ncps_wiring.sensory_adjacency_matrix,
                  ncps_wiring.adjacency_matrix, ncps_wiring.output_dim, layers, NCPS_SEED,
                  {'source': 'ncps'})


@torch.no_grad()
def copy_ncps_parameters(cell, model: LTC) -> None:
    """Give ``model`` the parameters of an ``ncps.torch.LTCCell`` on the same wiring.

    ncps keeps dense (N, N) matrices masked by the wiring. Its ``LTCCell`` applies
    softplus to w, g and C, as ours always does, only when ``implicit_param_constraints``
    is set, which is the default of its ``LTC`` wrapper. Otherwise it uses them as they
    are, so the values go through inverse_softplus before the copy.
    """
    params = cell._params
    ltc = model.cell
    if cell._implicit_param_constraints:
        def positive(values: torch.Tensor) -> torch.Tensor:
            return values
    else:
        positive = inverse_softplus
    sensory = ltc.wiring.sensory_synapses()
    internal = ltc.wiring.synapses()

    def per_synapse(name: str, synapses: np.ndarray) -> torch.Tensor:
        return params[name].detach()[synapses[:, 0], synapses[:, 1]].float()

    ltc.sensory_sigma.copy_(per_synapse('sensory_sigma', sensory))
    ltc.sensory_mu.copy_(per_synapse('sensory_mu', sensory))
    ltc.sensory_erev.copy_(per_synapse('sensory_erev', sensory))
    ltc.sensory_weight.copy_(positive(per_synapse('sensory_w', sensory)))
    ltc.sigma.copy_(per_synapse('sigma', internal))
    ltc.mu.copy_(per_synapse('mu', internal))
    ltc.erev.copy_(per_synapse('erev', internal))
    ltc.weight.copy_(positive(per_synapse('w', internal)))
    ltc.leak_conductance.copy_(positive(params['gleak'].detach()))
    ltc.resting_potential.copy_(params['vleak'].detach())
    ltc.capacitance.copy_(positive(params['cm'].detach()))
    model.input_weight.copy_(params['input_w'].detach())
    model.input_bias.copy_(params['input_b'].detach())
    model.output_weight.copy_(params['output_w'].detach())
    model.output_bias.copy_(params['output_b'].detach())


def _alternate(functions: Dict[str, Callable[[], None]], repeats: int, rounds: int,
               warmup: int) -> Dict[str, float]:
    """Time each function in alternating rounds; return the median seconds per call."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples: Dict[str, List[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(repeats):
                function()
            samples[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(values) for name, values in samples.items()}


def run_core(outputs: int = 2, quick: bool = False) -> Dict[str, object]:
    """Measure the three comparisons; return a JSON-compatible dict of results."""
    from importlib.metadata import version

    from ncps.torch import LTC as NcpsLTC
    from ncps.wirings import AutoNCP

    from liquid_control.model.native import load_kernel
    from liquid_control.model.policy import PolicyConfig, build_policy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    scale = 0.2 if quick else 1.0
    # ncps builds the wiring again inside each model it makes, and a second build can add
    # synapses, so copy the wiring only after the ncps model exists and share that model.
    ncps_wiring = AutoNCP(19, outputs, seed=NCPS_SEED)
    ncps_sequence = NcpsLTC(32, ncps_wiring, batch_first=True, return_sequences=True)
    ncps_cell = ncps_sequence.rnn_cell
    wiring = wiring_from_ncps(ncps_wiring)
    ours = LTC(wiring, ode_unfolds=6)
    copy_ncps_parameters(ncps_cell, ours)
    results: Dict[str, object] = {'target': 'core', 'wiring': wiring.describe()}

    # Single step, batch 1, no gradients.
    inputs = torch.randn(1, 32)
    state = torch.zeros(1, 19)
    elapsed = torch.ones(1)
    with torch.no_grad():
        ours_output, _ = ours.step(inputs, elapsed, state)
        ncps_output, _ = ncps_cell(inputs, state, 1.0)
        # Same parameters on both sides, so the outputs agree to float32 rounding.
        results['step_max_difference'] = float((ours_output - ncps_output).abs().max())
        pytorch_path = LTC(wiring, ode_unfolds=6)
        pytorch_path.load_state_dict(ours.state_dict())
        pytorch_path.native_enabled = False
        step_times = _alternate({
            'ours': lambda: ours.step(inputs, elapsed, state),
            'ours_pytorch': lambda: pytorch_path.step(inputs, elapsed, state),
            'ncps': lambda: ncps_cell(inputs, state, 1.0),
        }, repeats=max(20, int(200 * scale)), rounds=max(3, int(15 * scale)), warmup=50)
    results['native_kernel'] = load_kernel() is not None
    results['step_us'] = {name: value * 1e6 for name, value in step_times.items()}
    results['step_speedup_vs_ncps'] = step_times['ncps'] / step_times['ours']
    results['step_speedup_vs_ncps_pytorch_path'] = step_times['ncps'] / step_times['ours_pytorch']

    # 32-step sequence, batch 32, forward + backward.
    sequence = torch.randn(32, 32, 32)
    elapsed_sequence = torch.ones(32, 32)

    def train_ours():
        ours.zero_grad(set_to_none=True)
        outputs_sequence, _ = ours(sequence, elapsed_sequence)
        outputs_sequence.square().mean().backward()

    def train_ncps():
        ncps_sequence.zero_grad(set_to_none=True)
        outputs_sequence, _ = ncps_sequence(sequence)
        outputs_sequence.square().mean().backward()

    train_times = _alternate({'ours': train_ours, 'ncps': train_ncps},
                             repeats=max(1, int(3 * scale)), rounds=max(3, int(9 * scale)),
                             warmup=2)
    results['train_ms'] = {name: value * 1e3 for name, value in train_times.items()}
    results['train_speedup_vs_ncps'] = train_times['ncps'] / train_times['ours']

    # Full policy step on a 66 x 200 frame against the encoder alone.
    policy = build_policy(PolicyConfig(family='ncp_ltc', units=19)).eval()
    frame = torch.rand(1, 3, 66, 200)
    with torch.no_grad():
        policy_state = policy.initial_state(1)
        features = policy.encoder(frame)
        policy_times = _alternate({
            'policy_step': lambda: policy.step(frame, None, 0.05, policy_state),
            'encoder': lambda: policy.encoder(frame),
            'after_encoder': lambda: policy.step_features(features, None, 0.05, policy_state),
        }, repeats=max(5, int(30 * scale)), rounds=max(3, int(11 * scale)), warmup=10)
    results['policy_ms'] = {name: value * 1e3 for name, value in policy_times.items()}
    results['policy_step_over_encoder'] = policy_times['policy_step'] / policy_times['encoder']
    # The part after the encoder is short and timed on its own, so this ratio is less
    # disturbed by load spikes than the one above.
    results['policy_step_over_encoder_from_parts'] = (
        1.0 + policy_times['after_encoder'] / policy_times['encoder'])

    results['environment'] = {
        'torch': torch.__version__, 'ncps': version('ncps'),
        'threads': torch.get_num_threads(), 'python': platform.python_version(),
        'machine': platform.machine(), 'processor': platform.processor() or 'unknown',
        'cpu_count': os.cpu_count(), 'load_average': list(os.getloadavg()),
    }
    return results
