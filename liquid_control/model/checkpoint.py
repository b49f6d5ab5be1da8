"""Self-describing policy checkpoints (``.lcm``) that load without running code from the file.

The layout is below; all integers are little-endian::

    magic        8 bytes   b'\\x89LCM\\r\\n\\x1a\\n'
    version      uint32    FORMAT_VERSION
    header size  uint64    length of the JSON header in bytes
    header       JSON, UTF-8: config, wiring, output names/units, preprocessing,
                 normalisation (a readable copy), metadata and the tensor index
    tensor data  raw little-endian arrays at the offsets listed in the header
    checksum     32 bytes  SHA-256 of every byte before it

The header alone rebuilds the architecture (``PolicyConfig`` plus the realised wiring),
then the tensors fill it. The magic's non-ASCII first byte and CR-LF pair catch files
mangled by text-mode transfers, as in PNG. No pickle is involved anywhere.
"""

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from liquid_control import __version__
from liquid_control.errors import CheckpointError, ConfigError
from liquid_control.model.policy import (MAX_ELEMENTS, Policy, PolicyConfig, build_policy,
                                         count_encoder_parameters, default_preprocessing,
                                         size_limit_problem)
from liquid_control.model.wirings import Wiring

MAGIC = b'\x89LCM\r\n\x1a\n'
FORMAT_VERSION = 1
_PREFIX = struct.Struct('<8sIQ')  # magic, version, header size
_CHECKSUM_SIZE = 32
# Limits on sizes a header may declare, checked before anything is allocated: far above
# any policy this package builds (tens of neurons, inputs of a few hundred pixels).
MAX_SIDE = 4096
MAX_UNITS = 10000
MAX_CHANNELS = 1024
MAX_KERNEL = 31
# The maximum tensor data of a policy within policy.MAX_ELEMENTS: every element as float64.
MAX_DATA_SIZE = 8 * MAX_ELEMENTS
_READ_CHUNK = 1 << 20
# Buffers that the policy divides by, so each value must be positive.
STANDARD_DEVIATIONS = ('feature_std', 'imu_std', 'output_std')
_DTYPES = {
    'float32': (torch.float32, '<f4'),
    'float64': (torch.float64, '<f8'),
    'float16': (torch.float16, '<f2'),
    'int64': (torch.int64, '<i8'),
    'int32': (torch.int32, '<i4'),
    'bool': (torch.bool, '|b1'),
}
_DTYPE_NAMES = {torch_dtype: name for name, (torch_dtype, _) in _DTYPES.items()}

PathLike = Union[str, os.PathLike]


def save_checkpoint(path: PathLike, policy: Policy, metadata: Dict[str, Any]) -> Path:
    """Write ``policy`` and JSON-compatible ``metadata`` to one ``.lcm`` file; return its path.

    The file is written to a temporary name and renamed, so a crash never leaves a
    half-written checkpoint under ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f'cannot save a checkpoint to {path}: it is a folder; name a '
                              '.lcm file')
    tensors = []
    chunks = []
    offset = 0
    for name, tensor in policy.state_dict().items():
        if tensor.dtype not in _DTYPE_NAMES:
            raise CheckpointError(f'cannot save tensor {name} of dtype {tensor.dtype} to {path}')
        dtype_name = _DTYPE_NAMES[tensor.dtype]
        array = tensor.detach().cpu().contiguous().numpy().astype(_DTYPES[dtype_name][1])
        data = array.tobytes()
        tensors.append({'name': name, 'dtype': dtype_name, 'shape': list(array.shape),
                        'offset': offset, 'size': len(data)})
        chunks.append(data)
        offset += len(data)

    header = {
        'format': 'liquid_control policy checkpoint',
        'format_version': FORMAT_VERSION,
        'library_version': __version__,
        'config': policy.config.to_dict(),
        'wiring': None if policy.wiring is None else policy.wiring.to_dict(),
        'output_names': list(policy.output_names),
        'output_units': list(policy.output_units),
        'preprocessing': dict(policy.config.preprocessing),
        'normalization': {name: getattr(policy, name).tolist() for name in (
            'feature_mean', 'feature_std', 'imu_mean', 'imu_std', 'output_mean',
            'output_std')},
        'parameter_counts': policy.parameter_counts(),
        'metadata': metadata,
        'tensors': tensors,
        'data_size': offset,
    }
    try:
        header_bytes = json.dumps(header, allow_nan=False, sort_keys=True).encode('utf-8')
    except (TypeError, ValueError) as error:
        raise ConfigError(f'checkpoint metadata for {path} is not JSON-serialisable '
                          f'(NaN and infinity are not allowed either): {error}') from error

    digest = hashlib.sha256()
    parts = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)), header_bytes, *chunks]
    for part in parts:
        digest.update(part)
    parts.append(digest.digest())

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        # mkstemp makes the file readable by its owner only. A new file's usual permissions
        # let a node that runs under another account load the model.
        os.fchmod(handle, 0o666 & ~_current_umask())
        with os.fdopen(handle, 'wb') as file:
            for part in parts:
                file.write(part)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _current_umask() -> int:
    # os.umask can only be read by setting it; this sets it back at once. Another thread
    # creating a file between the two calls would get 0o022.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_header(path: PathLike) -> Tuple[Dict[str, Any], bytes]:
    """Read and verify a checkpoint; return (header dict, tensor data bytes).

    Raises CheckpointError naming the file when it is missing, not a checkpoint,
    truncated, corrupted (checksum mismatch), of an unsupported format version, or when
    its header declares more tensor data than any policy within MAX_ELEMENTS stores. The
    magic and the header are checked before the tensor data is read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} not found (or not a file)')
    try:
        with open(path, 'rb') as file:
            return _read_checkpoint(path, file, os.fstat(file.fileno()).st_size)
    except OSError as error:
        raise CheckpointError(f'cannot read checkpoint {path}: {error}') from error


def _read_checkpoint(path: Path, file, size: int) -> Tuple[Dict[str, Any], bytes]:
    prefix = file.read(_PREFIX.size)
    if not prefix or not prefix.startswith(MAGIC[:min(len(prefix), len(MAGIC))]):
        raise CheckpointError(f'{path} is not a liquid_control checkpoint (.lcm): '
                              f'{_guess_kind(prefix)}')
    if len(prefix) < _PREFIX.size:
        raise CheckpointError(f'checkpoint {path} is truncated: {len(prefix)} bytes, '
                              'shorter than the file header')
    _, version, header_size = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise CheckpointError(f'checkpoint {path} has format version {version}, but this '
                              f'liquid_control ({__version__}) reads version '
                              f'{FORMAT_VERSION}; use a matching liquid_control version')
    header_end = _PREFIX.size + header_size
    if size < header_end + _CHECKSUM_SIZE:
        raise CheckpointError(f'checkpoint {path} is truncated: {size} bytes, but '
                              f'its header alone needs {header_end + _CHECKSUM_SIZE}')

    raw_header = file.read(header_size)
    header = _parse_header(raw_header)
    expected_size = None if header is None else header_end + header['data_size'] + \
        _CHECKSUM_SIZE
    if expected_size is not None and size < expected_size:
        raise CheckpointError(f'checkpoint {path} is truncated: {size} bytes of '
                              f'{expected_size}; copy or download it again')
    if header is not None and header['data_size'] > MAX_DATA_SIZE:
        raise CheckpointError(f'checkpoint {path} declares {header["data_size"]:,} bytes of '
                              f'tensor data, more than a policy within the size limit stores '
                              f'({MAX_DATA_SIZE:,} bytes: {MAX_ELEMENTS:,} elements as '
                              'float64); use another checkpoint')

    if expected_size is not None and size > expected_size:
        raise CheckpointError(f'checkpoint {path} has {size - expected_size:,} bytes more than '
                              f'the {expected_size:,} its header declares, so it is damaged; '
                              'copy or download it again')

    # Without a valid header the data is only hashed, in chunks, to tell a corrupted file
    # from one written wrongly, and never held in memory whole.
    keep = header is not None
    digest = hashlib.sha256(prefix)
    digest.update(raw_header)
    chunks = []
    remaining = size - _CHECKSUM_SIZE - header_end
    while remaining > 0:
        chunk = file.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        digest.update(chunk)
        if keep:
            chunks.append(chunk)
        remaining -= len(chunk)
    checksum = file.read(_CHECKSUM_SIZE)
    if remaining > 0 or len(checksum) != _CHECKSUM_SIZE:
        raise CheckpointError(f'checkpoint {path} became shorter while it was read; copy it '
                              'again and make sure no program is writing it')
    if digest.digest() != checksum:
        raise CheckpointError(f'checkpoint {path} is corrupted: its SHA-256 checksum does '
                              'not match the content; copy or download it again')
    if not keep:
        raise CheckpointError(f'checkpoint {path} has an invalid header (its checksum matches, '
                              'so the file was written wrongly); save it again')
    return header, b''.join(chunks)


def load_checkpoint(path: PathLike) -> Tuple[Policy, Dict[str, Any]]:
    """Rebuild the policy stored in ``path``; return (policy in eval mode, metadata dict).

    Raises CheckpointError naming the file for every kind of bad file, including invalid
    preprocessing settings, an architecture too large to build or not matching the stored
    tensors, and tensors with NaN or infinite values.
    """
    path = Path(path)
    header, data = read_header(path)
    policy = _build_policy_of(path, header, len(data))
    stored = _stored_tensors(path, header, data, policy.state_dict())
    policy.load_state_dict(stored, strict=True)
    policy.eval()
    return policy, dict(header.get('metadata') or {})


def _build_policy_of(path: Path, header: Dict[str, Any], data_size: int) -> Policy:
    """Build the policy that a verified header describes, after checking its size."""
    size_problem = declared_size_problem(header['config'], header.get('wiring'))
    if size_problem is not None:
        raise CheckpointError(f'checkpoint {path} describes an architecture too large to '
                              f'build: {size_problem}')
    try:
        config = PolicyConfig.from_dict(header['config'])
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f'checkpoint {path} describes an architecture this version '
                              f'cannot build: {error}') from error
    problem = _preprocessing_problem(config.preprocessing)
    if problem is not None:
        raise CheckpointError(f'checkpoint {path} has invalid preprocessing settings: '
                              f'{problem}; the file was edited or written wrongly, so use '
                              'another checkpoint or train again')
    _check_size(path, config, header.get('wiring'), data_size)
    try:
        wiring = None if header.get('wiring') is None else Wiring.from_dict(header['wiring'])
        return build_policy(config, wiring)
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError, IndexError,
            OverflowError, MemoryError, RuntimeError) as error:
        raise CheckpointError(f'checkpoint {path} describes an architecture this version '
                              f'cannot build: {error}') from error


def _stored_tensors(path: Path, header: Dict[str, Any], data: bytes,
                    expected: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Return the header's tensors read from ``data``, checked against ``expected``."""
    stored = {}
    problems = []
    listed = set()
    for entry in header.get('tensors', []):
        name = entry['name']
        listed.add(name)
        if name not in expected:
            problems.append(f'unexpected tensor {name}')
            continue
        if entry['dtype'] not in _DTYPES:
            problems.append(f'tensor {name} has unknown dtype {entry["dtype"]}')
            continue
        torch_dtype, numpy_dtype = _DTYPES[entry['dtype']]
        if torch_dtype != expected[name].dtype:
            problems.append(f'tensor {name} is stored as {entry["dtype"]}, the architecture '
                            f'needs {expected[name].dtype}')
            continue
        shape = tuple(entry['shape'])
        if shape != tuple(expected[name].shape):
            problems.append(f'tensor {name} has shape {list(shape)}, the architecture needs '
                            f'{list(expected[name].shape)}')
            continue
        start, size = entry['offset'], entry['size']
        count = int(np.prod(shape, dtype=np.int64))
        if start < 0 or start + size > len(data) or size != count * np.dtype(numpy_dtype).itemsize:
            problems.append(f'tensor {name} does not fit the data section')
            continue
        array = np.frombuffer(data, dtype=numpy_dtype, count=count, offset=start).reshape(shape)
        stored[name] = torch.from_numpy(array.copy()).to(torch_dtype)
    problems.extend(f'missing tensor {name}' for name in sorted(set(expected) - listed))
    if problems:
        raise CheckpointError(f'checkpoint {path} does not match its own architecture: '
                              f'{_first_five(problems, "; ")}; use another checkpoint')

    # A policy with NaN or infinite weights, or a standard deviation of 0 to divide by,
    # gives no usable command, yet would load and run without any error.
    non_finite = [name for name, tensor in stored.items()
                  if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if non_finite:
        raise CheckpointError(f'checkpoint {path} contains NaN or infinite values in '
                              f'{len(non_finite)} tensor(s): {_first_five(non_finite, ", ")}; '
                              'the training diverged or the file was edited, so use another '
                              'checkpoint or train again')
    not_positive = [name for name in STANDARD_DEVIATIONS
                    if name in stored and not (stored[name] > 0).all()]
    if not_positive:
        raise CheckpointError(f'checkpoint {path} has standard deviations of 0 or less in '
                              f'{", ".join(not_positive)}; the file was edited or written '
                              'wrongly, so use another checkpoint or train again')
    return stored


def _first_five(items, separator: str) -> str:
    text = separator.join(items[:5])
    return text + (f' (and {len(items) - 5} more)' if len(items) > 5 else '')


def _parse_header(raw: bytes):
    try:
        header = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) and _header_problem(header) is None else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header_problem(header: Dict[str, Any]) -> Optional[str]:
    """Return what is wrong with the header's layout, or None; values are checked later."""
    if header.get('format_version') != FORMAT_VERSION:
        return 'format_version is missing or differs from the file prefix'
    if not _is_count(header.get('data_size')):
        return 'data_size is not a byte count'
    if not isinstance(header.get('config'), dict):
        return 'config is not an object'
    if not isinstance(header.get('wiring'), (dict, type(None))):
        return 'wiring is not an object'
    if not isinstance(header.get('metadata'), (dict, type(None))):
        return 'metadata is not an object'
    tensors = header.get('tensors')
    if not isinstance(tensors, list):
        return 'tensors is not a list'
    names = set()
    for entry in tensors:
        if not (isinstance(entry, dict) and isinstance(entry.get('name'), str)
                and isinstance(entry.get('dtype'), str)
                and isinstance(entry.get('shape'), list)
                and all(_is_count(size) for size in entry['shape'])
                and _is_count(entry.get('offset')) and _is_count(entry.get('size'))):
            return 'a tensor entry lacks a valid name, dtype, shape, offset or size'
        if entry['name'] in names:
            return f'tensor {entry["name"]} is listed twice'
        names.add(entry['name'])
    return None


def declared_size_problem(config: Dict[str, Any], wiring: Optional[Dict[str, Any]]
                          ) -> Optional[str]:
    """Return a declared size beyond the MAX_* limits, checked before allocating, or None.

    ``config`` and ``wiring`` are dicts as a checkpoint header stores them.
    """
    def too_large(value: Any, limit: int) -> bool:
        return not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit

    preprocessing = config.get('preprocessing')
    if isinstance(preprocessing, dict):
        for name in ('height', 'width'):
            if name in preprocessing and too_large(preprocessing[name], MAX_SIDE):
                return f'preprocessing {name}={preprocessing[name]!r} (allowed 1..{MAX_SIDE})'
    encoder = config.get('encoder')
    if isinstance(encoder, dict):
        for name, limit in (('channels', MAX_CHANNELS), ('kernel_sizes', MAX_KERNEL),
                            ('strides', MAX_KERNEL)):
            values = encoder.get(name, [])
            if not isinstance(values, list) or any(too_large(v, limit) for v in values):
                return f'encoder {name}={values!r} (allowed 1..{limit} each)'
        features = encoder.get('features_per_channel', 1)
        if too_large(features, MAX_CHANNELS):
            return f'encoder features_per_channel={features!r} (allowed 1..{MAX_CHANNELS})'
    if 'units' in config and too_large(config['units'], MAX_UNITS):
        return f'units={config["units"]!r} (allowed 1..{MAX_UNITS})'
    for name in ('units', 'input_size', 'output_size'):
        if wiring is not None and name in wiring and too_large(wiring[name], MAX_UNITS):
            return f'wiring {name}={wiring[name]!r} (allowed 1..{MAX_UNITS})'
    return None


def _preprocessing_problem(settings: Dict[str, Any]) -> Optional[str]:
    """Return what is invalid in a checkpoint's preprocessing settings, or None.

    These are the rules of ``liquid_control.data.preprocess.Preprocessing``, repeated here
    because that module needs OpenCV, which the model layer does not import. The height and
    width are checked by ``PolicyConfig`` and ``declared_size_problem``.
    """
    unknown = sorted(set(settings) - set(default_preprocessing()))
    if unknown:
        return f'unknown preprocessing settings {unknown}'
    for name in ('crop_top', 'crop_bottom', 'crop_left', 'crop_right'):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0.0 <= value < 1.0:
            return f'preprocessing {name}={value!r} is invalid: use 0 <= x < 1'
    for first, second, kept in (('crop_top', 'crop_bottom', 'rows'),
                                ('crop_left', 'crop_right', 'columns')):
        if settings[first] + settings[second] >= 1.0:
            return (f'preprocessing {first} + {second} = '
                    f'{settings[first] + settings[second]} leaves no {kept}')
    return None


def _check_size(path: Path, config: PolicyConfig, wiring: Optional[Dict[str, Any]],
                data_size: int) -> None:
    """Raise CheckpointError when the policy of ``config`` is too large to build from this file.

    Checked before building, because the build allocates what the header declares and
    the stored tensors are compared with the built ones only afterwards.
    """
    synapse_counts = None
    if wiring is not None:
        if wiring.get('units') != config.units:
            raise CheckpointError(f'checkpoint {path} does not match its own architecture: '
                                  f'its wiring has units={wiring.get("units")!r} but its '
                                  f'config units={config.units}; use another checkpoint')
        if isinstance(wiring.get('synapses'), list) and \
                isinstance(wiring.get('sensory_synapses'), list):
            synapse_counts = (len(wiring['synapses']), len(wiring['sensory_synapses']))
    problem = size_limit_problem(config, synapse_counts)
    if problem is not None:
        raise CheckpointError(f'checkpoint {path} describes a policy too large to build: '
                              f'{problem}; use another checkpoint')
    # Every encoder weight is stored as float32, so the data section must hold them all.
    encoder_parameters = count_encoder_parameters(config)
    if 4 * encoder_parameters > data_size:
        raise CheckpointError(
            f'checkpoint {path} does not match its own architecture: its config describes an '
            f'encoder of {encoder_parameters:,} parameters ({4 * encoder_parameters:,} bytes '
            f'as float32), but the file holds only {data_size:,} bytes of tensor data; use '
            'another checkpoint')


def _guess_kind(content: bytes) -> str:
    if not content:
        return 'the file is empty'
    if content.startswith(b'PK\x03\x04'):
        return ('it is a zip archive, probably a torch.save() file, which is not loaded '
                'because unpickling can run code; save the policy with save_checkpoint() instead')
    if content[:1] == b'\x80':
        return 'it looks like a Python pickle, which is never loaded because it can run code'
    if content.startswith(b'\x08') or content[:4] == b'ONNX':
        return 'it may be an ONNX model; load it with onnxruntime instead'
    return f'it starts with {content[:8]!r} instead of {MAGIC!r}'
