"""Pure control helpers of the policy node: limits, input watchdog, timing statistics.

No rclpy import: every time is a float in seconds on the node's clock, so the same code runs
on wall time, on simulated time and in unit tests.
"""

import enum
import re
import threading
from collections import deque
from typing import Callable, Optional, Sequence, Tuple

import numpy as np


class OutputLimiter:
    """Clamp commands to symmetric limits, then limit their rate of change.

    ``max_abs`` and ``max_rate`` have one entry per command channel; a rate of 0 disables
    the slew-rate limit of that channel. The limiter remembers the last command it returned,
    so ``reset()`` must follow every fail-safe zero command. The absolute limit wins over
    the slew-rate limit: after ``set_limits`` lowers a limit, the next command is within it,
    however far that is from the previous one.
    """

    def __init__(self, max_abs: Sequence[float], max_rate: Sequence[float]) -> None:
        self._previous = np.zeros(len(max_abs), np.float64)
        self.set_limits(max_abs, max_rate)

    def set_limits(self, max_abs: Sequence[float], max_rate: Sequence[float]) -> None:
        """Replace the limits; the previous command is kept."""
        max_abs = np.asarray(max_abs, np.float64)
        max_rate = np.asarray(max_rate, np.float64)
        if max_abs.shape != self._previous.shape or max_rate.shape != self._previous.shape:
            raise ValueError(f'expected {self._previous.size} limits, got {max_abs.size} and '
                             f'{max_rate.size}')
        if np.any(max_abs < 0) or np.any(max_rate < 0):
            raise ValueError(f'limits must not be negative: {max_abs}, {max_rate}')
        self._max_abs = max_abs
        self._max_rate = max_rate

    def reset(self, value: Optional[Sequence[float]] = None) -> None:
        """Set the previous command (zero by default), for example after a stop."""
        self._previous[:] = 0.0 if value is None else np.asarray(value, np.float64)

    def apply(self, command: Sequence[float], dt: float) -> np.ndarray:
        """Return ``command`` clamped and slew-limited over ``dt`` seconds since the last one."""
        limited = np.clip(np.asarray(command, np.float64), -self._max_abs, self._max_abs)
        max_step = self._max_rate * max(float(dt), 0.0)
        slewed = np.where(self._max_rate > 0,
                          np.clip(limited, self._previous - max_step, self._previous + max_step),
                          limited)
        # The previous command may exceed limits that were lowered since it was sent.
        slewed = np.clip(slewed, -self._max_abs, self._max_abs)
        self._previous = slewed
        return slewed.copy()


class ElapsedTime:
    """Elapsed time between control steps, detecting a clock that jumps backwards.

    A simulator reset or a looping bag moves ``use_sim_time`` clocks backwards; the caller
    then resets the recurrent state instead of integrating a negative time step.
    """

    def __init__(self) -> None:
        self._last: Optional[float] = None

    def reset(self) -> None:
        """Forget the previous step, so the next one starts a new sequence."""
        self._last = None

    @property
    def last(self) -> Optional[float]:
        """Time of the previous step, or None before the first."""
        return self._last

    def update(self, now: float) -> Tuple[Optional[float], bool]:
        """Return (seconds since the previous step or None, whether the clock went back)."""
        previous, self._last = self._last, now
        if previous is None:
            return None, False
        if now < previous:
            return None, True
        return now - previous, False


def missed_periods(elapsed: float, period: float) -> int:
    """Return how many whole control periods passed without a step in ``elapsed`` seconds.

    Half a period of lateness counts as a missed tick, so a step that runs 1.6 periods after
    the previous one means one skipped tick.
    """
    if period <= 0 or elapsed <= 0:
        return 0
    return max(0, int(elapsed / period + 0.5) - 1)


class Mode(enum.Enum):
    """Operating mode of a control step, which decides between a policy and a zero command."""

    RUNNING = 'running'
    RUNNING_WITHOUT_IMU = 'running without IMU (IMU stale)'
    DISABLED = 'disabled'
    WAITING_FOR_CAMERA = 'waiting for the first camera frame'
    CAMERA_STALE = 'camera stale'
    WAITING_FOR_IMU = 'waiting for the first IMU message'
    IMU_STALE = 'IMU stale'

    @property
    def runs_policy(self) -> bool:
        """Whether the policy is stepped and its command published in this mode."""
        return self in (Mode.RUNNING, Mode.RUNNING_WITHOUT_IMU)


class InputWatchdog:
    """Decide each step whether inputs are fresh enough to run the policy.

    Ages are measured from when a message was received on the node clock. An age below
    ``-clock_tolerance`` means the clock went backwards after the message arrived, so the
    message counts as stale until a new one comes.
    """

    def __init__(self, input_timeout: float, imu_timeout: float, imu_required: bool,
                 continue_without_imu: bool, clock_tolerance: float = 0.001) -> None:
        self.input_timeout = input_timeout
        self.imu_timeout = imu_timeout
        self.imu_required = imu_required
        self.continue_without_imu = continue_without_imu
        self.clock_tolerance = clock_tolerance
        self.mode: Optional[Mode] = None

    def _fresh(self, now: float, received: Optional[float], timeout: float) -> bool:
        if received is None:
            return False
        age = now - received
        return -self.clock_tolerance <= age <= timeout

    def evaluate(self, now: float, enabled: bool, camera_received: Optional[float],
                 imu_received: Optional[float]) -> Mode:
        """Return the mode for a step at ``now`` from the receipt times of the newest inputs."""
        if not enabled:
            return Mode.DISABLED
        if camera_received is None:
            return Mode.WAITING_FOR_CAMERA
        if not self._fresh(now, camera_received, self.input_timeout):
            return Mode.CAMERA_STALE
        if not self.imu_required or self._fresh(now, imu_received, self.imu_timeout):
            return Mode.RUNNING
        if self.continue_without_imu:
            return Mode.RUNNING_WITHOUT_IMU
        if imu_received is None:
            return Mode.WAITING_FOR_IMU
        return Mode.IMU_STALE

    def update(self, mode: Mode) -> Optional[Mode]:
        """Store ``mode`` and return the previous mode when it changed, else None.

        The first call returns None as well, with the initial mode stored.
        """
        previous, self.mode = self.mode, mode
        if previous is None or previous == mode:
            return None
        return previous


class SampleWindow:
    """The newest ``size`` samples of a quantity, with percentiles over them."""

    def __init__(self, size: int = 1000) -> None:
        self._samples: deque = deque(maxlen=size)
        self.total = 0

    def add(self, value: float) -> None:
        """Append a sample, dropping the oldest when the window is full."""
        self._samples.append(float(value))
        self.total += 1

    def __len__(self) -> int:
        return len(self._samples)

    def percentile(self, q: float) -> float:
        """Return the q-th percentile (0..100) of the window, or NaN when it is empty."""
        if not self._samples:
            return float('nan')
        return float(np.percentile(np.fromiter(self._samples, np.float64), q))


class RateMeter:
    """Event rate over the newest ``size`` events, in Hz."""

    def __init__(self, size: int = 100) -> None:
        self._times: deque = deque(maxlen=size)

    def reset(self) -> None:
        """Forget every event."""
        self._times.clear()

    def add(self, time: float) -> None:
        """Record an event at ``time`` seconds; a time before the last one restarts the window."""
        if self._times and time < self._times[-1]:
            self._times.clear()
        self._times.append(float(time))

    def rate(self) -> float:
        """Return events per second over the window, or 0.0 with fewer than two events."""
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])


class ControlCounters:
    """Counters and timing windows of the control loop, reported in diagnostics.

    ``dropped_frames`` counts frames replaced by a newer one before any step used them.
    ``deadline_misses`` counts control ticks that were skipped, and steps that finished
    after the next tick was due, whose commands were therefore not published.
    """

    def __init__(self, window: int = 1000) -> None:
        self.frames_received = 0
        self.dropped_frames = 0
        self.invalid_frames = 0
        self.imu_received = 0
        self.invalid_imu = 0
        self.invalid_outputs = 0
        self.deadline_misses = 0
        self.state_resets = 0
        self.commands_published = 0
        self.zero_commands = 0
        self.step_seconds = SampleWindow(window)
        self.command_rate = RateMeter(max(2, window // 10))

    def key_values(self) -> list:
        """Return (key, value text) pairs for a ``diagnostic_msgs/KeyValue`` list."""
        return [
            ('control_rate_hz', f'{self.command_rate.rate():.2f}'),
            ('step_latency_p50_ms', f'{self.step_seconds.percentile(50) * 1e3:.3f}'),
            ('step_latency_p99_ms', f'{self.step_seconds.percentile(99) * 1e3:.3f}'),
            ('deadline_misses', str(self.deadline_misses)),
            ('frames_received', str(self.frames_received)),
            ('dropped_frames', str(self.dropped_frames)),
            ('invalid_frames', str(self.invalid_frames)),
            ('imu_received', str(self.imu_received)),
            ('invalid_imu', str(self.invalid_imu)),
            ('invalid_outputs', str(self.invalid_outputs)),
            ('state_resets', str(self.state_resets)),
            ('commands_published', str(self.commands_published)),
            ('zero_commands', str(self.zero_commands)),
        ]


class WarningThrottle:
    """Rate-limit repeated warnings per kind, counting the suppressed repeats.

    Messages that differ only in numbers (sizes, stamps, ages) are one kind, so a stream of
    corrupt frames logs once per ``period`` while a different problem still logs at once.
    """

    _NUMBER = re.compile(r'[-+]?\d+(\.\d+)?(e[-+]?\d+)?')

    def __init__(self, period: float) -> None:
        self.period = period
        self._last: dict = {}
        self._suppressed: dict = {}

    def check(self, message: str, now: float) -> Optional[int]:
        """Return None to suppress ``message``, else how many of its kind were suppressed."""
        key = self._NUMBER.sub('#', message)
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self.period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


_NO_TICK = object()  # StepWorker's empty mailbox; None is a valid tick


class StepWorker:
    """Run a step function in its own thread, one tick at a time, never queueing ticks.

    ``offer(tick)`` hands a tick to the thread and returns True, unless the thread is still
    busy with the previous tick: then the tick is dropped and ``offer`` returns False, so
    the caller can count an overrun. An exception from the step stops the worker and is
    kept in ``error``.
    """

    def __init__(self, step: Callable[[object], None], name: str = 'control-step') -> None:
        self._step = step
        self._condition = threading.Condition()
        self._tick: object = _NO_TICK
        self._busy = False
        self._stopped = False
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def offer(self, tick: object) -> bool:
        """Start a step for ``tick`` unless one is pending or running; return whether it was."""
        with self._condition:
            if self._busy or self._tick is not _NO_TICK or self._stopped:
                return False
            self._tick = tick
            self._condition.notify()
            return True

    def alive(self) -> bool:
        """Return whether the worker thread runs; it ends on ``stop`` or a step error."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Let a running step finish, then end the thread."""
        with self._condition:
            self._stopped = True
            self._condition.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._tick is _NO_TICK and not self._stopped:
                    self._condition.wait()
                if self._stopped:
                    return
                tick, self._tick = self._tick, _NO_TICK
                self._busy = True
            try:
                self._step(tick)
            except Exception as error:  # noqa: BLE001 - kept for the owner to report
                self.error = error
                with self._condition:
                    self._stopped = True
                return
            finally:
                with self._condition:
                    self._busy = False
