"""Export the single-step policy, with its state as an explicit input and output.

The exported graph is ``(frame, [imu], dt, state) -> (outputs, next_state)``:

- ``frame`` (B, 3, H, W) float32 in [0, 1], preprocessed as the checkpoint says;
- ``imu`` (B, 6) float32, only when the policy was trained with IMU input;
- ``dt`` (B,) float32 seconds since the previous step;
- ``state`` (B, S) float32, zeros before the first step;
- ``outputs`` (B, O) in physical units; ``next_state`` (B, S) to feed back next step.

The ONNX exporter leaves out inputs that the graph never reads: ``dt`` for the CNN-only
family, which has no state to integrate. Read the names from the session's inputs.

Two formats: ONNX (run with onnxruntime or any ONNX runtime) and a ``torch.export``
program (``.pt2``, load with ``torch.export.load``). Both unroll the unfold loop and use
plain tensor operations, never the compiled kernel of ``native.py``.
"""

import copy
import logging
import math
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from liquid_control.model.policy import IMU_SIZE, Policy

LOGGER = logging.getLogger(__name__)

ONNX_OPSET = 17


class StepModule(nn.Module):
    """Policy step with explicit state: (frame, imu, dt, state) -> (outputs, next_state)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, frame: torch.Tensor, imu: torch.Tensor, dt: torch.Tensor,
                state: torch.Tensor):
        return self.policy.step(frame, imu, dt, state)


class StepModuleWithoutImu(nn.Module):
    """Policy step with explicit state, no IMU input: (frame, dt, state) -> (outputs, state)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, frame: torch.Tensor, dt: torch.Tensor, state: torch.Tensor):
        return self.policy.step(frame, None, dt, state)


def step_module(policy: Policy) -> nn.Module:
    """Return a frozen copy of ``policy`` wrapped as an exportable single-step module."""
    frozen = copy.deepcopy(policy).eval()
    frozen.requires_grad_(False)
    if hasattr(frozen.core, 'native_enabled'):
        frozen.core.native_enabled = False
    return StepModule(frozen) if frozen.config.imu_enabled else StepModuleWithoutImu(frozen)


def example_inputs(policy: Policy, batch_size: int = 1, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Return named example inputs for the exported step, in graph input order."""
    generator = torch.Generator().manual_seed(seed)
    config = policy.config
    inputs = {'frame': torch.rand(batch_size, 3, config.input_height, config.input_width,
                                  generator=generator)}
    if config.imu_enabled:
        inputs['imu'] = torch.randn(batch_size, IMU_SIZE, generator=generator)
    inputs['dt'] = torch.full((batch_size,), config.dt_reference_s)
    inputs['state'] = policy.initial_state(batch_size).detach()
    return inputs


def export_onnx(policy: Policy, path, opset: int = ONNX_OPSET) -> Path:
    """Write the single-step policy to an ONNX file with a dynamic batch dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = step_module(policy)
    inputs = example_inputs(policy, batch_size=2)
    names = list(inputs)
    dynamic = {name: {0: 'batch'} for name in names + ['outputs', 'next_state']}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is deprecated; the dynamo-based one
        # needs the onnxscript package, which is not a dependency.
        warnings.simplefilter('ignore')
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=names,
                          output_names=['outputs', 'next_state'], dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False)
    return path


def export_torch(policy: Policy, path) -> Path:
    """Write the single-step policy as a ``torch.export`` program (``.pt2``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = step_module(policy)
    inputs = example_inputs(policy, batch_size=1)
    with torch.no_grad():
        program = torch.export.export(module, tuple(inputs.values()))
    torch.export.save(program, str(path))
    return path


def _max_difference(actual, expected) -> float:
    """Return max |actual - expected|, or infinity when either has a NaN or infinite value.

    A non-finite output fails every tolerance, also where both runtimes give the same one.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
        return math.inf
    difference = np.abs(actual - expected)
    return float(difference.max()) if difference.size else 0.0


def _rollout_inputs(policy: Policy, steps: int, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    config = policy.config
    for _ in range(steps):
        inputs = {'frame': torch.rand(batch_size, 3, config.input_height, config.input_width,
                                      generator=generator)}
        if config.imu_enabled:
            inputs['imu'] = torch.randn(batch_size, IMU_SIZE, generator=generator)
        inputs['dt'] = config.dt_reference_s * (
            0.5 + torch.rand(batch_size, generator=generator))
        yield inputs


@torch.no_grad()
def compare_onnx(policy: Policy, path, steps: int = 5, batch_size: int = 2,
                 seed: int = 0) -> float:
    """Run PyTorch and onnxruntime side by side for ``steps`` steps; return max |difference|.

    Each runtime feeds its own state back, so drift over steps shows up too. The result is
    infinity when an output or state of either runtime is NaN or infinite.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    graph_inputs = {node.name for node in session.get_inputs()}
    policy = policy.eval()
    torch_state = policy.initial_state(batch_size)
    onnx_state = torch_state.numpy()
    worst = 0.0
    for inputs in _rollout_inputs(policy, steps, batch_size, seed):
        expected, torch_state = policy.step(inputs['frame'], inputs.get('imu'), inputs['dt'],
                                            torch_state)
        feed = {name: value.numpy() for name, value in inputs.items()}
        feed['state'] = onnx_state
        # The exporter drops inputs the graph never reads (dt for the CNN-only family).
        feed = {name: value for name, value in feed.items() if name in graph_inputs}
        actual, onnx_state = session.run(['outputs', 'next_state'], feed)
        worst = max(worst, _max_difference(actual, expected.numpy()),
                    _max_difference(onnx_state, torch_state.numpy()))
    return worst


@torch.no_grad()
def compare_torch_export(policy: Policy, path, steps: int = 5, seed: int = 0) -> float:
    """Load a ``.pt2`` program and compare it with ``policy`` for ``steps`` steps.

    Returns the max |difference| as ``compare_onnx`` does, infinity for non-finite values.
    """
    program = torch.export.load(str(path)).module()
    policy = policy.eval()
    torch_state = policy.initial_state(1)
    exported_state = torch_state.clone()
    worst = 0.0
    for inputs in _rollout_inputs(policy, steps, 1, seed):
        expected, torch_state = policy.step(inputs['frame'], inputs.get('imu'), inputs['dt'],
                                            torch_state)
        arguments = [value for value in inputs.values()] + [exported_state]
        actual, exported_state = program(*arguments)
        worst = max(worst, _max_difference(actual, expected),
                    _max_difference(exported_state, torch_state))
    return worst


def onnx_available() -> Optional[str]:
    """Return None if ONNX export and checking can run, else the reason they cannot."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        return f'{error.name} is not installed (pip install onnx onnxruntime)'
    return None
