"""Checks of episode folders before training, and copies that leave out damaged frames.

``check_dataset`` decodes every frame file and reports what would stop or mislead
training: episodes that cannot be read, missing or damaged frame files, frames of another
size than the episode's first, blank frames and runs of identical frames (a frozen
camera). ``repair_dataset`` writes finished copies of the readable episodes, unfinished
ones included, without the damaged frames.
"""

import csv
import hashlib
import itertools
import logging
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from liquid_control.data.episodes import (
    EPISODE_NAME, FRAMES_DIR, IMU_FIELDS, METADATA_FILE, PARTIAL_SUFFIX, ROWS_FILE, EncodedImage,
    Episode, EpisodeWriter, FrameLabels)
from liquid_control.data.images import check_compressed
from liquid_control.errors import DataError

_logger = logging.getLogger(__name__)

# A frame whose pixel values all lie within this many steps of each other (0-255) counts
# as blank: a camera that sends black or grey frames while it starts or fails.
BLANK_RANGE = 2
# This many or more consecutive frames with the same bytes are reported as a frozen
# camera. Real sensor noise makes consecutive frames of a live camera differ.
FROZEN_RUN = 3
# Metadata keys that EpisodeWriter sets itself, so a repaired copy gets its own values.
_WRITER_KEYS = ('format_version', 'finished', 'name', 'created_at', 'columns', 'frame_count',
                'start_stamp_ns', 'end_stamp_ns', 'duration_s', 'image_size', 'closed_at',
                'end_reason')


@dataclass
class FrameReport:
    """Findings of the check of one frame file."""

    index: int
    path: str
    damaged: Optional[str] = None
    size: Optional[Tuple[int, int]] = None
    blank: bool = False
    digest: bytes = b''


@dataclass
class EpisodeCheck:
    """Findings of the check of one episode folder.

    ``error`` is set when the episode cannot be read at all. ``damaged`` lists
    ``(index, frame file, reason)`` of frames that training and evaluation cannot decode.
    The other lists are warnings: the data can be used, but may be wrong.
    """

    folder: Path
    finished: bool = False
    frames: int = 0
    valid_frames: int = 0
    error: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    damaged: List[Tuple[int, str, str]] = field(default_factory=list)
    other_size: List[Tuple[int, Tuple[int, int]]] = field(default_factory=list)
    image_size: Optional[Tuple[int, int]] = None
    blank: List[int] = field(default_factory=list)
    frozen: List[Tuple[int, int]] = field(default_factory=list)
    unlisted_files: int = 0

    @property
    def name(self) -> str:
        """The episode's folder name."""
        return self.folder.name

    @property
    def errors(self) -> int:
        """Problems that stop training or evaluation: an unreadable episode counts once."""
        return (1 if self.error else 0) + len(self.damaged)

    @property
    def warnings(self) -> List[str]:
        """One sentence per kind of warning, with the frames it concerns."""
        found = []
        if not self.finished and self.error is None:
            detail = f' ({"; ".join(self.notes)})' if self.notes else ''
            found.append(f'unfinished: left by a crash or still being written; '
                         f'{self.frames} frames readable{detail}')
        if self.frames and not self.valid_frames and self.error is None:
            found.append('no frame has a valid command, so it cannot be trained on')
        if self.other_size:
            width, height = self.image_size
            found.append(f'{len(self.other_size)} frame(s) differ from the first frame\'s '
                         f'{width}x{height} (first: frame {self.other_size[0][0]}, '
                         f'{self.other_size[0][1][0]}x{self.other_size[0][1][1]})')
        if self.blank:
            found.append(f'{len(self.blank)} blank frame(s), every pixel the same shade '
                         f'(first: {_list_frames(self.blank)})')
        if self.frozen:
            runs = ', '.join(f'{start}-{stop - 1}' for start, stop in self.frozen[:3])
            more = ', ...' if len(self.frozen) > 3 else ''
            found.append(f'{len(self.frozen)} run(s) of {FROZEN_RUN} or more identical frames '
                         f'(frames {runs}{more}): a frozen camera, or a robot standing still '
                         'in a simulator')
        if self.unlisted_files:
            found.append(f'{self.unlisted_files} file(s) in {FRAMES_DIR}/ that no row names '
                         '(ignored by every reader)')
        return found

    def to_dict(self) -> Dict[str, object]:
        """Return the findings as a JSON-able dict."""
        return {
            'episode': self.name, 'folder': str(self.folder), 'finished': self.finished,
            'frames': self.frames, 'valid_frames': self.valid_frames, 'error': self.error,
            'damaged_frames': [{'index': index, 'frame': frame, 'reason': reason}
                               for index, frame, reason in self.damaged],
            'warnings': self.warnings,
        }


def _list_frames(indices: Sequence[int], limit: int = 5) -> str:
    listed = ', '.join(str(index) for index in indices[:limit])
    return listed + (', ...' if len(indices) > limit else '')


def inspect_frame(path: Path, index: int) -> FrameReport:
    """Read and decode one frame file; report damage, size, blankness and a digest."""
    report = FrameReport(index=index, path=str(path))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        report.damaged = 'the frame file is missing'
        return report
    except OSError as error:
        report.damaged = f'the frame file cannot be read: {error.strerror or error}'
        return report
    try:
        check_compressed(data)
    except DataError as error:
        report.damaged = str(error)
        return report
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        report.damaged = 'OpenCV cannot decode the image'
        return report
    report.size = (int(image.shape[1]), int(image.shape[0]))
    report.blank = int(image.max()) - int(image.min()) <= BLANK_RANGE
    report.digest = hashlib.sha1(data).digest()
    return report


def _frozen_runs(digests: Sequence[bytes]) -> List[Tuple[int, int]]:
    """Return ``[start, stop)`` of every run of FROZEN_RUN or more equal, non-empty digests."""
    runs = []
    start = 0
    for index in range(1, len(digests) + 1):
        if index < len(digests) and digests[index] and digests[index] == digests[start]:
            continue
        if digests[start] and index - start >= FROZEN_RUN:
            runs.append((start, index))
        start = index
    return runs


def check_episode(folder: Union[str, Path], workers: int = 2) -> EpisodeCheck:
    """Check one episode folder, decoding its frames in ``workers`` threads."""
    folder = Path(folder)
    result = EpisodeCheck(folder=folder)
    try:
        episode = Episode(folder)
    except DataError as error:
        result.error = str(error)
        return result
    result.finished = episode.finished
    result.frames = len(episode)
    result.valid_frames = int(np.count_nonzero(episode.valid))
    result.notes = list(episode.notes)

    paths = [episode.frame_path(index) for index in range(len(episode))]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # OpenCV releases the GIL while it decodes, so threads decode in parallel.
        reports = list(pool.map(inspect_frame, paths, range(len(paths)), chunksize=32))
    for report in reports:
        if report.damaged:
            frame = str(Path(report.path).relative_to(folder))
            result.damaged.append((report.index, frame, report.damaged))
            continue
        if result.image_size is None:
            result.image_size = report.size
        elif report.size != result.image_size:
            result.other_size.append((report.index, report.size))
        if report.blank:
            result.blank.append(report.index)
    result.frozen = _frozen_runs([report.digest for report in reports])

    listed = {Path(path).name for path in paths}
    frames_dir = folder / FRAMES_DIR
    if frames_dir.is_dir():
        result.unlisted_files = sum(1 for entry in frames_dir.iterdir()
                                    if entry.name not in listed)
    return result


def episode_folders(path: Union[str, Path]) -> List[Path]:
    """Return the episode folders of a dataset, unfinished and damaged ones included.

    ``path`` is a dataset folder or one episode folder. A subfolder counts when it has the
    episode files or an episode name (``episode_0003``, ``episode_0003.partial``).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f'dataset folder {path} not found')
    if (path / ROWS_FILE).is_file() or (path / METADATA_FILE).is_file():
        return [path]
    folders = [child for child in sorted(path.iterdir()) if child.is_dir() and (
        (child / ROWS_FILE).is_file() or EPISODE_NAME.match(child.name))]
    if not folders:
        raise DataError(f'no episodes in {path}: it has no episode folders. Record or import '
                        'data first (liquid-control import SRC --out DIR).')
    return folders


def check_dataset(path: Union[str, Path], workers: int = 2) -> List[EpisodeCheck]:
    """Check every episode folder of a dataset (see ``episode_folders``)."""
    return [check_episode(folder, workers) for folder in episode_folders(path)]


def format_checks(checks: Sequence[EpisodeCheck], limit: int = 10) -> str:
    """Format check results for a terminal: one line an episode, then its findings.

    At most ``limit`` damaged frames are listed per episode.
    """
    lines = []
    for check in checks:
        if check.error:
            lines.append(f'{check.name}: cannot be read: {check.error}')
            continue
        problems = []
        if check.damaged:
            problems.append(f'{len(check.damaged)} damaged frame(s)')
        if check.warnings:
            problems.append(f'{len(check.warnings)} warning(s)')
        lines.append(f'{check.name}: {check.frames} frames, {check.valid_frames} with a valid '
                     f'command, {", ".join(problems) or "ok"}')
        for index, frame, reason in check.damaged[:limit]:
            lines.append(f'  damaged: frame {index} ({frame}): {reason}')
        if len(check.damaged) > limit:
            lines.append(f'  damaged: {len(check.damaged) - limit} more frame(s)')
        lines.extend(f'  warning: {warning}' for warning in check.warnings)
    errors = sum(check.errors for check in checks)
    warnings = sum(len(check.warnings) for check in checks)
    frames = sum(check.frames for check in checks)
    lines.append(f'{len(checks)} episode(s), {frames} frames: {errors} error(s), '
                 f'{warnings} warning(s)')
    if errors:
        lines.append('train and evaluate stop at the first damaged frame or unreadable '
                     'episode. Import the source again, or write a copy without the damaged '
                     'frames: liquid-control dataset repair DIR --out NEW_DIR')
    return '\n'.join(lines)


def _source_labels(episode: Episode) -> List[FrameLabels]:
    """Return the labels of the episode's rows at the precision rows.csv stores them.

    ``Episode`` reads values as float32; parsing the text again keeps a copy exact.
    """
    with open(episode.folder / ROWS_FILE, newline='') as stream:
        rows = list(itertools.islice(csv.DictReader(stream), len(episode)))
    labels = []
    for index, row in enumerate(rows):
        if row['frame'] != episode.frame_name(index):
            raise DataError(f'{episode.folder / ROWS_FILE} changed while it was copied (row '
                            f'{index} names {row["frame"]!r}); copy it again')
        labels.append(FrameLabels(
            imu=np.array([_parse_float(row[name]) for name in IMU_FIELDS]),
            imu_status=row['imu_status'],
            linear_x=_parse_float(row['linear_x']),
            angular_z=_parse_float(row['angular_z']),
            command_status=row['command_status'],
            command_age_s=_parse_float(row['command_age_s'])))
    return labels


def _parse_float(text: str) -> float:
    return float(text) if text else math.nan


@dataclass
class RepairedEpisode:
    """One episode written by ``repair_dataset``, or why it was not."""

    source: Path
    folder: Optional[Path] = None
    frames: int = 0
    left_out: List[Tuple[int, str, str]] = field(default_factory=list)
    skipped: Optional[str] = None


def _finished_name(folder: Path) -> str:
    """Return an episode folder's name without ``.partial``."""
    name = folder.name
    return name[:-len(PARTIAL_SUFFIX)] if name.endswith(PARTIAL_SUFFIX) else name


def _repair_episode(check: EpisodeCheck, out_dir: Path) -> RepairedEpisode:
    result = RepairedEpisode(source=check.folder, left_out=list(check.damaged))
    if check.error:
        result.skipped = f'cannot be read: {check.error}'
        return result
    episode = Episode(check.folder)
    damaged = {index for index, _, _ in check.damaged}
    keep = [index for index in range(len(episode)) if index not in damaged]
    if not keep:
        result.skipped = 'no readable frame'
        return result

    metadata = {key: value for key, value in episode.metadata.items()
                if key not in _WRITER_KEYS}
    metadata['repaired_from'] = {
        'folder': str(check.folder.resolve()),
        'finished': check.finished,
        'end_reason': episode.metadata.get('end_reason'),
        'left_out_frames': [{'index': index, 'stamp_ns': int(episode.stamp_ns[index]),
                             'reason': reason} for index, _, reason in check.damaged],
    }
    labels = _source_labels(episode)
    writer = EpisodeWriter(out_dir, metadata, name=_finished_name(check.folder),
                           flush_every_rows=256, fsync_interval_s=None)
    try:
        for index in keep:
            path = episode.frame_path(index)
            data = path.read_bytes()
            extension = path.suffix.lstrip('.').lower()
            writer.add(int(episode.stamp_ns[index]), EncodedImage(data, extension),
                       labels[index])
        reason = (str(episode.metadata.get('end_reason') or '') if check.finished
                  else 'repaired copy of an unfinished episode')
        result.folder = writer.close(reason)
    except BaseException:
        writer.abort()
        raise
    result.frames = len(keep)
    return result


def repair_dataset(source: Union[str, Path], out_dir: Union[str, Path], workers: int = 2
                   ) -> List[RepairedEpisode]:
    """Write finished copies of the episodes of ``source`` into ``out_dir``.

    Every readable episode, unfinished ones included, is copied under its own name (without
    ``.partial``), frames byte for byte, with its rows and metadata. Damaged frames are left
    out and listed in the copy's ``metadata.json`` under ``repaired_from``. Episodes that
    cannot be read are skipped. On an error or interrupt every copy written is deleted.
    """
    source = Path(source).expanduser()
    out_dir = Path(out_dir).expanduser()
    folders = episode_folders(source)
    resolved_out = out_dir.resolve()
    for folder in folders:
        if resolved_out == folder.resolve() or folder.resolve() in resolved_out.parents:
            raise DataError(f'--out {out_dir} is inside the source episode {folder}; name a '
                            'folder outside the source')
    if source.resolve() == resolved_out:
        raise DataError(f'--out {out_dir} is the source folder; name a new folder, so that '
                        'the original episodes stay as they are')
    for folder in folders:
        name = _finished_name(folder)
        if (out_dir / name).exists() or (out_dir / (name + PARTIAL_SUFFIX)).exists():
            raise DataError(f'{out_dir / name} already exists; name an empty or new folder '
                            'for --out')
    results: List[RepairedEpisode] = []
    try:
        for folder in folders:
            check = check_episode(folder, workers)
            results.append(_repair_episode(check, out_dir))
            if results[-1].skipped:
                _logger.warning('%s skipped: %s', folder, results[-1].skipped)
    except BaseException:
        for result in results:
            if result.folder is not None:
                shutil.rmtree(result.folder, ignore_errors=True)
        raise
    return results
