"""Export: ONNX (checked in onnxruntime) and torch.export give the PyTorch policy's outputs."""

import math

import numpy as np
import pytest
import torch

from liquid_control.model import export
from liquid_control.model.policy import PolicyConfig, build_policy

pytest.importorskip('onnxruntime')

SMALL = {'height': 24, 'width': 32}


def _policy(family, imu):
    config = PolicyConfig(family=family, imu_enabled=imu,
                          preprocessing={**PolicyConfig().preprocessing, **SMALL})
    policy = build_policy(config)
    policy.set_normalization(imu_mean=[0.1] * 6, imu_std=[2.0] * 6,
                             output_mean=[0.2, -0.1], output_std=[1.5, 0.3])
    return policy.eval()


@pytest.mark.parametrize('family,imu', [('ncp_ltc', True), ('ncp_cfc', False),
                                        ('lstm', True), ('cnn', False)])
def test_onnx_matches_pytorch(tmp_path, family, imu):
    policy = _policy(family, imu)
    path = export.export_onnx(policy, tmp_path / 'policy.onnx')
    assert export.compare_onnx(policy, path, steps=4, batch_size=3) < 1e-5


def test_onnx_graph_inputs_and_outputs(tmp_path):
    import onnxruntime

    policy = _policy('ncp_ltc', True)
    path = export.export_onnx(policy, tmp_path / 'policy.onnx')
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert [node.name for node in session.get_inputs()] == ['frame', 'imu', 'dt', 'state']
    assert [node.name for node in session.get_outputs()] == ['outputs', 'next_state']
    feed = {name: value.numpy() for name, value in export.example_inputs(policy, 1).items()}
    outputs, state = session.run(None, feed)
    assert outputs.shape == (1, 2)
    assert state.shape == (1, 19)


def test_torch_export_matches_pytorch(tmp_path):
    policy = _policy('ncp_ltc', False)
    path = export.export_torch(policy, tmp_path / 'policy.pt2')
    assert export.compare_torch_export(policy, path, steps=4) < 1e-5


def test_export_leaves_policy_usable(tmp_path):
    policy = _policy('ncp_ltc', False)
    frame = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        before, _ = policy.step(frame, None, 0.05)
    export.export_onnx(policy, tmp_path / 'policy.onnx')
    with torch.no_grad():
        after, _ = policy.step(frame, None, 0.05)
    assert torch.equal(before, after)
    assert all(parameter.requires_grad for parameter in policy.parameters())
    assert np.isfinite(after.numpy()).all()


def _policy_with_nan_output():
    policy = _policy('ncp_ltc', False)
    with torch.no_grad():
        policy.core.output_bias.fill_(float('nan'))
    return policy


def test_onnx_check_fails_on_nan_outputs(tmp_path):
    # Both runtimes give NaN at the same places, and the check must fail all the same.
    policy = _policy_with_nan_output()
    path = export.export_onnx(policy, tmp_path / 'policy.onnx')
    assert math.isinf(export.compare_onnx(policy, path, steps=2))


def test_torch_export_check_fails_on_nan_outputs(tmp_path):
    policy = _policy_with_nan_output()
    path = export.export_torch(policy, tmp_path / 'policy.pt2')
    assert math.isinf(export.compare_torch_export(policy, path, steps=2))
