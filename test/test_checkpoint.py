"""Checkpoints: round trips for every family and a clear error for each kind of bad file."""

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from liquid_control.errors import CheckpointError, ConfigError
from liquid_control.model import checkpoint
from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint
from liquid_control.model.policy import (FAMILIES, PolicyConfig, build_policy,
                                         count_encoder_parameters, estimate_elements)

SMALL_INPUT = {'height': 24, 'width': 32}


def _policy(family='ncp_ltc', imu=False, seed=0):
    config = PolicyConfig(family=family, imu_enabled=imu, seed=seed,
                          preprocessing={**PolicyConfig().preprocessing, **SMALL_INPUT})
    policy = build_policy(config)
    policy.set_normalization(feature_mean=torch.linspace(-0.1, 0.1, 32),
                             feature_std=torch.linspace(0.9, 1.1, 32),
                             imu_mean=[0.01, 0.02, 0.03, 0.1, 0.2, 9.8],
                             imu_std=[0.5, 0.5, 0.5, 1.0, 1.0, 1.0],
                             output_mean=[0.05, 0.4], output_std=[0.8, 0.2])
    return policy.eval()


def _inputs(seed=0, imu=False):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.rand(2, 4, 3, 24, 32, generator=generator)
    imu_values = torch.randn(2, 4, 6, generator=generator) if imu else None
    dt = 0.04 + 0.02 * torch.rand(2, 4, generator=generator)
    return frames, imu_values, dt


@pytest.mark.parametrize('family', FAMILIES)
def test_round_trip_same_outputs(tmp_path, family):
    policy = _policy(family, imu=True)
    path = save_checkpoint(tmp_path / 'model.lcm', policy, {'epochs': 3, 'source': 'unit'})
    loaded, metadata = load_checkpoint(path)
    frames, imu, dt = _inputs(imu=True)
    with torch.no_grad():
        expected, expected_state = policy(frames, imu, dt)
        actual, actual_state = loaded(frames, imu, dt)
    assert torch.equal(actual, expected)
    assert torch.equal(actual_state, expected_state)
    assert metadata == {'epochs': 3, 'source': 'unit'}
    assert loaded.config == policy.config
    assert loaded.output_names == ('angular_z', 'linear_x')
    assert loaded.output_units == ('rad/s', 'm/s')
    assert torch.equal(loaded.output_std, policy.output_std)
    assert not loaded.training


def test_round_trip_keeps_wiring(tmp_path):
    policy = _policy('ncp_ltc')
    path = save_checkpoint(tmp_path / 'model.lcm', policy, {})
    loaded, _ = load_checkpoint(path)
    assert loaded.wiring == policy.wiring


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o077, 0o600)])
def test_saved_file_follows_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_header_is_readable_json(tmp_path):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {'note': 'x'})
    header, _ = checkpoint.read_header(path)
    assert header['format_version'] == checkpoint.FORMAT_VERSION
    assert header['preprocessing']['height'] == 24
    assert header['normalization']['output_std'] == pytest.approx([0.8, 0.2])
    assert header['wiring']['kind'] == 'auto_ncp'


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'absent.lcm')


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / 'notes.lcm'
    path.write_text('hello')
    with pytest.raises(CheckpointError, match='not a liquid_control checkpoint'):
        load_checkpoint(path)


def test_torch_pickle_rejected(tmp_path):
    path = tmp_path / 'pickled.lcm'
    torch.save(_policy().state_dict(), path)
    with pytest.raises(CheckpointError, match='torch.save'):
        load_checkpoint(path)


def test_empty_file(tmp_path):
    path = tmp_path / 'empty.lcm'
    path.write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty'):
        load_checkpoint(path)


@pytest.mark.parametrize('keep', [5, 16, 200, -1000, -1])
def test_truncated_file(tmp_path, keep):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    content = path.read_bytes()
    path.write_bytes(content[:keep])
    with pytest.raises(CheckpointError, match='truncated') as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize('position', [30, 5000, -40, -1])
def test_corrupted_byte(tmp_path, position):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    content = bytearray(path.read_bytes())
    content[position] ^= 0x10
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match='corrupted|invalid header'):
        load_checkpoint(path)


def test_unsupported_version(tmp_path):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    content = bytearray(path.read_bytes())
    struct.pack_into('<I', content, 8, 99)
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match='format version 99'):
        load_checkpoint(path)


def _rewrite_header(path, change):
    """Apply ``change`` to the header and write a checkpoint with a valid checksum."""
    header, data = checkpoint.read_header(path)
    change(header)
    header_bytes = json.dumps(header).encode()
    body = checkpoint._PREFIX.pack(checkpoint.MAGIC, checkpoint.FORMAT_VERSION,
                                   len(header_bytes)) + header_bytes + data
    path.write_bytes(body + hashlib.sha256(body).digest())


def test_config_weights_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    _rewrite_header(path, lambda header: header['config'].update(imu_enabled=True))
    with pytest.raises(CheckpointError, match='architecture'):
        load_checkpoint(path)


def test_unknown_family_in_header(tmp_path):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    _rewrite_header(path, lambda header: header['config'].update(family='transformer'))
    with pytest.raises(CheckpointError, match='cannot build'):
        load_checkpoint(path)


def test_missing_tensor(tmp_path):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    _rewrite_header(path, lambda header: header['tensors'].pop(0))
    with pytest.raises(CheckpointError, match='missing tensor'):
        load_checkpoint(path)


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(ConfigError, match='JSON'):
        save_checkpoint(tmp_path / 'model.lcm', _policy(), {'loss': float('nan')})
    assert not (tmp_path / 'model.lcm').exists()


def _set(key, value):
    return lambda header: header.__setitem__(key, value)


def _set_tensor(field, value):
    return lambda header: header['tensors'][0].__setitem__(field, value)


def _set_config(section, key, value):
    return lambda header: header['config'][section].__setitem__(key, value)


# Header edits with a valid checksum, so the parser itself meets each one.
MALFORMED_HEADERS = {
    'data_size none': _set('data_size', None),
    'data_size text': _set('data_size', 'abc'),
    'tensors none': _set('tensors', None),
    'tensors dict': _set('tensors', {'a': 1}),
    'tensor entry text': lambda header: header['tensors'].__setitem__(0, 'feature_mean'),
    'tensor without name': lambda header: header['tensors'][0].pop('name'),
    'tensor name list': _set_tensor('name', ['x']),
    'tensor shape float': _set_tensor('shape', [32.0]),
    'tensor shape none': _set_tensor('shape', None),
    'tensor offset text': _set_tensor('offset', '0'),
    'tensor size float': _set_tensor('size', 1.5),
    'duplicate tensor': lambda header: header['tensors'].append(dict(header['tensors'][0])),
    'metadata list': _set('metadata', [['a', 1]]),
    'wiring text': _set('wiring', 'ncp'),
    'format_version missing': lambda header: header.pop('format_version'),
    'wiring huge': lambda header: header['wiring'].__setitem__('units', 10 ** 6),
    'input huge': _set_config('preprocessing', 'height', 10 ** 6),
    'channels negative': lambda header: header['config']['encoder']['channels'].__setitem__(
        -1, -8),
    'channels huge': lambda header: header['config']['encoder']['channels'].__setitem__(
        -1, 10 ** 6),
    'dtype changed': lambda header: header['tensors'][0].update(
        dtype='float64', size=header['tensors'][0]['size'] * 2),
}


@pytest.mark.parametrize('case', sorted(MALFORMED_HEADERS))
def test_malformed_header_rejected(tmp_path, case):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    _rewrite_header(path, MALFORMED_HEADERS[case])
    with pytest.raises(CheckpointError, match='model.lcm'):
        load_checkpoint(path)


def test_deeply_nested_header_rejected(tmp_path):
    header_bytes = b'[' * 100000 + b']' * 100000
    body = checkpoint._PREFIX.pack(checkpoint.MAGIC, checkpoint.FORMAT_VERSION,
                                   len(header_bytes)) + header_bytes
    path = tmp_path / 'nested.lcm'
    path.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(CheckpointError, match='invalid header'):
        load_checkpoint(path)


def _set_tensor_values(path, name, value):
    """Fill tensor ``name`` of a saved checkpoint with ``value``, with a valid checksum."""
    header, data = checkpoint.read_header(path)
    entry = next(entry for entry in header['tensors'] if entry['name'] == name)
    values = np.frombuffer(data, '<f4').copy()
    start = entry['offset'] // 4
    values[start:start + entry['size'] // 4] = value
    header_bytes = json.dumps(header).encode()
    body = checkpoint._PREFIX.pack(checkpoint.MAGIC, checkpoint.FORMAT_VERSION,
                                   len(header_bytes)) + header_bytes + values.tobytes()
    path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize('name, value', [
    ('core.cell.capacitance', float('nan')),
    ('encoder.head.convolutions.0.weight', float('nan')),
    ('output_std', float('inf')),
    ('feature_mean', float('-inf')),
])
def test_non_finite_tensor_rejected(tmp_path, name, value):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    _set_tensor_values(path, name, value)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert 'NaN or infinite values' in str(error.value)
    assert name in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.parametrize('name', ['feature_std', 'output_std'])
def test_zero_standard_deviation_rejected(tmp_path, name):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    _set_tensor_values(path, name, 0.0)
    with pytest.raises(CheckpointError, match=f'standard deviations of 0 or less in {name}'):
        load_checkpoint(path)


@pytest.mark.parametrize('settings, words', [
    ({'crop_top': 1.5}, 'crop_top=1.5'),
    ({'crop_left': -0.1}, 'crop_left=-0.1'),
    ({'crop_top': float('nan')}, 'crop_top=nan'),
    ({'crop_right': '0.2'}, "crop_right='0.2'"),
    ({'crop_top': 0.6, 'crop_bottom': 0.5}, 'leaves no rows'),
    ({'crop_left': 0.5, 'crop_right': 0.5}, 'leaves no columns'),
    ({'zoom': 2}, "unknown preprocessing settings ['zoom']"),
])
def test_invalid_preprocessing_rejected(tmp_path, settings, words):
    path = save_checkpoint(tmp_path / 'model.lcm', _policy(), {})
    _rewrite_header(path, lambda header: header['config']['preprocessing'].update(settings))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert words in str(error.value)
    assert f'checkpoint {path} has invalid preprocessing' in str(error.value)


# -- size limits: checked before anything large is read or allocated -----------------------

def _load_in_small_process(path, limit_bytes=1_500_000_000) -> str:
    """Load ``path`` in a child process limited to ``limit_bytes`` of address space.

    Returns its output: the CheckpointError message, or 'loaded'. The limit is far above
    what importing torch and loading a small policy take, so only a load that reads a
    large file or builds a large model reaches it, and the child fails instead of the
    test machine.
    """
    script = (
        'import resource, sys\n'
        f'resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))\n'
        'from liquid_control.errors import CheckpointError\n'
        'from liquid_control.model.checkpoint import load_checkpoint\n'
        'try:\n'
        '    load_checkpoint(sys.argv[1])\n'
        '    print("loaded")\n'
        'except CheckpointError as error:\n'
        '    print(error)\n')
    result = subprocess.run([sys.executable, '-c', script, str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _small_checkpoint(tmp_path):
    return save_checkpoint(tmp_path / 'model.lcm', _policy(), {})


def test_large_encoder_rejected_before_building(tmp_path):
    # Two 1024-channel 31 x 31 convolutions: 1e9 parameters, 4 GB to build.
    path = _small_checkpoint(tmp_path)
    _rewrite_header(path, lambda header: header['config']['encoder'].update(
        channels=[1024, 1024], kernel_sizes=[31, 31], strides=[1, 1]))
    output = _load_in_small_process(path)
    assert 'describes a policy too large to build' in output
    assert f'limit of {checkpoint.MAX_ELEMENTS:,}' in output


def test_many_units_rejected_before_building(tmp_path):
    # An NCP of 10,000 neurons built from its settings: terabytes of synapse matrices.
    path = _small_checkpoint(tmp_path)

    def change(header):
        header['config']['units'] = 10000
        header['wiring'] = None
    _rewrite_header(path, change)
    output = _load_in_small_process(path)
    assert 'describes a policy too large to build' in output
    assert 'units=10000' in output


def test_encoder_larger_than_data_rejected(tmp_path):
    # An input of 1024 x 1024 pixels gives a dense layer of 0.5 million weights, within
    # the limit, but far more than the small file stores.
    path = _small_checkpoint(tmp_path)
    _rewrite_header(path, lambda header: header['config']['preprocessing'].update(
        height=1024, width=1024))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert 'bytes of tensor data' in str(error.value)
    assert 'does not match its own architecture' in str(error.value)


def test_wiring_units_differ_from_config(tmp_path):
    path = _small_checkpoint(tmp_path)
    _rewrite_header(path, lambda header: header['wiring'].update(units=9999))
    with pytest.raises(CheckpointError, match='its wiring has units=9999 but its config '
                                              'units=19'):
        load_checkpoint(path)


def test_large_file_magic_checked_first(tmp_path):
    # A sparse 4 GB file that is no checkpoint: only its first bytes may be read.
    path = tmp_path / 'disk.img'
    with open(path, 'wb') as file:
        file.write(b'not a checkpoint')
        file.truncate(4 << 30)
    output = _load_in_small_process(path)
    assert 'is not a liquid_control checkpoint' in output


def test_padded_checkpoint_not_read_whole(tmp_path):
    # A valid checkpoint followed by 4 GB of zeros (sparse), as a broken copy may leave.
    path = _small_checkpoint(tmp_path)
    size = path.stat().st_size
    with open(path, 'r+b') as file:
        file.truncate(4 << 30)
    output = _load_in_small_process(path)
    assert f'bytes more than the {size:,} its header declares' in output


def test_declared_data_beyond_limit(tmp_path):
    # A header that declares more tensor data than any policy within the limit stores,
    # in a (sparse) file long enough to hold it.
    path = _small_checkpoint(tmp_path)
    _rewrite_header(path, lambda header: header.update(
        data_size=checkpoint.MAX_DATA_SIZE + 4))
    header_end = checkpoint._PREFIX.size + struct.unpack_from(
        '<Q', path.read_bytes(), 12)[0]
    with open(path, 'r+b') as file:
        file.truncate(header_end + checkpoint.MAX_DATA_SIZE + 4 + 32)
    output = _load_in_small_process(path)
    assert 'bytes of tensor data, more than a policy within the size limit' in output


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('imu, frame_gap', [(False, 0), (True, 2)])
def test_size_estimate_covers_built_policy(family, imu, frame_gap):
    config = PolicyConfig(family=family, imu_enabled=imu, frame_gap=frame_gap, units=24,
                          preprocessing={**PolicyConfig().preprocessing, **SMALL_INPUT})
    policy = build_policy(config)
    encoder = sum(parameter.numel() for parameter in policy.encoder.parameters())
    assert count_encoder_parameters(config) == encoder
    built = sum(tensor.numel() for tensor in [*policy.parameters(), *policy.buffers()])
    wiring = policy.wiring
    counts = None if wiring is None else (wiring.synapse_count, wiring.sensory_synapse_count)
    assert built <= estimate_elements(config, counts)
    assert built <= estimate_elements(config)


@pytest.mark.parametrize('family', FAMILIES)
def test_trained_sizes_far_below_limit(family):
    # Four times the largest unit count the docs and benchmarks use (64), at the
    # default 66 x 200 input.
    config = PolicyConfig(family=family, units=256, imu_enabled=True)
    assert estimate_elements(config) < checkpoint.MAX_ELEMENTS / 2
