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
from typing import Dict, List, Optional, Tuple

import numpy as np

from liquid_control.data.episodes import EncodedImage, FrameLabels
from liquid_control.data.images import check_compressed
from liquid_control.data.importing import (MAX_STAMP_NS, EpisodeSequence, SkippedItems,
                                           check_mostly_in_order, increasing_subset,
                                           is_storable)
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
# donkeycar's controllers and actuator parts use -1..1 for user/angle and user/throttle.
COMMAND_RANGE = 1.0

_logger = logging.getLogger(__name__)


@dataclass
class TubRecord:
    """One kept record of a tub: index, time, image path, raw values and where it is."""

    index: int
    stamp_ns: int
    image_path: Path
    angle: float
    throttle: float
    imu: Optional[np.ndarray]
    catalog: str = ''
    line: int = 0

    def describe(self) -> str:
        """Return 'record 12 (catalog_0.catalog line 13)' for messages."""
        return f'record {self.index} ({self.catalog} line {self.line})'


def is_tub(path: Path) -> bool:
    """Return whether ``path`` is a donkeycar tub v2 folder."""
    return path.is_dir() and (path / 'manifest.json').is_file()


def _is_number(value) -> bool:
    # JSON true and false load as bool, a subclass of int, and are not numbers here.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _manifest_error(manifest_path: Path, detail: str) -> DataError:
    return DataError(f'{manifest_path} is not a tub v2 manifest: {detail}. Repair the file '
                     'or restore it from a copy of the tub.')


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
    if not isinstance(inputs, list) or not all(isinstance(key, str) for key in inputs):
        raise _manifest_error(manifest_path, 'line 1 is not a list of input names')
    if not isinstance(catalogs, dict) or 'paths' not in catalogs:
        raise _manifest_error(manifest_path, 'line 5 is not an object with catalog paths')
    paths = catalogs['paths']
    if not isinstance(paths, list) or not all(isinstance(name, str) for name in paths):
        raise _manifest_error(manifest_path, f'"paths" {paths!r} is not a list of file names')
    deleted = catalogs.get('deleted_indexes', [])
    if not isinstance(deleted, list) or not all(_is_integer(i) for i in deleted):
        raise _manifest_error(manifest_path,
                              f'"deleted_indexes" {deleted!r} is not a list of record indexes')
    return {'inputs': inputs, 'paths': [_catalog_path(tub, name, manifest_path)
                                        for name in paths],
            'deleted': set(deleted)}


def _catalog_path(tub: Path, name: str, manifest_path: Path) -> Path:
    """Return a catalog's path; it must be a regular file inside the tub folder."""
    path = tub / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(tub.resolve()):
        raise _manifest_error(manifest_path,
                              f'catalog path {name!r} is outside the tub folder')
    if not path.is_file():
        state = 'not a regular file' if path.exists() else 'not found'
        raise DataError(f'tub catalog {path}, listed in {manifest_path}, is {state}; '
                        'restore it or remove it from the manifest\'s "paths"')
    return path


def _stamp_ns(value) -> int:
    """Return ``_timestamp_ms`` in nanoseconds; raise ValueError for an impossible stamp."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f'_timestamp_ms {value!r} is not a finite number')
    if value <= 0:
        raise ValueError(f'_timestamp_ms {value!r} is not after 1970')
    # Integer milliseconds (what donkeycar writes) convert exactly; a float goes through
    # float arithmetic and may be off by a few hundred nanoseconds.
    stamp_ns = value * 1_000_000 if isinstance(value, int) else int(round(value * 1e6))
    if stamp_ns > MAX_STAMP_NS:
        raise ValueError(f'_timestamp_ms {value!r} is beyond the 64-bit nanosecond range '
                         '(year 2262)')
    return stamp_ns


def _number(entry: dict, key: str) -> float:
    """Return a numeric field; null, which donkeycar writes for a part that gave no
    value, is NaN (a missing value)."""
    value = entry[key]
    if value is None:
        return math.nan
    if not _is_number(value):
        raise ValueError(f'{key} {value!r} is not a number')
    return float(value)


def _image_name(entry: dict) -> str:
    name = entry[IMAGE_KEY]
    if not isinstance(name, str) or name in ('', '.', '..') or Path(name).name != name:
        raise ValueError(f'{IMAGE_KEY} {name!r} is not a file name inside images/')
    return name


def _parse_record(tub: Path, entry, has_imu: bool) -> TubRecord:
    """Return the record of one catalog line; raise ValueError or KeyError when invalid."""
    if not isinstance(entry, dict):
        raise ValueError(f'the line is a JSON {type(entry).__name__}, not an object')
    index = entry['_index']
    if not _is_integer(index):
        raise ValueError(f'_index {index!r} is not an integer')
    imu = None
    if has_imu:
        imu = np.array([_number(entry, key) for key in IMU_KEYS], dtype=np.float64)
        imu[:3] *= GYRO_SCALE
        imu[3:] *= ACCEL_SCALE
    return TubRecord(index=index, stamp_ns=_stamp_ns(entry['_timestamp_ms']),
                     image_path=tub / 'images' / _image_name(entry),
                     angle=_number(entry, ANGLE_KEY), throttle=_number(entry, THROTTLE_KEY),
                     imu=imu)


def _read_catalog(tub: Path, catalog: Path, has_imu: bool, deleted: set,
                  seen: Dict[int, str]) -> List[TubRecord]:
    try:
        lines = catalog.read_text(encoding='utf-8').splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f'cannot read tub catalog {catalog}: {error}') from None
    filled = [number for number, line in enumerate(lines, start=1) if line.strip()]
    last_line = filled[-1] if filled else 0
    records = []
    for line_number in filled:
        line = lines[line_number - 1]
        try:
            entry = json.loads(line)
        except ValueError as error:
            if line_number == last_line:
                # donkeycar appends one line a record, so a crash cuts off the last one.
                _logger.warning('tub catalog %s: last line %d is cut off (%s) and left out',
                                catalog, line_number, error)
                continue
            raise DataError(f'tub catalog {catalog} line {line_number} is not valid JSON '
                            f'({error}); the catalog is damaged') from None
        try:
            record = _parse_record(tub, entry, has_imu)
        except (ValueError, KeyError) as error:
            detail = f'{error} is missing' if isinstance(error, KeyError) else str(error)
            raise DataError(f'tub catalog {catalog} line {line_number} is invalid: {detail}. '
                            'Correct the line or delete the record with donkeycar.') from None
        record.catalog, record.line = catalog.name, line_number
        place = f'{catalog.name} line {line_number}'
        if record.index in seen:
            raise DataError(f'tub catalog {catalog} line {line_number}: _index {record.index} '
                            f'is also at {seen[record.index]}; the catalog is damaged. '
                            'Delete one of the two lines.')
        seen[record.index] = place
        if record.index not in deleted:
            records.append(record)
    return records


def read_tub(tub: Path) -> List[TubRecord]:
    """Read the kept records of a tub, in record order (``_index``).

    Raises ``DataError`` naming the file and line for a missing key, a value of the wrong
    type, an impossible timestamp, a repeated ``_index``, an unreadable catalog line
    (except a cut-off last line, which is left out with a warning) or a missing image,
    before anything is written.
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

    records: List[TubRecord] = []
    seen: Dict[int, str] = {}
    for catalog in manifest['paths']:
        records += _read_catalog(tub, catalog, has_imu, manifest['deleted'], seen)

    missing = [r.image_path.name for r in records if not r.image_path.is_file()]
    if missing:
        shown = ', '.join(missing[:5]) + (', ...' if len(missing) > 5 else '')
        raise DataError(f'tub {tub} lacks {len(missing)} image file(s) in images/ (missing or '
                        f'not regular files): {shown}. Restore them or delete those records '
                        'with donkeycar first.')
    records.sort(key=lambda r: r.index)
    return records


def _record_labels(record: TubRecord, linear_scale: float, angular_scale: float,
                   bad_commands: SkippedItems, out_of_range: SkippedItems,
                   bad_imu: SkippedItems) -> FrameLabels:
    """Return a record's labels; a command or IMU value that cannot be stored is missing."""
    linear = record.throttle * linear_scale
    angular = record.angle * angular_scale
    status = 'ok'
    if not (is_storable(linear) and is_storable(angular)):
        bad_commands.add(f'{record.describe()}: {ANGLE_KEY} {record.angle!r}, '
                         f'{THROTTLE_KEY} {record.throttle!r}')
        linear = linear if is_storable(linear) else math.nan
        angular = angular if is_storable(angular) else math.nan
        status = 'missing'
    elif max(abs(record.angle), abs(record.throttle)) > COMMAND_RANGE:
        out_of_range.add(f'{record.describe()}: {ANGLE_KEY} {record.angle!r}, '
                         f'{THROTTLE_KEY} {record.throttle!r}')
    imu = record.imu
    if imu is not None and not all(is_storable(value) for value in imu):
        bad_imu.add(f'{record.describe()}: {imu.tolist()}')
        imu = None
    return FrameLabels(
        imu=imu, imu_status='recorded' if imu is not None else 'missing',
        linear_x=linear, angular_z=angular, command_status=status,
        command_age_s=0.0 if status == 'ok' else math.nan)


def _keep_in_order(tub: Path, records: List[TubRecord]
                   ) -> Tuple[List[TubRecord], SkippedItems]:
    """Leave out records stamped out of order with their neighbours (see importing)."""
    keep = increasing_subset([record.stamp_ns for record in records])
    check_mostly_in_order(int(keep.sum()), len(records), f'tub {tub}', 'records')
    out_of_order = SkippedItems('record(s) left out because their _timestamp_ms is out of '
                                'order with the records around them')
    for record, kept in zip(records, keep):
        if not kept:
            out_of_order.add(f'{record.describe()} at {record.stamp_ns // 1_000_000} ms')
    return [record for record, kept in zip(records, keep) if kept], out_of_order


def _read_image(record: TubRecord) -> EncodedImage:
    """Return a record's image; raise DataError when it is unreadable or not a whole image."""
    try:
        data = record.image_path.read_bytes()
    except OSError as error:
        raise DataError(f'cannot read it: {error}') from None
    return EncodedImage(data, check_compressed(data))


def _tub_metadata(tub: Path, mapping: dict, has_imu: bool, options: LabelOptions) -> dict:
    return {
        'source': {'kind': 'donkeycar_tub', 'path': str(tub.resolve()),
                   'fields': {'image': IMAGE_KEY, 'angle': ANGLE_KEY,
                              'throttle': THROTTLE_KEY,
                              'imu': list(IMU_KEYS) if has_imu else None}},
        'commands': mapping,
        'imu': {'present': has_imu, 'units': ['rad/s'] * 3 + ['m/s^2'] * 3,
                'gyro_scale': GYRO_SCALE, 'accel_scale': ACCEL_SCALE},
        'label_options': options.to_dict(),
    }


def import_tub(tub: Path, out_dir: Path, options: LabelOptions) -> List[Path]:
    """Import a tub into episodes in ``out_dir``; return the episode folders.

    A gap longer than ``options.split_gap_s`` between kept records starts a new episode.
    Records stamped out of order with their neighbours and records whose image does not
    decode are left out, and a command or IMU value that is not a finite float32 number
    is stored as missing, with one warning for each reason that counts them. On any
    error the episodes of this import are deleted before the error is raised.
    """
    tub = Path(tub)
    records = read_tub(tub)
    if not records:
        raise DataError(f'tub {tub} has no records (all deleted or empty catalogs)')
    source = f'tub {tub}'
    records, out_of_order = _keep_in_order(tub, records)
    mapping = command_mapping('donkeycar', options)
    metadata = _tub_metadata(tub, mapping, records[0].imu is not None, options)
    linear_scale = mapping['linear_x']['scale']
    angular_scale = mapping['angular_z']['scale']
    bad_commands = SkippedItems(
        'record(s) with a command value that is not a finite float32 number, treated as '
        'without a command (invalid)')
    out_of_range = SkippedItems(
        f'record(s) with {ANGLE_KEY} or {THROTTLE_KEY} outside donkeycar\'s -1..1, kept as '
        'recorded')
    bad_imu = SkippedItems('record(s) with an IMU value that is not a finite float32 number, '
                           'stored without IMU')
    bad_images = SkippedItems('record(s) left out because their image is damaged')
    skipped_invalid = 0
    with EpisodeSequence(out_dir, metadata, options.split_gap_s) as sequence:
        for record in records:
            labels = _record_labels(record, linear_scale, angular_scale, bad_commands,
                                    out_of_range, bad_imu)
            if not labels.valid and options.invalid_frames == 'skip':
                skipped_invalid += 1
                continue
            try:
                image = _read_image(record)
            except DataError as error:
                bad_images.add(f'{record.describe()}, images/{record.image_path.name}: '
                               f'{error}')
                continue
            sequence.add(record.stamp_ns, image, labels)
        folders = sequence.finish('end of tub')
        for items in (out_of_order, bad_commands, out_of_range, bad_imu, bad_images):
            items.warn(source, _logger)
        if skipped_invalid:
            _logger.warning('%s: skipped %d record(s) without a usable command '
                            '(invalid_frames=skip)', source, skipped_invalid)

    if not folders:
        reasons = []
        if bad_images.count:
            reasons.append(bad_images.describe())
        if skipped_invalid:
            reasons.append(f'{skipped_invalid} without a usable command (invalid_frames=skip)')
        raise DataError(f'{source} gave no frames: of {len(records)} records in time order, '
                        f'{"; ".join(reasons)}')
    return folders
