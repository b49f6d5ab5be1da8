"""A run of episodes written by one import, split at gaps and deleted as a whole on error."""

import logging
import shutil
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from liquid_control.data.episodes import EncodedImage, EpisodeWriter, FrameLabels

_logger = logging.getLogger(__name__)


class EpisodeSequence:
    """Write an import's frames into consecutive episodes of ``out_dir``.

    A step between frames longer than ``split_gap_s`` (0: never) starts a new episode,
    and a frame whose stamp does not increase is skipped and counted in ``skipped``. Use
    as a context manager: when the block raises, every episode of this import, finished
    or not, is deleted, so a failed import leaves nothing that looks complete.
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
            self._writer = EpisodeWriter(self.out_dir, self.metadata, **self.writer_options)
        self._writer.add(stamp_ns, image, labels)
        self._previous_ns = stamp_ns
        return True

    def _close(self, reason: str) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            folder = writer.close(reason)
            if folder is not None:
                self.folders.append(folder)

    def finish(self, reason: str) -> List[Path]:
        """Close the last episode and return every episode folder written."""
        self._close(reason)
        return list(self.folders)

    def abort(self) -> None:
        """Delete every episode of this import."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.folders = []
