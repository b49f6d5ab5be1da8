"""Reader and importer for donkeycar tub v2 folders.

A tub v2 folder contains ``manifest.json`` (five JSON lines: input keys, their types, user
metadata, manifest metadata, and the catalog list with ``deleted_indexes``), catalog files
with one JSON record a line, and ``images/``. Records listed in ``deleted_indexes`` are
left out.
"""

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from liquid_control.data.episodes import EncodedImage, FrameLabels, image_extension
from liquid_control.data.importing import EpisodeSequence
from liquid_control.data.sync import LabelOptions, command_mapping
from liquid_control.errors import DataError

IMAGE_KEY = 'cam/image_array'
ANGLE_KEY = 'user/angle'
THROTTLE_KEY = 'user/throttle'
# donkeycar's IMU part outputs, in IMU_FIELDS order (gyroscope first).
IMU_KEYS = ('imu/gyr_x', 'imu/gyr_y', 'imu/gyr_z', 'imu/acl_x', 'imu/acl_y', 'imu/acl_z')
# NOTE: donkeycar's MPU-6050 part reports the gyroscope in deg/s (the mpu6050 library's
# get_gyro_data) and acceleration in m/s^2; other IMU parts may differ. The scales are
# stored in the episode metadata.
GYRO_SCALE = math.pi / 180.0
ACCEL_SCALE = 1.0

_logger = logging.getLogger(__name__)


@dataclass
class TubRecord:
    """One kept record of a tub: index, time, image path and raw values."""

    index: int
    stamp_ns: int
    image_path: Path
    angle: float
    throttle: float
    imu: Optional[np.ndarray]


def is_tub(path: Path) -> bool:
    """Return whether ``path`` is a donkeycar tub v2 folder."""
    return path.is_dir() and (path / 'manifest.json').is_file()


def _read_manifest(tub: Path) -> dict:
    manifest_path = tub / 'manifest.json'
    try:
        lines = manifest_path.read_text(encoding='utf-8').splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f'cannot read {manifest_path}: {error}') from None
    if len(lines) < 5:
        raise DataError(f'{manifest_path} has {len(lines)} lines, expected 5 (inputs, types, '
                        'metadata, manifest metadata, catalogs); the tub is truncated or not '
                        'a tub v2')
    try:
        inputs = json.loads(lines[0])
        catalogs = json.loads(lines[4])
    except ValueError as error:
        raise DataError(f'{manifest_path} is not valid tub v2 JSON: {error}') from None
    if not isinstance(inputs, list) or 'paths' not in catalogs:
        raise DataError(f'{manifest_path} is not a tub v2 manifest: no input list or catalog '
                        'paths')
    return {'inputs': inputs, 'paths': catalogs['paths'],
            'deleted': set(catalogs.get('deleted_indexes', []))}


def _milliseconds_to_ns(value) -> int:
    # Integer milliseconds (what donkeycar writes) convert exactly; a float goes through
    # float arithmetic and may be off by a few hundred nanoseconds.
    if isinstance(value, int):
        return value * 1_000_000
    return int(round(float(value) * 1e6))


def read_tub(tub: Path) -> List[TubRecord]:
    """Read the kept records of a tub, sorted by time.

    Raises ``DataError`` naming the file and line for a missing key, an unreadable catalog
    line or a missing image, before anything is written.
    """
    tub = Path(tub)
    if not is_tub(tub):
        raise DataError(f'{tub} is not a donkeycar tub: manifest.json not found')
    manifest = _read_manifest(tub)
    inputs = manifest['inputs']
    for key in (IMAGE_KEY, ANGLE_KEY, THROTTLE_KEY):
        if key not in inputs:
            raise DataError(f'tub {tub} has no {key!r} input; its inputs are: '
                            f'{", ".join(inputs)}')
    has_imu = all(key in inputs for key in IMU_KEYS)

    records = []
    for catalog_name in manifest['paths']:
        catalog = tub / catalog_name
        try:
            lines = catalog.read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f'cannot read tub catalog {catalog}: {error}') from None
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                index = int(entry['_index'])
                if index in manifest['deleted']:
                    continue
                imu = None
                if has_imu:
                    imu = np.array([entry[key] for key in IMU_KEYS], dtype=np.float64)
                    imu[:3] *= GYRO_SCALE
                    imu[3:] *= ACCEL_SCALE
                records.append(TubRecord(
                    index=index,
                    stamp_ns=_milliseconds_to_ns(entry['_timestamp_ms']),
                    image_path=tub / 'images' / entry[IMAGE_KEY],
                    angle=float(entry[ANGLE_KEY]),
                    throttle=float(entry[THROTTLE_KEY]),
                    imu=imu))
            except (ValueError, KeyError, TypeError) as error:
                raise DataError(f'tub catalog {catalog} line {line_number} is invalid '
                                f'({type(error).__name__}: {error}); the catalog is truncated '
                                'or damaged') from None

    missing = [r.image_path.name for r in records if not r.image_path.is_file()]
    if missing:
        shown = ', '.join(missing[:5]) + (', ...' if len(missing) > 5 else '')
        raise DataError(f'tub {tub} lacks {len(missing)} image file(s) in images/: {shown}. '
                        'Restore them or delete those records with donkeycar first.')
    records.sort(key=lambda r: (r.stamp_ns, r.index))
    return records


def import_tub(tub: Path, out_dir: Path, options: LabelOptions) -> List[Path]:
    """Import a tub into episodes in ``out_dir``; return the episode folders.

    A gap longer than ``options.split_gap_s`` between kept records starts a new episode.
    On any error the episodes of this import are deleted before the error is raised.
    """
    tub = Path(tub)
    records = read_tub(tub)
    if not records:
        raise DataError(f'tub {tub} has no records (all deleted or empty catalogs)')
    mapping = command_mapping('donkeycar', options)
    metadata = {
        'source': {'kind': 'donkeycar_tub', 'path': str(tub.resolve()),
                   'fields': {'image': IMAGE_KEY, 'angle': ANGLE_KEY,
                              'throttle': THROTTLE_KEY,
                              'imu': list(IMU_KEYS) if records[0].imu is not None else None}},
        'commands': mapping,
        'imu': {'present': records[0].imu is not None, 'units': ['rad/s'] * 3 + ['m/s^2'] * 3,
                'gyro_scale': GYRO_SCALE, 'accel_scale': ACCEL_SCALE},
        'label_options': options.to_dict(),
    }
    linear_scale = mapping['linear_x']['scale']
    angular_scale = mapping['angular_z']['scale']
    with EpisodeSequence(out_dir, metadata, options.split_gap_s) as sequence:
        for record in records:
            data = record.image_path.read_bytes()
            labels = FrameLabels(
                imu=record.imu, imu_status='recorded' if record.imu is not None else 'missing',
                linear_x=record.throttle * linear_scale, angular_z=record.angle * angular_scale,
                command_status='ok', command_age_s=0.0)
            try:
                extension = image_extension(data)
            except DataError as error:
                raise DataError(f'tub image {record.image_path} (record {record.index}): '
                                f'{error}') from None
            sequence.add(record.stamp_ns, EncodedImage(data, extension), labels)
        folders = sequence.finish('end of tub')
    if sequence.skipped:
        _logger.warning('tub %s: skipped %d record(s) with the same time as the one before',
                        tub, sequence.skipped)
    return folders
