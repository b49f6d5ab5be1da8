"""One entry point for every data source: episode folders, bags and donkeycar tubs.

``load_episodes`` returns episodes whatever the source. Bags and tubs are imported first
into a cache folder keyed by the source's path, the sizes and modification times of all its
files (tub images included) and the label options, so a second call reads the cached
episodes.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Union

from liquid_control.data.bags import bag_kind, import_bag, is_bag
from liquid_control.data.episodes import (FORMAT_VERSION, METADATA_FILE, ROWS_FILE, Episode,
                                          find_episodes)
from liquid_control.data.sync import LabelOptions
from liquid_control.data.tub import import_tub, is_tub
from liquid_control.errors import DataError

IMPORT_MARKER = 'import.json'
_logger = logging.getLogger(__name__)


def source_kind(src: Union[str, Path]) -> str:
    """Return 'episodes', 'donkeycar_tub', 'rosbag2' or 'ros1_bag' for a source path.

    Raises ``DataError`` when the path is missing or none of these.
    """
    path = Path(src).expanduser()
    if not path.exists():
        raise DataError(f'data source {path} not found')
    if is_tub(path):
        return 'donkeycar_tub'
    if is_bag(path):
        return bag_kind(path)
    if path.is_dir():
        if (path / ROWS_FILE).is_file():
            return 'episodes'
        if any((child / METADATA_FILE).is_file() and (child / ROWS_FILE).is_file()
               for child in path.iterdir() if child.is_dir()):
            return 'episodes'
    raise DataError(
        f'{path} is not a data source: expected an episode or dataset folder, a rosbag2 '
        'folder (with metadata.yaml) or .db3/.mcap file, a ROS 1 .bag file, or a donkeycar '
        'tub folder (with manifest.json)')


def import_source(src: Union[str, Path], out_dir: Union[str, Path],
                  options: Optional[LabelOptions] = None, image_topic: Optional[str] = None,
                  imu_topic: Optional[str] = None, command_topic: Optional[str] = None
                  ) -> List[Path]:
    """Import a bag or tub into episodes in ``out_dir`` and return their folders."""
    options = options or LabelOptions()
    src = Path(src).expanduser()
    out_dir = Path(out_dir).expanduser()
    kind = source_kind(src)
    if kind == 'episodes':
        raise DataError(f'{src} already contains episodes; read it directly instead of '
                        'importing')
    if kind == 'donkeycar_tub':
        if image_topic or imu_topic or command_topic:
            raise DataError(f'{src} is a donkeycar tub: topic options apply to bags only')
        return import_tub(src, out_dir, options)
    return import_bag(src, out_dir, options, image_topic, imu_topic, command_topic)


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/liquid_control/imports`` (default ~/.cache)."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'liquid_control' / 'imports'


def _source_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    files = {file for file in path.rglob('*') if file.is_file()}
    # rglob (Python 3.11) does not enter a symbolic link to a folder; a tub's images/ may
    # be one.
    images = path / 'images'
    if images.is_dir():
        files.update(file for file in images.iterdir() if file.is_file())
    return sorted(files)


def _source_fingerprint(path: Path) -> list:
    """Return the name, size and modification time of every file of a source.

    Images are included, so replacing or deleting a tub image changes the cache key; the
    content is not hashed.
    """
    entries = []
    for file in _source_files(path):
        stat = file.stat()
        entries.append([str(file.relative_to(path.parent)), stat.st_size, stat.st_mtime_ns])
    return entries


def _cache_key(path: Path, options: LabelOptions, topics: dict) -> str:
    description = {'path': str(path.resolve()), 'files': _source_fingerprint(path),
                   'options': options.to_dict(), 'topics': topics,
                   'format_version': FORMAT_VERSION}
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return f'{path.name}-{digest[:16]}'


def load_episodes(src: Union[str, Path], cache_dir: Optional[Union[str, Path]] = None,
                  image_topic: Optional[str] = None, imu_topic: Optional[str] = None,
                  command_topic: Optional[str] = None, **label_options) -> List[Episode]:
    """Return the episodes of any source; bags and tubs are imported (once) into a cache.

    ``label_options`` are ``LabelOptions`` fields. The import goes to a temporary folder
    that is renamed into place only when complete, so an interrupted import is never read.
    """
    path = Path(src).expanduser()
    kind = source_kind(path)
    if kind == 'episodes':
        if label_options or image_topic or imu_topic or command_topic:
            raise DataError(f'{path} contains episodes that are already labelled; label and '
                            'topic options apply only to bags and tubs')
        return find_episodes(path)

    options = LabelOptions.from_kwargs(**label_options)
    topics = {'image': image_topic, 'imu': imu_topic, 'command': command_topic}
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache_root / _cache_key(path, options, topics)
    if (target / IMPORT_MARKER).is_file():
        return find_episodes(target)

    cache_root.mkdir(parents=True, exist_ok=True)
    if target.exists():
        _logger.warning('removing incomplete cached import %s', target)
        shutil.rmtree(target)
    staging = Path(tempfile.mkdtemp(prefix=f'.{target.name}-', dir=cache_root))
    try:
        _logger.info('importing %s (%s) into %s', path, kind, target)
        import_source(path, staging, options, image_topic, imu_topic, command_topic)
        marker = {'source': str(path.resolve()), 'kind': kind, 'options': options.to_dict(),
                  'topics': topics}
        (staging / IMPORT_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished the same import first; use its result.
            if not (target / IMPORT_MARKER).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return find_episodes(target)
