"""Stopping node processes: the executor thread, the teardown watchdog, the CLI's NodeProcess."""

import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time

from liquid_control.cli import node_process
from liquid_control.cli.node_process import NodeProcess
from liquid_control.nodes.process import StopRequest

# A process with a real rclpy node. Its teardown hangs, finishes, or first waits for SIGINT.
TEARDOWN_SCRIPT = textwrap.dedent('''
    import sys, time
    import rclpy
    from liquid_control.nodes.process import init_ros, limit_teardown

    stop = init_ros([])
    node = rclpy.create_node('teardown_probe')
    if sys.argv[2] == 'wait':
        print('ready', flush=True)
        stop.wait(30)
    limit_teardown(node, float(sys.argv[1]))

    def stuck_in_teardown():
        time.sleep(60)

    if sys.argv[2] == 'hang':
        stuck_in_teardown()
    node.destroy_node()
    rclpy.try_shutdown()
''')


# A node whose timer callback is busy for 2 s while the spinner is asked to stop.
SPINNER_SCRIPT = textwrap.dedent('''
    import threading, time
    import rclpy
    from liquid_control.nodes.process import Spinner, init_ros, stop_and_destroy

    init_ros([])
    node = rclpy.create_node('spinner_probe')
    entered = threading.Event()

    def busy():
        entered.set()
        time.sleep(2.0)

    node.create_timer(0.05, busy)
    spinner = Spinner(node)
    entered.wait(30)
    print('during callback:', spinner.stop(timeout=0.2), flush=True)
    print('after callback:', spinner.stop(timeout=10.0), flush=True)
    print('again:', spinner.stop(timeout=0.0), flush=True)
    print('alive:', spinner.is_alive(), flush=True)
    print('destroyed:', stop_and_destroy(node, spinner), flush=True)
''')


def test_spinner_waits_for_running_callback(ros_env):
    result = subprocess.run([sys.executable, '-c', SPINNER_SCRIPT], env=ros_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ['during callback: False', 'after callback: True', 'again: True',
                     'alive: False', 'destroyed: True']


def _run_teardown(ros_env, limit_s: float, mode: str):
    started = time.monotonic()
    result = subprocess.run([sys.executable, '-c', TEARDOWN_SCRIPT, str(limit_s), mode],
                            env=ros_env, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def test_hung_teardown_exits_with_the_stack(ros_env):
    result, elapsed = _run_teardown(ros_env, 1.0, 'hang')
    assert result.returncode == 1, result.stderr
    assert elapsed < 30, f'the watchdog did not end the process: {elapsed:.1f} s'
    # Every thread's stack is printed, naming the function the process hung in.
    assert 'Timeout' in result.stderr
    assert 'stuck_in_teardown' in result.stderr


def test_teardown_in_time_exits_cleanly(ros_env):
    result, elapsed = _run_teardown(ros_env, 3.0, 'finish')
    assert result.returncode == 0, result.stderr
    assert 'Timeout' not in result.stderr
    # The process does not wait for the watchdog's limit before exiting.
    assert elapsed < 30


def test_signals_during_teardown_are_ignored(ros_env):
    process = subprocess.Popen([sys.executable, '-c', TEARDOWN_SCRIPT, '5.0', 'wait'],
                               env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == 'ready'
    # Keep pressing Ctrl-C until the process has gone, through the interpreter's exit.
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        process.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert 'KeyboardInterrupt' not in stderr


# Polls the stop request without sleeping, so SIGINT often arrives in the middle of a poll.
# With a threading.Event as the request, set() in the handler then waited for the lock that
# the interrupted wait() held, and 61 of 100 such children hung in a run here.
STOP_POLL_SCRIPT = textwrap.dedent('''
    from liquid_control.nodes.process import request_stop_on_signals

    stop = request_stop_on_signals()
    print('ready', flush=True)
    polls = 0
    while not stop.wait(0):
        polls += 1
    print('stopped after', polls, 'polls', flush=True)
''')


def test_signal_mid_poll_ends_loop(ros_env):
    for attempt in range(10):
        process = subprocess.Popen([sys.executable, '-c', STOP_POLL_SCRIPT], env=ros_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == 'ready', process.communicate()[1]
        time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError(f'child {attempt} still polled 10 s after SIGINT')
        assert process.returncode == 0, stderr
        assert stdout.startswith('stopped after'), stdout


def test_stop_request_wait():
    stop = StopRequest()
    started = time.monotonic()
    assert stop.wait(0.05) is False
    assert time.monotonic() - started >= 0.05

    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert stop.wait(30) is True
    assert time.monotonic() - started < 10
    assert stop.is_set()
    assert stop.wait(0) is True


def _child(tmp_path, code: str, name: str = 'child') -> NodeProcess:
    # A shell that runs these tests in the background ignores SIGINT, and children inherit
    # that. The rclpy nodes install their own handler, so this child installs one too.
    code = 'import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n' + code
    process = NodeProcess(name, [sys.executable, '-c', code], {'PYTHONUNBUFFERED': '1'},
                          tmp_path)
    # Wait for the child's first line, so its signal handler is installed before stop().
    assert process.wait_for_output('ready', timeout=30), process.output_tail()
    return process


def test_stop_returns_zero_for_a_clean_exit(tmp_path, caplog):
    process = _child(tmp_path, 'import time\nprint("ready")\ntry:\n    time.sleep(60)\n'
                               'except KeyboardInterrupt:\n    pass\n')
    with caplog.at_level(logging.ERROR):
        assert process.stop() == 0
    assert not caplog.records
    assert not process.alive()


def test_stop_reports_the_log_of_a_failed_exit(tmp_path, caplog):
    process = _child(tmp_path, 'import sys, time\nprint("ready")\ntry:\n    time.sleep(60)\n'
                               'except KeyboardInterrupt:\n'
                               '    print("could not flush episode 7")\n    sys.exit(3)\n',
                     name='writer')
    with caplog.at_level(logging.ERROR):
        assert process.stop() == 3
    assert 'writer stopped with exit code 3' in caplog.text
    assert 'could not flush episode 7' in caplog.text


def test_stop_kills_a_node_that_ignores_sigint(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(node_process, 'STOP_TIMEOUT_S', 1.0)
    process = _child(tmp_path, 'import signal, time\n'
                               'signal.signal(signal.SIGINT, signal.SIG_IGN)\n'
                               'print("ready")\nprint("still spinning")\ntime.sleep(60)\n',
                     name='stubborn')
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        code = process.stop()
    assert code == -9
    assert time.monotonic() - started < 20
    assert 'stubborn' in caplog.text and 'was killed' in caplog.text
    assert 'still spinning' in caplog.text
