"""The recorder's logic without ROS: per-frame synchronisation and a disk-writing session.

``FrameSynchroniser`` keeps each frame until its IMU reading and command can be decided,
then labels it with ``sync.label_frame`` (the importers use the same function).
``RecordingSession`` writes labelled frames into episodes on its own thread, through a
bounded queue: when the queue is full the frame is dropped and counted, never blocked on.
``AutoRecordGate`` starts and stops recording from the commanded speed.
"""

import collections
import logging
import math
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Tuple, Union

import numpy as np

from liquid_control.data.episodes import (EncodedImage, EpisodeWriter, FrameLabels,
                                          raw_image_for_storage)
from liquid_control.data.images import check_compressed
from liquid_control.data.sync import LabelOptions, label_frame
from liquid_control.errors import DataError

# How long IMU and command samples are kept before the newest sample of their stream, so a
# late frame still finds its neighbours. A sample stamped further back than this means
# that the stream's clock jumped back (or that the newest sample was stamped in the
# future), and the stream's history starts again from that sample.
HISTORY_S = 2.0
# A frame stamped further back than this before the previous frame means that the camera
# clock jumped back, for example after a restart of the driver or simulation. The episode
# then ends and a new one starts with that frame. A smaller step back, or a repeated
# stamp, drops the frame.
CLOCK_JUMP_S = 1.0
# Extra wait beyond the tolerances before a frame is labelled with what has arrived.
READY_MARGIN_S = 0.02

_logger = logging.getLogger(__name__)


@dataclass
class RawImage:
    """A raw ``sensor_msgs/Image`` payload, converted for storage on the writer thread."""

    encoding: str
    height: int
    width: int
    step: int
    data: np.ndarray
    is_bigendian: bool = False


Image = Union[EncodedImage, RawImage]


@dataclass
class _PendingFrame:
    stamp_ns: int
    image: Image
    arrival_s: float


class FrameSynchroniser:
    """Attach IMU readings and teacher commands to frames as they arrive.

    Call ``add_imu``, ``add_command`` and ``add_frame`` from the message callbacks and
    ``pop_ready`` regularly. A frame is released once the IMU stream has passed its stamp,
    so interpolation has both neighbours, and with ``command_match='nearest'`` once the
    command stream has passed it too. A frame that waited longer than the larger
    tolerance plus ``READY_MARGIN_S`` (monotonic ``now_s``) is released with what has
    arrived. Not thread-safe: call from one thread.
    """

    def __init__(self, options: LabelOptions, use_imu: bool = True):
        self.options = options
        self.use_imu = use_imu
        self._imu: Deque[Tuple[int, np.ndarray]] = collections.deque()
        self._commands: Deque[Tuple[int, Tuple[float, float]]] = collections.deque()
        self._pending: Deque[_PendingFrame] = collections.deque()
        self._newest_imu_ns: Optional[int] = None
        self._newest_command_ns: Optional[int] = None
        self.max_wait_s = READY_MARGIN_S + max(
            options.imu_tolerance_s if use_imu else 0.0,
            options.command_tolerance_s if options.command_match == 'nearest' else 0.0)

    @property
    def pending(self) -> int:
        """Number of frames waiting for their labels."""
        return len(self._pending)

    def add_imu(self, stamp_ns: int, values: np.ndarray) -> bool:
        """Store one IMU reading, (6,) in ``IMU_FIELDS`` order.

        Returns True when the stamp jumped back by more than ``HISTORY_S`` and the IMU
        history was cleared.
        """
        stamp_ns = int(stamp_ns)
        jumped = _jumped_back(stamp_ns, self._newest_imu_ns)
        if jumped:
            self._imu.clear()
            self._newest_imu_ns = None
        self._imu.append((stamp_ns, np.asarray(values, dtype=np.float64)))
        self._newest_imu_ns = max(self._newest_imu_ns or stamp_ns, stamp_ns)
        self._drop_older(self._imu, self._newest_imu_ns)
        return jumped

    def add_command(self, stamp_ns: int, linear_x: float, angular_z: float) -> bool:
        """Store one teacher command, already mapped to REP 103.

        Returns True when the stamp jumped back by more than ``HISTORY_S`` and the
        command history was cleared.
        """
        stamp_ns = int(stamp_ns)
        jumped = _jumped_back(stamp_ns, self._newest_command_ns)
        if jumped:
            self._commands.clear()
            self._newest_command_ns = None
        self._commands.append((stamp_ns, (float(linear_x), float(angular_z))))
        self._newest_command_ns = max(self._newest_command_ns or stamp_ns, stamp_ns)
        self._drop_older(self._commands, self._newest_command_ns)
        return jumped

    def add_frame(self, stamp_ns: int, image: Image, now_s: float) -> None:
        """Queue a frame until its labels can be decided."""
        self._pending.append(_PendingFrame(int(stamp_ns), image, now_s))

    def _is_ready(self, frame: _PendingFrame, now_s: float) -> bool:
        if now_s - frame.arrival_s >= self.max_wait_s:
            return True
        if self.use_imu and (self._newest_imu_ns is None
                             or self._newest_imu_ns < frame.stamp_ns):
            return False
        if self.options.command_match == 'nearest' and (
                self._newest_command_ns is None or self._newest_command_ns < frame.stamp_ns):
            return False
        return True

    def pop_ready(self, now_s: float, flush: bool = False
                  ) -> List[Tuple[int, Image, FrameLabels]]:
        """Return ``(stamp_ns, image, labels)`` of the frames that are ready, in arrival order.

        ``flush`` releases every pending frame (on stop or shutdown).
        """
        ready = []
        while self._pending and (flush or self._is_ready(self._pending[0], now_s)):
            ready.append(self._pending.popleft())
        if not ready:
            return []
        imu_ns, imu_values = self._history(self._imu, 6)
        command_ns, command_values = self._history(self._commands, 2)
        return [(frame.stamp_ns, frame.image,
                 label_frame(frame.stamp_ns, imu_ns, imu_values, command_ns,
                             command_values, self.options))
                for frame in ready]

    @staticmethod
    def _history(samples: Deque, width: int) -> Tuple[np.ndarray, np.ndarray]:
        if not samples:
            return np.zeros(0, np.int64), np.zeros((0, width))
        stamps = np.fromiter((stamp for stamp, _ in samples), dtype=np.int64,
                             count=len(samples))
        values = np.array([value for _, value in samples], dtype=np.float64).reshape(-1, width)
        order = np.argsort(stamps, kind='stable')
        return stamps[order], values[order]

    @staticmethod
    def _drop_older(samples: Deque, newest_ns: int) -> None:
        # Called on every sample, so the history stays bounded while no frames come (for
        # example while not recording). One sample older than the limit is kept, because
        # 'latest' matching may still need it.
        oldest = newest_ns - int(HISTORY_S * 1e9)
        while len(samples) > 1 and samples[1][0] < oldest:
            samples.popleft()


def _jumped_back(stamp_ns: int, newest_ns: Optional[int]) -> bool:
    return newest_ns is not None and stamp_ns < newest_ns - int(HISTORY_S * 1e9)


class AutoRecordGate:
    """Decide from the commanded speed when automatic recording starts and stops.

    Recording starts when ``|linear_x|`` exceeds ``speed_threshold`` and stops once no
    command above the threshold has come for ``stop_delay_s`` (slow commands or none), so
    short stops at a corner stay in one episode. A threshold of 0 disables the gate.
    """

    def __init__(self, speed_threshold: float, stop_delay_s: float):
        self.speed_threshold = speed_threshold
        self.stop_delay_s = stop_delay_s
        self._active = False
        self._last_fast_s: Optional[float] = None

    @property
    def enabled(self) -> bool:
        """Whether the gate is in use (threshold above 0)."""
        return self.speed_threshold > 0

    def update(self, now_s: float, linear_x: Optional[float] = None) -> Optional[str]:
        """Return 'start', 'stop' or None after a command, or on a timer with no command."""
        if not self.enabled:
            return None
        fast = linear_x is not None and math.isfinite(linear_x) \
            and abs(linear_x) > self.speed_threshold
        if fast:
            self._last_fast_s = now_s
            if not self._active:
                self._active = True
                return 'start'
            return None
        if self._active and now_s - self._last_fast_s >= self.stop_delay_s:
            self._active = False
            return 'stop'
        return None

    def reset(self) -> None:
        """Forget the current state (after a manual stop)."""
        self._active = False
        self._last_fast_s = None


def _image_for_storage(image: Image) -> Union[EncodedImage, np.ndarray]:
    """Return what ``EpisodeWriter.add`` stores; raise ``DataError`` for a damaged image.

    Compressed frames are decoded once (at reduced size for JPEG) because a truncated or
    damaged file would otherwise be stored under a valid row and fail only when read. Raw
    data must have exactly ``step * height`` bytes, as ``sensor_msgs/Image`` defines and
    the policy node requires: another size means that the size fields are wrong.
    """
    if isinstance(image, RawImage):
        expected = image.step * image.height
        if image.data.size != expected:
            raise DataError(f'image data has {image.data.size} bytes, but step {image.step} x '
                            f'height {image.height} = {expected} ({image.width}x'
                            f'{image.height} {image.encoding!r}); check the camera driver')
        return raw_image_for_storage(image.encoding, image.height, image.width, image.step,
                                     image.data, image.is_bigendian)
    extension = check_compressed(image.data)
    return EncodedImage(image.data, extension)


def free_disk_mb(path: Path) -> float:
    """Return the free space, in MiB, of the file system that contains ``path``."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free / 2**20


@dataclass
class SessionSettings:
    """Settings of a ``RecordingSession``; see config/recorder.yaml for each meaning."""

    output_dir: Path
    metadata: dict = field(default_factory=dict)
    queue_size: int = 64
    min_free_disk_mb: float = 500.0
    disk_check_interval_s: float = 1.0
    split_gap_s: float = 1.0
    raw_image_format: str = 'png'
    jpeg_quality: int = 90
    png_compression: int = 1
    flush_every_rows: int = 1
    fsync_interval_s: Optional[float] = 1.0


@dataclass
class _Control:
    action: str
    reason: str


_STOP_THREAD = object()


class RecordingSession:
    """Write labelled frames into episodes on a writer thread behind a bounded queue.

    ``start`` and ``stop`` are ordered with the frames through the same queue, so a frame
    submitted before ``stop`` lands in the episode that ``stop`` closes. Every dropped
    frame is counted by reason in ``drops``. ``on_event(level, message)`` receives the
    writer thread's lifecycle messages and errors (for the node's logger). Call ``close``
    once at the end: it finishes the current episode and joins the thread.
    """

    def __init__(self, settings: SessionSettings,
                 on_event: Optional[Callable[[str, str], None]] = None):
        self.settings = settings
        self.settings.output_dir = Path(settings.output_dir).expanduser()
        self._on_event = on_event or (lambda level, message: getattr(_logger, level)(message))
        self._queue: 'queue.Queue' = queue.Queue(maxsize=max(1, int(settings.queue_size)))
        self._lock = threading.Lock()
        self._recording = False
        self._stop_reason = ''
        self._failed = False
        self._writer: Optional[EpisodeWriter] = None
        self._episode_requested = False
        self._episode_name = ''
        self._frames_written = 0
        self._episodes_finished: List[str] = []
        self.drops: Dict[str, int] = collections.Counter()
        self._free_mb = free_disk_mb(self.settings.output_dir)
        self._last_disk_check = time.monotonic()
        self._thread = threading.Thread(target=self._run, name='episode-writer', daemon=True)
        self._thread.start()

    # Called from the ROS callback thread.

    @property
    def recording(self) -> bool:
        """Whether frames are accepted (start called and not stopped since)."""
        return self._recording

    def start(self, reason: str = 'start request') -> Tuple[bool, str]:
        """Start recording into a new episode; return (success, message)."""
        with self._lock:
            if self._recording:
                return False, f'already recording ({self._episode_name or "episode opening"})'
            free_mb = free_disk_mb(self.settings.output_dir)
            self._free_mb = free_mb
            if free_mb < self.settings.min_free_disk_mb:
                message = (f'free disk space {free_mb:.0f} MiB in {self.settings.output_dir} is '
                           f'below min_free_disk_mb {self.settings.min_free_disk_mb:g}; free '
                           'space or lower the limit')
                self._stop_reason = message
                self._failed = True
                return False, message
            self._recording = True
            self._stop_reason = ''
            self._failed = False
        self._queue.put(_Control('start', reason))
        return True, f'recording into {self.settings.output_dir} ({reason})'

    def stop(self, reason: str = 'stop request') -> Tuple[bool, str]:
        """Stop recording and finish the current episode; return (success, message)."""
        with self._lock:
            if not self._recording:
                return False, 'not recording'
            self._recording = False
            self._stop_reason = reason
        self._queue.put(_Control('stop', reason))
        return True, f'recording stopped ({reason})'

    def submit(self, stamp_ns: int, image: Image, labels: FrameLabels) -> bool:
        """Queue a labelled frame for writing; return False if it was dropped (and counted).

        Frames submitted while not recording are ignored and not counted.
        """
        if not self._recording:
            return False
        try:
            self._queue.put_nowait((stamp_ns, image, labels))
        except queue.Full:
            self.drops['queue_full'] += 1
            return False
        return True

    def count_drop(self, reason: str) -> None:
        """Count a frame dropped before it reached the session (e.g. undecodable)."""
        self.drops[reason] += 1

    def status(self) -> dict:
        """Return the counters for the status topic."""
        with self._lock:
            return {
                'recording': self._recording,
                'episode': self._episode_name,
                'frames_written': self._frames_written,
                'frames_dropped': int(sum(self.drops.values())),
                'drops': dict(self.drops),
                'queue_depth': self._queue.qsize(),
                'episodes_finished': len(self._episodes_finished),
                'free_disk_mb': round(self._free_mb, 1),
                'stop_reason': self._stop_reason,
                'failed': self._failed,
            }

    def close(self, reason: str = 'shutdown', timeout_s: float = 30.0) -> bool:
        """Finish the current episode, write every queued frame and join the thread.

        Returns False if the thread did not finish within ``timeout_s``.
        """
        with self._lock:
            self._recording = False
            if not self._stop_reason:
                self._stop_reason = reason
        deadline = time.monotonic() + timeout_s
        try:
            # A full queue drains while the thread writes; the timeout bounds the wait.
            for item in (_Control('stop', reason), _STOP_THREAD):
                self._queue.put(item, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    # The writer thread.

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP_THREAD:
                return
            try:
                if isinstance(item, _Control):
                    self._close_episode(item.reason)
                    # The episode folder is created with its first frame, so starting and
                    # stopping without frames leaves nothing on disk.
                    self._episode_requested = item.action == 'start'
                else:
                    self._write_frame(*item)
                self._check_disk()
            except (OSError, DataError) as error:
                # A disk or file-system error: stop rather than lose frames silently.
                self._fail(f'writing failed: {error}')
            except Exception as error:
                # Any other error is a bug. The thread must survive it, because close()
                # and the queued frames depend on it, so recording stops with the error.
                self._fail(f'episode writer failed: {type(error).__name__}: {error}')

    def _open_episode(self) -> None:
        self._writer = EpisodeWriter(
            self.settings.output_dir, self.settings.metadata,
            flush_every_rows=self.settings.flush_every_rows,
            fsync_interval_s=self.settings.fsync_interval_s,
            image_format=self.settings.raw_image_format,
            jpeg_quality=self.settings.jpeg_quality,
            png_compression=self.settings.png_compression)
        with self._lock:
            self._episode_name = self._writer.name
        self._emit('info', f'episode started: {self._writer.partial_dir}')

    def _close_episode(self, reason: str) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        count = len(writer)
        extra = {'drops': dict(self.drops)}
        folder = writer.close(reason, extra)
        with self._lock:
            self._episode_name = ''
            if folder is not None:
                self._episodes_finished.append(folder.name)
        if folder is None:
            self._emit('info', f'episode {writer.name} had no frames and was deleted '
                       f'({reason})')
        else:
            self._emit('info', f'episode finished: {folder} ({count} frames, {reason})')

    def _write_frame(self, stamp_ns: int, image: Image, labels: FrameLabels) -> None:
        if self._writer is None:
            if not self._episode_requested:
                # The session stopped (low disk space or an error) with frames still queued.
                self.drops['not_recording'] += 1
                return
            self._open_episode()
        try:
            image = _image_for_storage(image)
        except DataError as error:
            self.drops['invalid_image'] += 1
            if self.drops['invalid_image'] == 1:
                self._emit('warning', f'frame dropped, invalid image: {error} '
                           '(further ones are only counted)')
            return
        last = self._writer.last_stamp_ns
        if last is not None and stamp_ns <= last:
            if last - stamp_ns <= CLOCK_JUMP_S * 1e9:
                self.drops['out_of_order'] += 1
                return
            jump_s = (last - stamp_ns) * 1e-9
            self._close_episode(f'clock jumped back by {jump_s:.2f} s')
            self._open_episode()
        split_ns = self.settings.split_gap_s * 1e9
        if last is not None and split_ns > 0 and stamp_ns - last > split_ns:
            gap_s = (stamp_ns - last) * 1e-9
            self._close_episode(f'gap of {gap_s:.2f} s between frames')
            self._open_episode()
        self._writer.add(stamp_ns, image, labels)
        with self._lock:
            self._frames_written += 1

    def _emit(self, level: str, message: str) -> None:
        # The thread must not die of a failing event handler (see _run).
        try:
            self._on_event(level, message)
        except Exception:
            _logger.exception('event handler failed on %s message: %s', level, message)

    def _check_disk(self) -> None:
        now = time.monotonic()
        if now - self._last_disk_check < self.settings.disk_check_interval_s:
            return
        self._last_disk_check = now
        self._free_mb = free_disk_mb(self.settings.output_dir)
        if self._free_mb < self.settings.min_free_disk_mb and self._writer is not None:
            self._fail(f'free disk space {self._free_mb:.0f} MiB is below min_free_disk_mb '
                       f'{self.settings.min_free_disk_mb:g}; recording stopped')

    def _fail(self, message: str) -> None:
        self._episode_requested = False
        with self._lock:
            self._recording = False
            self._stop_reason = message
            self._failed = True
        self._emit('error', message)
        try:
            self._close_episode(message)
        except (OSError, DataError) as error:
            self._emit('error', f'closing the episode failed: {error}')
