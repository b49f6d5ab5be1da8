"""liquid-control inspect and export: one run each as an installed console script, the
error cases in-process through ``main()``."""

import hashlib
import json
import subprocess

import numpy as np
import pytest

from conftest import VENV_BIN
from liquid_control.cli.main import main
from liquid_control.model.checkpoint import (FORMAT_VERSION, MAGIC, _PREFIX as PREFIX,
                                             read_header, save_checkpoint)
from liquid_control.model.policy import PolicyConfig, build_policy

SMALL = {'height': 24, 'width': 32}


def _run(*arguments, timeout=180):
    return subprocess.run([str(VENV_BIN / 'liquid-control'), *arguments],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def checkpoint_path(tmp_path):
    config = PolicyConfig(family='ncp_ltc', imu_enabled=True,
                          preprocessing={**PolicyConfig().preprocessing, **SMALL})
    return save_checkpoint(tmp_path / 'model.lcm', build_policy(config),
                           {'epochs': 2, 'source': 'unit test'})


def test_inspect_prints_architecture(checkpoint_path, tmp_path):
    png = tmp_path / 'wiring.png'
    result = _run('inspect', str(checkpoint_path), '--png', str(png))
    assert result.returncode == 0, result.stderr
    assert 'family: ncp_ltc' in result.stdout
    assert 'parameters: encoder' in result.stdout
    assert 'inputs -> inter:' in result.stdout
    assert 'motor neuron 0 drives angular_z' in result.stdout
    assert 'source: unit test' in result.stdout
    assert png.read_bytes().startswith(b'\x89PNG')


def test_inspect_json_counts(checkpoint_path, capsys):
    assert main(['inspect', str(checkpoint_path), '--json']) == 0
    summary = json.loads(capsys.readouterr().out)
    counts = summary['parameter_counts']
    assert counts['total'] == counts['encoder'] + counts['recurrent'] + counts['head']
    by_layer = summary['wiring']['synapses_by_layer']
    assert sum(row['excitatory'] + row['inhibitory'] for row in by_layer) == (
        summary['wiring']['sensory_synapses'] + summary['wiring']['internal_synapses'])


def test_inspect_rejects_bad_file(tmp_path, capsys):
    path = tmp_path / 'broken.lcm'
    path.write_bytes(b'not a model')
    assert main(['inspect', str(path)]) == 2
    error = capsys.readouterr().err
    assert 'not a liquid_control checkpoint' in error
    assert str(path) in error


def test_inspect_png_needs_wiring(tmp_path, capsys):
    config = PolicyConfig(family='gru', preprocessing={**PolicyConfig().preprocessing, **SMALL})
    path = save_checkpoint(tmp_path / 'gru.lcm', build_policy(config), {})
    assert main(['inspect', str(path), '--png', str(tmp_path / 'x.png')]) == 2
    assert 'no wiring to draw' in capsys.readouterr().err


def test_export_writes_checked_file(checkpoint_path, tmp_path):
    onnx_path = tmp_path / 'policy.onnx'
    result = _run('export', str(checkpoint_path), '--onnx', str(onnx_path))
    assert result.returncode == 0, result.stderr
    assert 'check onnx' in result.stdout
    assert ': ok' in result.stdout
    assert onnx_path.stat().st_size > 0


def test_export_needs_a_format(checkpoint_path, capsys):
    assert main(['export', str(checkpoint_path)]) == 2
    assert '--onnx' in capsys.readouterr().err


def write_nan_tensor(path, name):
    """Fill tensor ``name`` of the checkpoint at ``path`` with NaN, with a valid checksum."""
    header, data = read_header(path)
    entry = next(entry for entry in header['tensors'] if entry['name'] == name)
    values = np.frombuffer(data, '<f4').copy()
    values[entry['offset'] // 4:(entry['offset'] + entry['size']) // 4] = np.nan
    header_bytes = json.dumps(header).encode()
    body = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + \
        values.tobytes()
    path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize('command', [['inspect'], ['inspect', '--json'],
                                     ['export', '--onnx', 'policy.onnx'],
                                     ['export', '--torch', 'policy.pt2', '--no-check']])
def test_nan_weights_rejected(checkpoint_path, tmp_path, capsys, command):
    write_nan_tensor(checkpoint_path, 'core.cell.capacitance')
    arguments = [command[0], str(checkpoint_path),
                 *[str(tmp_path / item) if item.startswith('policy.') else item
                   for item in command[1:]]]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert 'NaN or infinite values in 1 tensor(s): core.cell.capacitance' in error
    assert not list(tmp_path.glob('policy.*'))


def test_inspect_rejects_invalid_crop(checkpoint_path, capsys):
    header, data = read_header(checkpoint_path)
    header['config']['preprocessing']['crop_top'] = 1.5
    header_bytes = json.dumps(header).encode()
    body = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + data
    checkpoint_path.write_bytes(body + hashlib.sha256(body).digest())
    assert main(['inspect', str(checkpoint_path)]) == 2
    error = capsys.readouterr().err
    assert f'checkpoint {checkpoint_path} has invalid preprocessing settings' in error
    assert 'crop_top=1.5' in error


def test_inspect_prints_test_metrics_whole(tmp_path, capsys):
    metrics = {f'test/angular_z/{name}': value for name, value in
               (('mae', 0.22071234), ('baseline_mae', 0.28345678), ('pearson', 0.69012345),
                ('rmse', 0.31234567))}
    path = save_checkpoint(tmp_path / 'model.lcm', build_policy(PolicyConfig(
        imu_enabled=False, preprocessing={**PolicyConfig().preprocessing, **SMALL})),
        {'test_metrics': metrics})
    assert main(['inspect', str(path)]) == 0
    out = capsys.readouterr().out
    assert 'held-out test part (scored at the end of training):' in out
    assert '  test/angular_z/pearson: 0.6901' in out
    assert '  test/angular_z/baseline_mae: 0.2835' in out
