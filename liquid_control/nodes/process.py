"""Start-up and shutdown steps shared by the package's node executables.

Each executable installs its own SIGINT/SIGTERM handlers instead of rclpy's, because
rclpy's handlers shut the context down at once, before a node can publish a final zero
command or finish the episode it is recording.

Once a node's own shutdown work is done, the rest (stopping the executor, destroying the
node, shutting rclpy and DDS down, the interpreter's exit) is bounded by a watchdog: a
process that does not exit in time prints every thread's stack and exits with code 1, so
a caller that stops it (``ros2 launch``, ``liquid-control replay``, a test) sees where it
hung instead of having to kill it.
"""

import faulthandler
import signal
import sys
import threading
from typing import Callable, Optional, Sequence, Tuple, Type, TypeVar

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from liquid_control.nodes.dds import apply_large_frame_profile

NodeType = TypeVar('NodeType', bound=Node)

# Seconds the teardown after a node's own shutdown work may take; normally well under 1 s.
TEARDOWN_LIMIT_S = 5.0


def init_ros(args: Optional[Sequence[str]]) -> threading.Event:
    """Initialise rclpy without its signal handlers and return the stop event.

    The event is set by SIGINT or SIGTERM; the caller shuts its node down in order.
    """
    apply_large_frame_profile()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()

    def request_stop(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def create_node(node_name: str, factory: Callable[[], NodeType],
                startup_errors: Tuple[Type[BaseException], ...]) -> Optional[NodeType]:
    """Build the node; on a start-up error log it as fatal, shut rclpy down, return None."""
    try:
        return factory()
    except startup_errors as error:
        rclpy.logging.get_logger(node_name).fatal(f'start-up failed: {error}')
        rclpy.try_shutdown()
        return None


def limit_teardown(node: Node, limit_s: float = TEARDOWN_LIMIT_S) -> None:
    """Make the process exit with code 1 and print every thread's stack if it still runs
    ``limit_s`` seconds from now; the timer covers the interpreter's own exit too."""
    node.get_logger().debug(f'teardown: exiting within {limit_s:g} s')
    faulthandler.dump_traceback_later(limit_s, exit=True, file=sys.stderr)


def spin_in_thread(node: Node) -> Tuple[SingleThreadedExecutor, threading.Thread]:
    """Spin ``node`` on a single-threaded executor in a daemon thread."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name='executor', daemon=True)
    spinner.start()
    return executor, spinner


def stop_spinning(executor: SingleThreadedExecutor, spinner: threading.Thread,
                  timeout: float) -> None:
    """Shut the executor down and wait for its thread.

    Destroying a node while the executor thread still waits on it aborts the process in
    C++ ("terminate called without an active exception"), so the join comes first.
    """
    executor.shutdown(timeout_sec=timeout)
    spinner.join(timeout=timeout)


def spin_until_stopped(node: Node, stop: threading.Event) -> None:
    """Spin ``node`` in the calling thread until ``stop`` is set, then shut the executor down."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
