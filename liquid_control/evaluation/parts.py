"""The part of the training data (train, validation or test) of every evaluated frame.

``liquid-control train`` stores its split in the checkpoint metadata: the episode folders
(``episodes``, in training order), their total frame count (``frames``) and the validation
and test ranges (``validation`` and ``test``, lists of ``{'episode': folder, 'start': first
frame, 'stop': frame after the last}``). Every other frame of those episodes belongs to the
train part. Windows for training came only from the train part, and none came within one
window length of a validation or test frame.

When the evaluated episodes are the training episodes, each frame gets its part, and
``evaluate`` can score one part alone or report every part's metrics.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from liquid_control.data.sources import IMPORT_MARKER
from liquid_control.training.dataset import EpisodeSlice

LOGGER = logging.getLogger(__name__)
PARTS = ('train', 'validation', 'test')
TRAIN, VALIDATION, TEST = range(len(PARTS))


@dataclass(frozen=True)
class FrameRange:
    """Frames ``[start, stop)`` of the evaluated episode number ``episode``."""

    episode: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class TrainingParts:
    """The part of every evaluated frame: one array of indices into PARTS per episode."""

    roles: List[np.ndarray]

    def frame_counts(self) -> Dict[str, int]:
        """Return the number of evaluated frames in each part, by part name."""
        return {name: int(sum(np.count_nonzero(role == code) for role in self.roles))
                for code, name in enumerate(PARTS)}

    def ranges(self, part: str) -> List[FrameRange]:
        """Return the runs of consecutive frames of ``part``, in recorded order."""
        code = PARTS.index(part)
        ranges = []
        for episode, role in enumerate(self.roles):
            inside = np.concatenate([[False], role == code, [False]])
            edges = np.flatnonzero(inside[1:] != inside[:-1])
            ranges += [FrameRange(episode, int(start), int(stop))
                       for start, stop in zip(edges[0::2], edges[1::2])]
        return ranges


def _resolved(path: object) -> Path:
    """Return ``path`` made absolute; a relative path counts from the working folder."""
    return Path(str(path)).expanduser().resolve()


def _episode_sources(folder: Path) -> Set[Path]:
    """Return the paths that a training run could have been given for this episode.

    They are the episode folder, its dataset folder and, for an import, the source that
    the import's marker file names (a bag or a tub).
    """
    sources = {_resolved(folder), _resolved(folder.parent)}
    marker = folder.parent / IMPORT_MARKER
    try:
        source = json.loads(marker.read_text()).get('source')
    except (OSError, ValueError, AttributeError):
        source = None
    if isinstance(source, str):
        sources.add(_resolved(source))
    recorded = _recorded_source(folder)
    if recorded is not None:
        sources.add(recorded)
    return sources


def _recorded_source(folder: Path) -> Optional[Path]:
    """Return the bag or tub that an imported episode's metadata names, or None."""
    try:
        source = json.loads((folder / 'metadata.json').read_text()).get('source')
    except (OSError, ValueError, AttributeError):
        return None
    path = source.get('path') if isinstance(source, dict) else None
    return _resolved(path) if isinstance(path, str) and path else None


def _same_episode(stored: str, folder: object, training_sources: Set[Path]) -> bool:
    """Return whether a stored training episode folder and an evaluated one are the same.

    The episode names must be equal. Any one of these then suffices:

    - the folders are the same;
    - the dataset folders have the same name (an import's folder name carries a digest of
      the source's path and files and of the label options);
    - both episodes' metadata name the same recording as their source, while the stored
      folder still exists;
    - the evaluated episode comes from one of ``training_sources``.

    The frame counts are checked separately.
    """
    stored_path, path = Path(stored), Path(str(folder))
    if stored_path.name != path.name:
        return False
    if stored_path.parent.name and stored_path.parent.name == path.parent.name:
        return True
    if _resolved(stored_path) == _resolved(path):
        return True
    # Two imports of one recording, such as the user's import and import on the fly.
    recorded = _recorded_source(path)
    if recorded is not None and recorded == _recorded_source(stored_path):
        return True
    return bool(_episode_sources(path) & training_sources)


def episodes_problem(metadata: Mapping, folders: Sequence[object]) -> Optional[str]:
    """Return how ``folders`` differ from the training episodes in ``metadata``, or None.

    The episodes must be as many and match one by one (``_same_episode``), with the
    checkpoint's ``data_sources`` as the training sources. Frame counts are not checked.
    """
    stored = metadata.get('episodes') if metadata else None
    if not isinstance(stored, list):
        return 'the checkpoint metadata does not list its training episodes'
    if len(folders) != len(stored):
        return (f'the model was trained on {len(stored)} episode(s), but {len(folders)} are '
                'given')
    training_sources = {_resolved(source) for source in metadata.get('data_sources') or []
                        if isinstance(source, str)}
    for number, (trained, folder) in enumerate(zip(stored, folders), start=1):
        if not _same_episode(str(trained), folder, training_sources):
            return (f'episode {number} is {folder}, but the model was trained on {trained} '
                    'in that place')
    return None


def same_training_frames(metadata: Mapping, episodes: Sequence) -> Optional[bool]:
    """Return whether ``episodes`` are the training data that ``metadata`` records.

    Prepares the episodes as the training run did (its ``train_config``) and compares
    their ``training_data_digest`` with the recorded ``training_data_sha256``. That takes
    a few seconds, since every frame is decoded. Returns None when the checkpoint records
    no digest (checkpoints written before it was recorded).
    """
    from liquid_control.errors import LiquidControlError
    from liquid_control.training.config import TrainConfig
    from liquid_control.training.trainer import prepare_data, training_data_digest

    recorded, settings = metadata.get('training_data_sha256'), metadata.get('train_config')
    if not isinstance(recorded, str) or not isinstance(settings, dict):
        return None
    LOGGER.info('comparing the evaluated frames with the training data of the checkpoint')
    try:
        data = prepare_data(TrainConfig.from_dict(settings), episodes)
    except (LiquidControlError, ValueError) as error:
        LOGGER.info('the evaluated frames cannot be prepared as the training run did: %s',
                    error)
        return False
    return training_data_digest(data) == recorded


def _stored_ranges(metadata: Mapping, key: str) -> Optional[List[Tuple[str, int, int]]]:
    """Return the (episode, start, stop) ranges stored under ``key``, or None if malformed."""
    ranges = []
    for entry in metadata.get(key) or []:
        try:
            ranges.append((str(entry['episode']), int(entry['start']), int(entry['stop'])))
        except (KeyError, TypeError, ValueError):
            return None
    return ranges


def match_training_parts(metadata: Mapping, episodes: Sequence
                         ) -> Tuple[Optional[TrainingParts], str]:
    """Assign every frame of ``episodes`` its part of the model's training data.

    Returns (parts, '') when ``episodes`` are the episodes the model was trained on, in
    the same order and with the stored total frame count, and (None, the reason) when they
    are not or the metadata stores no split. Relative paths in the metadata count from the
    working folder.
    """
    stored = metadata.get('episodes') if metadata else None
    frames = metadata.get('frames') if metadata else None
    if not isinstance(stored, list) or not isinstance(frames, int):
        return None, ('the checkpoint metadata stores no training split (episodes and '
                      'frames), as liquid-control train writes it')
    ranges = {key: _stored_ranges(metadata, key) for key in ('validation', 'test')}
    if any(value is None for value in ranges.values()):
        return None, 'the validation or test ranges in the checkpoint metadata are malformed'
    total = sum(len(episode) for episode in episodes)
    if total != frames:
        return None, (f'the evaluated episodes have {total} frames, but the training data '
                      f'had {frames}')
    same = same_training_frames(metadata, episodes)
    if same is None:
        names = [getattr(episode, 'folder', None) or repr(episode) for episode in episodes]
        problem = episodes_problem(metadata, names)
        if problem is not None:
            return None, problem
    elif not same:
        return None, ('their frames, labels or split differ from the training data, whose '
                      'digest the checkpoint records (training_data_sha256)')

    roles = [np.full(len(episode), TRAIN, np.int8) for episode in episodes]
    for code, key in ((VALIDATION, 'validation'), (TEST, 'test')):
        for trained, start, stop in ranges[key]:
            number = next((index for index, name in enumerate(stored) if name == trained),
                          None)
            if number is None:
                return None, (f'the {key} range {start}-{stop} names episode {trained}, '
                              'which is not among the training episodes')
            if not 0 <= start < stop <= len(roles[number]):
                return None, (f'the {key} range {start}-{stop} lies outside episode '
                              f'{names[number]} of {len(roles[number])} frames')
            roles[number][start:stop] = code
    return TrainingParts(roles), ''


def select_ranges(episodes: Sequence, frames: Optional[Sequence[np.ndarray]],
                  ranges: Sequence[FrameRange]
                  ) -> Tuple[List[EpisodeSlice], Optional[List[np.ndarray]]]:
    """Return a view of each range as an episode, and its decoded frames if ``frames``."""
    slices = [EpisodeSlice(episodes[item.episode], item.start, item.stop) for item in ranges]
    if frames is None:
        return slices, None
    return slices, [frames[item.episode][item.start:item.stop] for item in ranges]
