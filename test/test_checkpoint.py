"""Checkpoints: round trips for every family and a clear error for each kind of bad file."""

import hashlib
import json
import os
import stat
import struct

import pytest
import torch

from liquid_control.errors import CheckpointError, ConfigError
from liquid_control.model import checkpoint
from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint
from liquid_control.model.policy import FAMILIES, PolicyConfig, build_policy

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
