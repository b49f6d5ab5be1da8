"""Episode folders: the on-disk format that the recorder and the importers write.

An episode is one folder with a row per camera frame::

    episode_0003/
        metadata.json   format_version, source, topics, units, sign conventions, counts
        rows.csv        one row a frame, columns in ``COLUMNS``
        frames/         000000.jpg, 000001.png, ... (compressed input stored as received)

While it is written the folder is named ``episode_0003.partial`` and its metadata has
``"finished": false``. ``EpisodeWriter.close`` rewrites the metadata with
``"finished": true`` and then renames the folder, so a folder without the suffix is
always complete and nothing opens it for writing again. Rows are appended after their
frame file and flushed regularly, so after a crash the partial folder is readable up to
its last flushed row. The format is documented in docs/dataset.md.
"""

import csv
import datetime
import functools
import io
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np

from liquid_control.data.images import decode_raw
from liquid_control.errors import DataError

FORMAT_VERSION = 1
METADATA_FILE = 'metadata.json'
ROWS_FILE = 'rows.csv'
FRAMES_DIR = 'frames'
PARTIAL_SUFFIX = '.partial'
EPISODE_PREFIX = 'episode_'

COMMAND_NAMES = ('linear_x', 'angular_z')
IMU_FIELDS = ('angular_velocity_x', 'angular_velocity_y', 'angular_velocity_z',
              'linear_acceleration_x', 'linear_acceleration_y', 'linear_acceleration_z')
IMU_UNITS = ('rad/s',) * 3 + ('m/s^2',) * 3
COLUMNS = (('index', 'stamp_ns', 'frame') + IMU_FIELDS
           + ('imu_status',) + COMMAND_NAMES + ('command_status', 'command_age_s', 'valid'))

# imu_status: how the IMU values of a row were obtained.
IMU_STATUSES = ('recorded', 'interpolated', 'nearest', 'missing')
# command_status: 'ok' when a command was matched to the frame, 'missing' otherwise.
COMMAND_STATUSES = ('ok', 'missing')

# Folder names of episodes, finished or not: episode_0003, episode_0003.partial.
EPISODE_NAME = re.compile(r'^episode_(\d+)(\.partial)?$')
# Values are read back as float32: a larger magnitude would come back as infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = 2 ** 63 - 1
_logger = logging.getLogger(__name__)


@dataclass
class FrameLabels:
    """IMU reading and teacher command attached to one frame; NaN marks a missing value.

    ``imu`` is ordered as ``IMU_FIELDS``. ``command_age_s`` is the frame time minus the
    command time, negative when the matched command was stamped after the frame.
    """

    imu: Optional[np.ndarray] = None
    imu_status: str = 'missing'
    linear_x: float = math.nan
    angular_z: float = math.nan
    command_status: str = 'missing'
    command_age_s: float = math.nan

    @property
    def valid(self) -> bool:
        """Whether the frame has a usable command (both fields finite in float32)."""
        return (self.command_status == 'ok' and _fits_float32(self.linear_x)
                and _fits_float32(self.angular_z))


def _fits_float32(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


@dataclass
class EncodedImage:
    """Image file bytes (JPEG or PNG) to store unchanged, with the file extension."""

    data: bytes
    extension: str


def image_extension(data: bytes) -> str:
    """Return 'jpg' or 'png' from the magic bytes of an encoded image.

    Raises ``DataError`` for any other format, because only these two are stored as
    received.
    """
    head = bytes(data[:8])
    if head.startswith(b'\xff\xd8\xff'):
        return 'jpg'
    if head.startswith(b'\x89PNG\r\n\x1a\n'):
        return 'png'
    raise DataError(
        f'compressed image of {len(data)} bytes starting with {head!r} is neither JPEG '
        'nor PNG; only these formats can be stored as received')


def encode_image(rgb: np.ndarray, image_format: str = 'png', jpeg_quality: int = 90,
                 png_compression: int = 1) -> EncodedImage:
    """Encode an ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8 array as PNG or JPEG."""
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f'cannot store an image of dtype {image.dtype} and shape '
                        f'{image.shape}: expected uint8 (H, W, 3) RGB or (H, W) grey')
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if image_format == 'png':
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)]
        if hasattr(cv2, 'IMWRITE_PNG_FILTER'):
            # Without compression, row filters only cost time. With compression, the single
            # SUB filter encoded 640x480 RGB camera-like frames about twice as fast as
            # libpng's adaptive choice, at a similar size (OpenCV 5.1, one thread).
            row_filter = cv2.IMWRITE_PNG_FILTER_NONE if png_compression == 0 \
                else cv2.IMWRITE_PNG_FILTER_SUB
            params += [cv2.IMWRITE_PNG_FILTER, row_filter]
        ok, encoded = cv2.imencode('.png', image, params)
        extension = 'png'
    elif image_format in ('jpeg', 'jpg'):
        ok, encoded = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        extension = 'jpg'
    else:
        raise DataError(f'invalid image format {image_format!r}: use png or jpeg')
    if not ok:
        raise DataError(f'{image_format} encoding failed for an image of shape {image.shape}')
    return EncodedImage(encoded.tobytes(), extension)


def raw_image_for_storage(encoding: str, height: int, width: int, step: int, data,
                          is_bigendian: bool = False) -> np.ndarray:
    """Decode a raw ``sensor_msgs/Image`` buffer into the array ``EpisodeWriter`` stores.

    8-bit grey images stay ``(H, W)``, so their PNG files are a third of the size and
    faster to write; every other encoding becomes ``(H, W, 3)`` RGB. Readers get RGB
    either way because ``Episode.load_frame`` decodes in colour.
    """
    if encoding.lower() in ('mono8', '8uc1'):
        rgb_or_grey = decode_raw(encoding, height, width, step, data, is_bigendian)
        return np.ascontiguousarray(rgb_or_grey[:, :, 0])
    return decode_raw(encoding, height, width, step, data, is_bigendian)


def _format_float(value: float) -> str:
    # Adding 0.0 turns -0.0 (a negated zero steering angle) into 0.0.
    return '' if value is None or not math.isfinite(value) else repr(float(value) + 0.0)


def _write_json_atomically(path: Path, content: dict, sync: bool) -> None:
    temporary = path.with_name(path.name + '.tmp')
    with open(temporary, 'w') as stream:
        json.dump(content, stream, indent=2, sort_keys=True)
        stream.write('\n')
        stream.flush()
        if sync:
            os.fsync(stream.fileno())
    os.replace(temporary, path)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def next_episode_name(dataset_dir: Path) -> str:
    """Return the first ``episode_NNNN`` name above every episode in the folder."""
    numbers = [-1]
    if dataset_dir.is_dir():
        for child in dataset_dir.iterdir():
            match = EPISODE_NAME.match(child.name)
            if match:
                numbers.append(int(match.group(1)))
    return f'{EPISODE_PREFIX}{max(numbers) + 1:04d}'


class EpisodeWriter:
    """Write one episode incrementally, crash-safely, into a dataset folder.

    Frames must come in strictly increasing time. ``add`` writes the frame file, then
    appends its row. Rows are flushed to the operating system every ``flush_every_rows``
    rows and synced to disk every ``fsync_interval_s`` seconds (None: only on close).
    ``close`` finishes the episode; ``abort`` deletes it. Not thread-safe: use one
    thread per writer.
    """

    def __init__(self, dataset_dir: Union[str, Path], metadata: dict, *,
                 name: Optional[str] = None, flush_every_rows: int = 1,
                 fsync_interval_s: Optional[float] = 1.0, image_format: str = 'png',
                 jpeg_quality: int = 90, png_compression: int = 1):
        self.dataset_dir = Path(dataset_dir)
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        self.flush_every_rows = max(1, int(flush_every_rows))
        self.fsync_interval_s = fsync_interval_s
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.png_compression = png_compression

        self.name, self.partial_dir = self._create_partial_dir(name)
        self.final_dir = self.dataset_dir / self.name
        try:
            self._start_files(metadata)
        except BaseException:
            # A failed start leaves no folder that nothing would ever finish or delete.
            shutil.rmtree(self.partial_dir, ignore_errors=True)
            raise

    def _start_files(self, metadata: dict) -> None:
        (self.partial_dir / FRAMES_DIR).mkdir()
        self._partial_path = str(self.partial_dir)

        self.metadata = dict(metadata)
        self.metadata.update({
            'format_version': FORMAT_VERSION,
            'finished': False,
            'name': self.name,
            'created_at': datetime.datetime.now(datetime.timezone.utc).isoformat(),
            'columns': list(COLUMNS),
        })
        _write_json_atomically(self.partial_dir / METADATA_FILE, self.metadata, sync=False)

        self._rows = open(self.partial_dir / ROWS_FILE, 'w', newline='')
        self._csv = csv.writer(self._rows, lineterminator='\n')
        self._csv.writerow(COLUMNS)
        self._rows.flush()
        self._unflushed_rows = 0
        self._last_fsync = time.monotonic()
        self._count = 0
        self._first_stamp_ns: Optional[int] = None
        self._last_stamp_ns: Optional[int] = None
        self._image_size: Optional[List[int]] = None
        self._closed = False

    def _create_partial_dir(self, name: Optional[str]):
        for _ in range(1000):
            chosen = name or next_episode_name(self.dataset_dir)
            if (self.dataset_dir / chosen).exists():
                raise DataError(f'episode {self.dataset_dir / chosen} already exists; a '
                                'finished episode is never reopened. Choose another name.')
            partial_dir = self.dataset_dir / (chosen + PARTIAL_SUFFIX)
            try:
                partial_dir.mkdir()
                return chosen, partial_dir
            except FileExistsError:
                if name:
                    raise DataError(f'episode {partial_dir} is being written or was left '
                                    'by a crash; choose another name') from None
        raise DataError(f'cannot create a new episode folder in {self.dataset_dir}')

    def __len__(self) -> int:
        return self._count

    @property
    def last_stamp_ns(self) -> Optional[int]:
        """Stamp of the last frame added, or None."""
        return self._last_stamp_ns

    def add(self, stamp_ns: int, image: Union[EncodedImage, np.ndarray],
            labels: FrameLabels) -> int:
        """Write one frame and its row; return the row index.

        ``image`` is either an ``EncodedImage`` stored unchanged or a uint8 RGB/grey array
        encoded in the writer's ``image_format``. Raises ``DataError`` if the stamp does
        not increase or the episode is closed.
        """
        if self._closed:
            raise DataError(f'episode {self.final_dir} is closed; start a new one')
        stamp_ns = int(stamp_ns)
        if not 0 <= stamp_ns <= _INT64_MAX:
            raise DataError(f'frame stamp {stamp_ns} ns is outside 0..{_INT64_MAX} (int64 '
                            f'nanoseconds); episode {self.partial_dir} keeps its earlier '
                            'frames. Check the clock or the source of the stamps.')
        if labels.imu is not None and not all(abs(v) <= FLOAT32_MAX or math.isnan(v)
                                              for v in labels.imu):
            raise DataError(f'IMU values {tuple(labels.imu)} at stamp {stamp_ns} ns include '
                            'an infinity or a magnitude beyond float32; mark the reading '
                            'missing (NaN) instead')
        if self._last_stamp_ns is not None and stamp_ns <= self._last_stamp_ns:
            raise DataError(
                f'frame stamp {stamp_ns} ns does not increase (previous {self._last_stamp_ns} '
                f'ns) in episode {self.partial_dir}')
        if not isinstance(image, EncodedImage):
            array = np.asarray(image)
            if self._image_size is None:
                self._image_size = [int(array.shape[1]), int(array.shape[0])]
            image = encode_image(array, self.image_format, self.jpeg_quality,
                                 self.png_compression)
        elif self._image_size is None:
            self._image_size = _encoded_size(image.data)

        index = self._count
        frame_name = f'{FRAMES_DIR}/{index:06d}.{image.extension}'
        with open(os.path.join(self._partial_path, frame_name), 'wb') as stream:
            stream.write(image.data)

        imu = labels.imu if labels.imu is not None else (math.nan,) * len(IMU_FIELDS)
        self._csv.writerow(
            [index, stamp_ns, frame_name] + [_format_float(v) for v in imu]
            + [labels.imu_status, _format_float(labels.linear_x),
               _format_float(labels.angular_z), labels.command_status,
               _format_float(labels.command_age_s), int(labels.valid)])
        self._count += 1
        if self._first_stamp_ns is None:
            self._first_stamp_ns = stamp_ns
        self._last_stamp_ns = stamp_ns

        self._unflushed_rows += 1
        if self._unflushed_rows >= self.flush_every_rows:
            self.flush()
        return index

    def flush(self) -> None:
        """Hand buffered rows to the operating system; sync them when the interval is due."""
        self._rows.flush()
        self._unflushed_rows = 0
        if self.fsync_interval_s is not None:
            now = time.monotonic()
            if now - self._last_fsync >= self.fsync_interval_s:
                os.fsync(self._rows.fileno())
                self._last_fsync = now

    def close(self, end_reason: str = '', extra_metadata: Optional[dict] = None
              ) -> Optional[Path]:
        """Finish the episode and return its final folder.

        An episode without frames is deleted and None is returned.
        """
        if self._closed:
            return self.final_dir if self.final_dir.exists() else None
        self._closed = True
        self._rows.flush()
        os.fsync(self._rows.fileno())
        self._rows.close()
        if self._count == 0:
            shutil.rmtree(self.partial_dir, ignore_errors=True)
            return None

        self.metadata.update(extra_metadata or {})
        self.metadata.update({
            'finished': True,
            'frame_count': self._count,
            'start_stamp_ns': self._first_stamp_ns,
            'end_stamp_ns': self._last_stamp_ns,
            'duration_s': (self._last_stamp_ns - self._first_stamp_ns) * 1e-9,
            'image_size': self._image_size,
            'end_reason': end_reason,
            'closed_at': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        })
        _write_json_atomically(self.partial_dir / METADATA_FILE, self.metadata, sync=True)
        os.rename(self.partial_dir, self.final_dir)
        _fsync_directory(self.dataset_dir)
        return self.final_dir

    def abort(self) -> None:
        """Delete the episode being written (for an import that failed part-way)."""
        if not self._closed:
            self._closed = True
            self._rows.close()
        shutil.rmtree(self.partial_dir, ignore_errors=True)


def _encoded_size(data: bytes) -> Optional[List[int]]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    return [int(image.shape[1]), int(image.shape[0])]


# ---------------------------------------------------------------------------- reading

@dataclass
class _Table:
    stamp_ns: np.ndarray
    frames: List[str]
    imu: np.ndarray
    imu_status: np.ndarray
    commands: Dict[str, np.ndarray]
    command_status: np.ndarray
    command_age_s: np.ndarray
    valid: np.ndarray
    dropped_rows: int = 0
    notes: List[str] = field(default_factory=list)


def _parse_float(text: str) -> float:
    return float(text) if text else math.nan


def _parse_valid(text: str) -> bool:
    if text not in ('0', '1'):
        raise ValueError(f'valid is {text!r}, expected 0 or 1')
    return text == '1'


def _is_plain_frame_name(name: str) -> bool:
    """Return True for a relative path that stays inside the episode folder."""
    path = Path(name)
    return bool(name) and not path.is_absolute() and '..' not in path.parts


@functools.lru_cache(maxsize=256)
def _load_table(rows_path: str, mtime_ns: int, size: int, finished: bool) -> _Table:
    """Parse rows.csv; cached on (path, modification time, size)."""
    try:
        with open(rows_path, newline='', encoding='utf-8') as stream:
            text = stream.read()
    except UnicodeDecodeError as error:
        raise DataError(f'{rows_path} is not UTF-8 text ({error}); the episode is '
                        'damaged') from None
    notes = []
    dropped = 0
    if not finished and text and not text.endswith('\n'):
        text = text[:text.rfind('\n') + 1]
        dropped += 1
        notes.append('last row was cut off by an interrupted write and is ignored')
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f'{rows_path} is empty: the header row is missing') from None
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise DataError(f'{rows_path} lacks the columns {missing}; it was not written by '
                        'liquid_control or is damaged')
    position = {name: header.index(name) for name in COLUMNS}
    episode_dir = Path(rows_path).parent

    stamps, frames, imu, imu_status = [], [], [], []
    linear, angular, command_status, age, valid = [], [], [], [], []
    for line_number, row in enumerate(reader, start=2):
        if len(row) != len(header):
            if finished:
                raise DataError(f'{rows_path} line {line_number} has {len(row)} fields, '
                                f'expected {len(header)}; the episode is damaged')
            dropped += 1
            notes.append(f'row at line {line_number} is incomplete; reading stops there')
            break
        try:
            frame = row[position['frame']]
            if not _is_plain_frame_name(frame):
                raise DataError(f'{rows_path} line {line_number}: frame {frame!r} is not a '
                                'file name inside the episode folder; the episode is damaged')
            if not finished and not (episode_dir / frame).is_file():
                notes.append(f'frame {frame} of line {line_number} is missing; '
                             'reading stops there')
                dropped += 1
                break
            stamps.append(int(row[position['stamp_ns']]))
            frames.append(frame)
            imu.append([_parse_float(row[position[name]]) for name in IMU_FIELDS])
            imu_status.append(row[position['imu_status']])
            linear.append(_parse_float(row[position['linear_x']]))
            angular.append(_parse_float(row[position['angular_z']]))
            command_status.append(row[position['command_status']])
            age.append(_parse_float(row[position['command_age_s']]))
            valid.append(_parse_valid(row[position['valid']]))
        except (ValueError, OverflowError) as error:
            raise DataError(f'{rows_path} line {line_number} is invalid: {error}') from None
        if valid[-1] and not (_fits_float32(linear[-1]) and _fits_float32(angular[-1])):
            raise DataError(f'{rows_path} line {line_number} marks a command of '
                            f'({linear[-1]}, {angular[-1]}) valid; the episode is damaged')

    try:
        stamp_array = np.asarray(stamps, dtype=np.int64)
    except OverflowError:
        raise DataError(f'{rows_path}: a stamp_ns value is outside the 64-bit range; the '
                        'episode is damaged') from None
    if stamp_array.size > 1 and np.any(np.diff(stamp_array) <= 0):
        first = int(np.flatnonzero(np.diff(stamp_array) <= 0)[0]) + 1
        # Line 1 is the header, so row i is on line i + 2.
        raise DataError(f'{rows_path} line {first + 2}: stamp_ns {stamp_array[first]} does '
                        f'not follow {stamp_array[first - 1]} of the line before; timestamps '
                        'must increase strictly. The episode is damaged.')
    with np.errstate(over='ignore'):  # Beyond float32 reads as infinity, never valid.
        table = _Table(
            stamp_ns=stamp_array,
            frames=frames,
            imu=np.asarray(imu, dtype=np.float32).reshape(-1, len(IMU_FIELDS)),
            imu_status=np.asarray(imu_status, dtype=str),
            commands={'linear_x': np.asarray(linear, dtype=np.float32),
                      'angular_z': np.asarray(angular, dtype=np.float32)},
            command_status=np.asarray(command_status, dtype=str),
            command_age_s=np.asarray(age, dtype=np.float32),
            valid=np.asarray(valid, dtype=bool),
            dropped_rows=dropped,
            notes=notes)
    # The table is shared by every Episode of this folder through the cache.
    for array in [table.stamp_ns, table.imu, table.imu_status, table.command_status,
                  table.command_age_s, table.valid, *table.commands.values()]:
        array.flags.writeable = False
    return table


class Episode:
    """Read-only view of one episode folder, finished or left partial by a crash.

    The table is parsed once and cached per process; frames are decoded lazily with
    OpenCV. For a partial episode only the complete rows whose frame file exists are
    read, and ``notes`` lists what was left out.
    """

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DataError(f'episode folder {self.folder} not found')
        rows_path = self.folder / ROWS_FILE
        metadata_path = self.folder / METADATA_FILE
        if not rows_path.is_file():
            raise DataError(f'{self.folder} is not an episode: {ROWS_FILE} is missing')
        try:
            self.metadata = json.loads(metadata_path.read_text())
        except FileNotFoundError:
            raise DataError(f'{self.folder} is not an episode: {METADATA_FILE} is missing'
                            ) from None
        except (ValueError, OSError) as error:
            raise DataError(f'{metadata_path} is unreadable: {error}') from None
        if not isinstance(self.metadata, dict):
            raise DataError(f'{metadata_path} is not a JSON object; the episode is damaged')
        version = self.metadata.get('format_version')
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DataError(
                f'{metadata_path} has format_version {version!r}, expected a whole number '
                f'from 1; the episode is damaged or was not written by liquid_control')
        if version > FORMAT_VERSION:
            raise DataError(
                f'{metadata_path} has format_version {version!r}; this version of '
                f'liquid_control reads up to {FORMAT_VERSION}. Update liquid_control.')

        self.finished = (not self.folder.name.endswith(PARTIAL_SUFFIX)
                         and self.metadata.get('finished') is True)
        stat = rows_path.stat()
        self._table = _load_table(str(rows_path), stat.st_mtime_ns, stat.st_size,
                                  self.finished)
        expected = self.metadata.get('frame_count')
        if self.finished and isinstance(expected, int) and expected != len(self._table.frames):
            raise DataError(f'{rows_path} has {len(self._table.frames)} rows but '
                            f'{METADATA_FILE} says frame_count {expected}; rows were lost '
                            'after the episode was finished. The episode is damaged.')
        self.timestamps = self._table.stamp_ns.astype(np.float64) * 1e-9

    def __len__(self) -> int:
        return len(self._table.frames)

    def __repr__(self) -> str:
        state = '' if self.finished else ', unfinished'
        return f'Episode({str(self.folder)!r}, {len(self)} frames{state})'

    @property
    def name(self) -> str:
        """Folder name, such as ``episode_0003``."""
        return self.folder.name

    @property
    def notes(self) -> List[str]:
        """What reading a partial episode left out, empty for a finished one."""
        return list(self._table.notes)

    @property
    def stamp_ns(self) -> np.ndarray:
        """Frame stamps, (N,) int64 nanoseconds."""
        return self._table.stamp_ns

    @property
    def imu(self) -> np.ndarray:
        """IMU readings, (N, 6) float32 in ``IMU_FIELDS`` order, NaN where missing."""
        return self._table.imu

    @property
    def imu_status(self) -> np.ndarray:
        """(N,) strings from ``IMU_STATUSES``."""
        return self._table.imu_status

    @property
    def has_imu(self) -> bool:
        """Whether any frame has an IMU reading."""
        return bool(np.any(self._table.imu_status != 'missing'))

    @property
    def command_status(self) -> np.ndarray:
        """(N,) strings from ``COMMAND_STATUSES``."""
        return self._table.command_status

    @property
    def has_commands(self) -> bool:
        """Whether any frame has a teacher command."""
        return bool(np.any(self._table.command_status == 'ok'))

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: the frame has a usable command."""
        return self._table.valid

    @property
    def command_age_s(self) -> np.ndarray:
        """(N,) float32 frame time minus matched command time, NaN where missing."""
        return self._table.command_age_s

    def command(self, name: str) -> np.ndarray:
        """Return one command field, (N,) float32, NaN where missing."""
        if name not in self._table.commands:
            raise DataError(f'unknown command field {name!r}; fields: {", ".join(COMMAND_NAMES)}')
        return self._table.commands[name]

    def commands(self, names: Sequence[str] = COMMAND_NAMES) -> np.ndarray:
        """Return the named command fields stacked, (N, len(names)) float32."""
        return np.stack([self.command(name) for name in names], axis=1)

    @property
    def dt(self) -> np.ndarray:
        """(N,) float64 seconds since the previous frame; the first is the median period."""
        if len(self) == 0:
            return np.zeros(0)
        deltas = np.diff(self.timestamps, prepend=self.timestamps[0])
        deltas[0] = self.median_period_s
        return deltas

    @property
    def median_period_s(self) -> float:
        """Median time between consecutive frames (0.05 for a single frame)."""
        if len(self) < 2:
            return 0.05
        return float(np.median(np.diff(self.timestamps)))

    def frame_name(self, index: int) -> str:
        """Return the image file of frame ``index`` as rows.csv names it."""
        return self._table.frames[index]

    def frame_path(self, index: int) -> Path:
        """Return the image file of frame ``index``."""
        return self.folder / self._table.frames[index]

    def load_frame(self, index: int) -> np.ndarray:
        """Decode frame ``index`` into an ``(H, W, 3)`` uint8 RGB array."""
        path = self.frame_path(index)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f'frame {path} is missing or not a readable image. List every '
                            'damaged frame with liquid-control dataset check '
                            f'{self.folder.parent}')
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def load_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Decode several frames into a ``(T, H, W, 3)`` uint8 array."""
        return np.stack([self.load_frame(int(i)) for i in indices])

    def default_max_gap_s(self) -> float:
        """Return the gap threshold that ``windows`` uses by default: 3 median periods."""
        return 3.0 * self.median_period_s

    def segments(self, max_gap_s: Optional[float] = None, require_valid: bool = True
                 ) -> List[np.ndarray]:
        """Split the episode into runs of consecutive frames without a gap.

        A gap is a step longer than ``max_gap_s`` (default ``default_max_gap_s()``) or a
        non-positive step. With ``require_valid``, an invalid frame also ends a run and is
        left out.
        """
        count = len(self)
        if count == 0:
            return []
        limit = self.default_max_gap_s() if max_gap_s is None else float(max_gap_s)
        steps = np.diff(self.timestamps)
        breaks = (steps > limit) | (steps <= 0)
        keep = self.valid if require_valid else np.ones(count, dtype=bool)
        segments = []
        start = None
        for i in range(count):
            if not keep[i]:
                if start is not None:
                    segments.append(np.arange(start, i))
                start = None
                continue
            if start is None:
                start = i
            elif breaks[i - 1]:
                segments.append(np.arange(start, i))
                start = i
        if start is not None:
            segments.append(np.arange(start, count))
        return segments

    def windows(self, length: int, stride: int = 1, max_gap_s: Optional[float] = None,
                require_valid: bool = True) -> List[np.ndarray]:
        """Return index arrays of ``length`` consecutive frames that never cross a gap.

        Windows start every ``stride`` frames inside each run of ``segments``; a run
        shorter than ``length`` gives none.
        """
        if length < 1 or stride < 1:
            raise DataError(f'invalid window length {length} or stride {stride}: both must be '
                            'at least 1')
        windows = []
        for segment in self.segments(max_gap_s, require_valid):
            for start in range(0, len(segment) - length + 1, stride):
                windows.append(segment[start:start + length])
        return windows

    def window_dt(self, indices: np.ndarray, max_gap_s: Optional[float] = None
                  ) -> np.ndarray:
        """Return the true time steps of a window, (T,) float64 seconds.

        The first step is the time since the frame before the window when that frame is
        within ``max_gap_s``, else the median period.
        """
        indices = np.asarray(indices)
        dt = self.dt[indices].copy()
        limit = self.default_max_gap_s() if max_gap_s is None else float(max_gap_s)
        if indices[0] == 0 or not 0 < dt[0] <= limit:
            dt[0] = self.median_period_s
        return dt


def _is_episode_dir(path: Path) -> bool:
    return (path / ROWS_FILE).is_file() and (path / METADATA_FILE).is_file()


def find_episodes(path: Union[str, Path], include_partial: bool = False) -> List[Episode]:
    """Return the episodes of a dataset folder (sorted by name) or of one episode folder.

    Unfinished ``.partial`` folders are skipped with a warning unless ``include_partial``.
    Raises ``DataError`` when the folder contains no finished episode.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f'dataset folder {path} not found')
    if _is_episode_dir(path):
        return [Episode(path)]
    episodes = []
    skipped = []
    for child in sorted(path.iterdir()):
        if not child.is_dir() or not _is_episode_dir(child):
            if (child.is_dir() and EPISODE_NAME.match(child.name)
                    and not child.name.endswith(PARTIAL_SUFFIX)):
                # An episode folder by name that lacks a file: damaged, not foreign.
                Episode(child)
            continue
        if child.name.endswith(PARTIAL_SUFFIX) and not include_partial:
            skipped.append(child.name)
            continue
        episodes.append(Episode(child))
    if skipped:
        _logger.warning('skipped %d unfinished episode(s) in %s: %s (left by a crash or still '
                        'being written)', len(skipped), path, ', '.join(skipped))
    if not episodes:
        detail = f'; unfinished: {", ".join(skipped)}' if skipped else ''
        raise DataError(f'no finished episodes in {path}{detail}. Record or import data '
                        'first (liquid-control import SRC --out DIR).')
    return episodes
