"""Shared parts of the importers: a run of episodes written by one import and deleted as a
whole on error, the time-order check of source stamps, and counted warnings about the data
an import leaves out.
"""

import bisect
import logging
import math
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Set, Union

import numpy as np

from liquid_control.data.episodes import (PARTIAL_SUFFIX, EncodedImage, EpisodeWriter,
                                          FrameLabels)
from liquid_control.errors import DataError

# Largest magnitude that survives storage: episodes are read back as float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Largest stamp in nanoseconds that fits the int64 stamp_ns column.
MAX_STAMP_NS = 2**63 - 1

_logger = logging.getLogger(__name__)


def is_storable(value: float) -> bool:
    """Return whether a value is finite and within the float32 range."""
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def format_stamp(stamp_ns: int) -> str:
    """Return a stamp in seconds for messages, such as '1669759744.666 s'."""
    return f'{stamp_ns / 1e9:.3f} s'


class SkippedItems:
    """A count of source items an import left out or changed for one reason.

    The first ``example_limit`` items are stored as descriptions, so one warning names them.
    """

    def __init__(self, reason: str, example_limit: int = 3):
        self.reason = reason
        self.example_limit = example_limit
        self.count = 0
        self.examples: List[str] = []

    def add(self, description: str) -> None:
        """Count one item; ``description`` names it (record, message index, stamp)."""
        self.count += 1
        if len(self.examples) < self.example_limit:
            self.examples.append(description.rstrip('.'))

    def describe(self) -> str:
        """Return '3 <reason> (first: a; b; c)'."""
        more = '; ...' if self.count > len(self.examples) else ''
        return f'{self.count} {self.reason} (first: {"; ".join(self.examples)}{more})'

    def warn(self, source: str, logger: logging.Logger = _logger) -> None:
        """Log one warning when any item was counted."""
        if self.count:
            logger.warning('%s: %s', source, self.describe())


def increasing_subset(stamps_ns: Sequence[int]) -> np.ndarray:
    """Return a mask of the most frames whose stamps increase strictly in source order.

    A frame stamped out of line with its neighbours (an hour ahead, a burst from a clock
    that jumped back, a repeated stamp) is left out and costs only itself. This is a
    longest strictly increasing subsequence, O(N log N); of frames with the same stamp
    the first is kept.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    if stamps.size < 2 or np.all(np.diff(stamps) > 0):
        return np.ones(stamps.size, dtype=bool)
    # A longest increasing run of the reversed, negated stamps is one of the original
    # stamps. Of equal values the search keeps the row it processes last, which is then the
    # earlier frame.
    return _longest_increasing(-stamps[::-1])[::-1]


def _longest_increasing(values: np.ndarray) -> np.ndarray:
    # tails[k] is the smallest last value of any increasing run of length k + 1 so far, and
    # tail_rows[k] is its row. previous[i] is the row before i in the run that ends at i.
    tails: List[int] = []
    tail_rows: List[int] = []
    previous = np.full(values.size, -1, dtype=np.int64)
    for row, value in enumerate(values.tolist()):
        position = bisect.bisect_left(tails, value)
        if position:
            previous[row] = tail_rows[position - 1]
        if position == len(tails):
            tails.append(value)
            tail_rows.append(row)
        else:
            tails[position] = value
            tail_rows[position] = row
    keep = np.zeros(values.size, dtype=bool)
    row = tail_rows[-1]
    while row >= 0:
        keep[row] = True
        row = previous[row]
    return keep


def check_mostly_in_order(increasing: int, total: int, source: str, items: str) -> None:
    """Raise ``DataError`` when fewer than half of the frames have increasing stamps."""
    if total and increasing * 2 < total:
        raise DataError(
            f'{source}: only {increasing} of {total} {items} have stamps that increase in '
            'recording order, so the stamps, not a few frames, are wrong (a clock that '
            'jumped or ran backwards). Fix the stamps of the source before importing it.')


class EpisodeSequence:
    """Write an import's frames into consecutive episodes of ``out_dir``.

    A step between frames longer than ``split_gap_s`` (0: never) starts a new episode,
    and a frame whose stamp does not increase is skipped and counted in ``skipped``. Use
    as a context manager: when the block raises (including KeyboardInterrupt), every
    episode of this import, finished or not, is deleted, so a failed or interrupted import
    leaves nothing that looks complete.
    """

    def __init__(self, out_dir: Union[str, Path], metadata: dict, split_gap_s: float,
                 **writer_options):
        self.out_dir = Path(out_dir)
        self.metadata = metadata
        self.split_ns = int(split_gap_s * 1e9) if split_gap_s > 0 else None
        self.writer_options = dict(writer_options, fsync_interval_s=None)
        self.folders: List[Path] = []
        self.skipped = 0
        self._writer: Optional[EpisodeWriter] = None
        self._previous_ns: Optional[int] = None
        self._partial_before: Optional[Set[str]] = None

    def __enter__(self) -> 'EpisodeSequence':
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()

    def add(self, stamp_ns: int, image: Union[EncodedImage, np.ndarray],
            labels: FrameLabels) -> bool:
        """Write one frame; return False if it was skipped for a non-increasing stamp."""
        if self._previous_ns is not None and stamp_ns <= self._previous_ns:
            self.skipped += 1
            return False
        gap = (self._previous_ns is not None and self.split_ns is not None
               and stamp_ns - self._previous_ns > self.split_ns)
        if gap:
            self._close('gap in the recording')
        if self._writer is None:
            # A stop signal can arrive after the writer made its folder and before it is
            # known here, so abort also removes unfinished folders that appeared since.
            self._partial_before = self._partial_folders()
            self._writer = EpisodeWriter(self.out_dir, self.metadata, **self.writer_options)
            self._partial_before = None
        self._writer.add(stamp_ns, image, labels)
        self._previous_ns = stamp_ns
        return True

    def _close(self, reason: str) -> None:
        # The writer is forgotten only once it is closed, so that abort also deletes an
        # episode whose close was interrupted, renamed or not.
        if self._writer is not None:
            folder = self._writer.close(reason)
            self._writer = None
            if folder is not None:
                self.folders.append(folder)

    def finish(self, reason: str) -> List[Path]:
        """Close the last episode and return every episode folder written."""
        self._close(reason)
        return list(self.folders)

    def _partial_folders(self) -> Set[str]:
        return {path.name for path in self.out_dir.glob(f'*{PARTIAL_SUFFIX}')}

    def abort(self) -> None:
        """Delete every episode of this import."""
        if self._partial_before is not None:
            for name in self._partial_folders() - self._partial_before:
                shutil.rmtree(self.out_dir / name, ignore_errors=True)
            self._partial_before = None
        if self._writer is not None:
            self._writer.abort()
            shutil.rmtree(self._writer.final_dir, ignore_errors=True)
            self._writer = None
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.folders = []
