"""Node executables started by the CLI as child processes, each with its own log file."""

import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import List, Optional

_logger = logging.getLogger(__name__)

# A node publishes its zero command and tears rclpy down well within this after SIGINT.
# A node whose teardown hangs is ended sooner by its own watchdog (nodes/process.py).
STOP_TIMEOUT_S = 10.0


class NodeProcess:
    """A node started with this Python, its output written to ``<out_dir>/<name>.log``."""

    def __init__(self, name: str, command: List[str], env: dict, out_dir: Path) -> None:
        self.name = name
        self.log_path = out_dir / f'{name}.log'
        self._log = self.log_path.open('w')
        self.process = subprocess.Popen(command, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        _logger.debug('started %s (pid %d): %s', name, self.process.pid, ' '.join(command))

    def alive(self) -> bool:
        """Return whether the process is still running."""
        return self.process.poll() is None

    def wait_for_output(self, text: str, timeout: float) -> bool:
        """Wait until ``text`` appears in the log; return False on a timeout or an exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            self._log.flush()
            if text in self.log_path.read_text(errors='replace'):
                return True
            time.sleep(0.1)
        return text in self.log_path.read_text(errors='replace')

    def output_tail(self, lines: int = 15) -> str:
        """Return the last lines of the node's log."""
        if not self._log.closed:
            self._log.flush()
        return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])

    def stop(self) -> Optional[int]:
        """Stop the node with SIGINT, kill it if it does not stop, and return its exit code.

        A node that had to be killed, or that stopped with an error, is logged with the
        last lines of its log, so the reason shows without opening the file.
        """
        killed = False
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                killed = True
                self.process.kill()
                self.process.wait()
        self._log.close()
        code = self.process.returncode
        if killed:
            _logger.error('%s (pid %d) did not stop within %g s after SIGINT and was killed; '
                          'last lines of %s:\n%s', self.name, self.process.pid, STOP_TIMEOUT_S,
                          self.log_path, self.output_tail())
        elif code != 0:
            _logger.error('%s stopped with exit code %d; last lines of %s:\n%s',
                          self.name, code, self.log_path, self.output_tail())
        return code
