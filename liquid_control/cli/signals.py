"""SIGTERM as an exception, so that a command cleans up as it does for Ctrl-C."""

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(BaseException):
    """Exception for SIGTERM while a command runs.

    It derives from BaseException, like KeyboardInterrupt, so that no ``except Exception``
    on the way stops it.
    """


def _raise_terminated(signum, frame) -> None:
    # Python runs this in the main thread between bytecodes, so the exception unwinds
    # through the command's clean-up code. A second SIGTERM while that runs is ignored, so
    # the clean-up is not cut short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Raise ``Terminated`` on SIGTERM inside the block, then restore the old handler.

    Outside the main thread Python cannot install signal handlers, and the block runs
    with SIGTERM's handling unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        # None means a handler installed outside Python, which cannot be restored.
        signal.signal(signal.SIGTERM, previous_handler or signal.SIG_DFL)
