"""Start-up and shutdown steps shared by the package's node executables.

Each executable installs its own SIGINT/SIGTERM handlers instead of rclpy's, because
rclpy's handlers shut the context down at once, before a node can publish a final zero
command or finish the episode it is recording.

Once a node starts its teardown (the recorder: once its episode is written), the rest
(the zero command, stopping the executor, destroying the node, shutting rclpy and DDS
down, the interpreter's exit) is bounded by a watchdog. A process that does not exit in
time prints every thread's stack and exits with code 1, so a caller that stops it
(``ros2 launch``, ``liquid-control replay``, a test) sees where it hung instead of
having to kill it.
"""

import faulthandler
import signal
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple, Type, TypeVar

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from liquid_control.nodes.dds import apply_large_frame_profile

NodeType = TypeVar('NodeType', bound=Node)

# Seconds from the start of a node's teardown to its exit. Stops measured here took 0.2-2.2 s.
TEARDOWN_LIMIT_S = 5.0


class StopRequest:
    """A stop flag that a signal handler sets and the node's main loop reads.

    Python runs a signal handler in the main thread, between two bytecodes of whatever that
    thread was doing. ``threading.Event.set()`` in the handler deadlocks when the main
    thread was inside ``Event.wait()`` at that moment and held the event's internal lock,
    which ``set()`` then waits for forever. So the handler only stores a flag, and
    ``wait`` polls it. The flag is never cleared.
    """

    POLL_S = 0.02  # how often ``wait`` looks at the flag

    def __init__(self) -> None:
        self._requested = False

    def set(self) -> None:
        """Request the stop. Safe in a signal handler: it takes no lock."""
        self._requested = True

    def is_set(self) -> bool:
        """Return whether a stop was requested."""
        return self._requested

    def wait(self, timeout: float) -> bool:
        """Sleep until a stop is requested or ``timeout`` seconds pass; return the flag."""
        deadline = time.monotonic() + timeout
        while not self._requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, self.POLL_S))
        return self._requested


def request_stop_on_signals() -> StopRequest:
    """Install SIGINT and SIGTERM handlers that set the returned stop request."""
    stop = StopRequest()

    def request_stop(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def init_ros(args: Optional[Sequence[str]]) -> StopRequest:
    """Initialise rclpy without its signal handlers and return the stop request.

    SIGINT or SIGTERM set the request; the caller shuts its node down in order.

    NOTE: a signal that arrives before this runs, while the node's module is still being
    imported, gets Python's default action. The process then ends without a zero command,
    and in rare cases CPython drops the KeyboardInterrupt inside an import and the node
    starts anyway.
    """
    apply_large_frame_profile()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return request_stop_on_signals()


def create_node(node_name: str, factory: Callable[[], NodeType],
                startup_errors: Tuple[Type[BaseException], ...]) -> Optional[NodeType]:
    """Build the node; on a start-up error log it as fatal, shut rclpy down, return None."""
    try:
        node = factory()
    except startup_errors as error:
        rclpy.logging.get_logger(node_name).fatal(f'start-up failed: {error}')
        rclpy.try_shutdown()
        return None
    warn_unknown_parameters(node)
    return node


def warn_unknown_parameters(node: Node) -> List[str]:
    """Log one warning naming the parameter overrides ``node`` does not declare; return them.

    rclpy ignores such overrides, so a misspelt ``-p control_rate:=10`` or YAML key would
    otherwise pass unnoticed while the node runs with its default.
    """
    # NOTE: rclpy has no public accessor for the overrides; without this private
    # attribute (another rclpy version) the check is skipped.
    overrides = getattr(node, '_parameter_overrides', None)
    if not isinstance(overrides, dict):
        return []
    unknown = sorted(name for name in overrides
                     if not name.startswith('qos_overrides.') and not node.has_parameter(name))
    if unknown:
        declared = ', '.join(sorted(node.get_parameters_by_prefix('')))
        node.get_logger().warning(f'unknown parameter(s) ignored: {", ".join(unknown)}; '
                                  f'check the spelling. {node.get_name()} has: {declared}')
    return unknown


def limit_teardown(node: Node, limit_s: float = TEARDOWN_LIMIT_S) -> None:
    """Arm a timer that prints every thread's stack and exits with code 1 after ``limit_s``.

    The timer runs in its own C thread, so it also covers the interpreter's exit. Further
    SIGINT and SIGTERM are ignored from here on, because the stop is already under way.
    Otherwise the interpreter's exit restores their default action, and a second Ctrl-C in
    its last fraction of a second ends the process with -2 instead of 0.
    """
    node.get_logger().debug(f'teardown: exiting within {limit_s:g} s')
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    faulthandler.dump_traceback_later(limit_s, exit=True, file=sys.stderr)


# Maximum wait of the executor for work, so a stop request is seen within this time.
SPIN_PERIOD_S = 0.1


class Spinner:
    """A single-threaded executor spinning one node in a daemon thread until stopped.

    The thread spins in short waits and checks a stop flag between them, and the executor
    is shut down only after the thread has ended. ``Executor.shutdown`` of rclpy (Kilted)
    does not wait for a ``spin()`` in another thread, and it destroys the executor's guard
    condition while that thread may still wait on it.
    """

    def __init__(self, node: Node, name: str = 'executor') -> None:
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self._stopping = threading.Event()
        self._shut_down = False
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stopping.is_set():
            self.executor.spin_once(timeout_sec=SPIN_PERIOD_S)

    def is_alive(self) -> bool:
        """Return whether the thread still spins. An exception in a callback ends it."""
        return self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Let the running callback finish, end the thread, then shut the executor down.

        Returns False, leaving the executor as it is, when the thread is still in a
        callback after ``timeout`` seconds. A second call after a successful one returns
        True and does nothing. Destroying a node while the executor thread still waits on
        it aborts the process in C++ ("terminate called without an active exception"), so
        callers destroy their node only after this.
        """
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if not self._shut_down:
            self.executor.shutdown()
            self._shut_down = True
        return True


# Seconds a callback may still run after a node was asked to stop.
CALLBACK_STOP_TIMEOUT_S = 2.0


def stop_and_destroy(node: Node, spinner: Spinner,
                     timeout: float = CALLBACK_STOP_TIMEOUT_S) -> bool:
    """Stop the spinner, then destroy the node and shut its rclpy context down.

    Returns False, with an error logged and the node left alone, when a callback still
    runs after ``timeout`` seconds.
    """
    if not spinner.stop(timeout):
        node.get_logger().error(f'a callback still runs {timeout:g} s after the stop request; '
                                'exiting without destroying the node')
        return False
    context = node.context
    node.destroy_node()
    context.try_shutdown()
    return True


def spin_until_stopped(node: Node, stop: StopRequest) -> None:
    """Spin ``node`` in the calling thread until ``stop`` is set, then shut the executor down."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    finally:
        executor.shutdown()
