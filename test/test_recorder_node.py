"""recorder_node: its pure helpers, and the node in real processes over DDS."""

import ast
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from liquid_control.data import recording
from liquid_control.data.episodes import EncodedImage, Episode, FrameLabels, find_episodes
from liquid_control.data.recording import (AutoRecordGate, FrameSynchroniser, RawImage,
                                           RecordingSession, SessionSettings)
from liquid_control.data.sync import LabelOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDER_YAML = REPO_ROOT / 'config' / 'recorder.yaml'
LAUNCH_FILE = REPO_ROOT / 'launch' / 'record.launch.py'
MS = 1_000_000
JPEG = cv2.imencode('.jpg', np.full((8, 8, 3), 90, np.uint8))[1].tobytes()


# ----------------------------------------------------------------- pure helpers

def _labels(value=0.5):
    return FrameLabels(linear_x=value, angular_z=0.0, command_status='ok', command_age_s=0.0)


def test_synchroniser_waits_for_later_samples():
    sync = FrameSynchroniser(LabelOptions())
    sync.add_command(95 * MS, 1.0, 0.1)
    sync.add_imu(98 * MS, np.zeros(6))
    sync.add_frame(100 * MS, EncodedImage(JPEG, 'jpg'), now_s=0.0)
    assert sync.pop_ready(now_s=0.001) == []
    sync.add_imu(103 * MS, np.ones(6))
    assert sync.pop_ready(now_s=0.002) == []
    sync.add_command(101 * MS, 2.0, 0.2)
    ready = sync.pop_ready(now_s=0.003)
    assert len(ready) == 1
    stamp, _, labels = ready[0]
    assert stamp == 100 * MS
    assert labels.linear_x == 2.0
    assert labels.command_age_s == pytest.approx(-0.001)
    assert labels.imu_status == 'interpolated'
    assert labels.imu[0] == pytest.approx(0.4)


def test_synchroniser_releases_after_timeout():
    sync = FrameSynchroniser(LabelOptions(command_tolerance_s=0.05, imu_tolerance_s=0.01))
    sync.add_frame(100 * MS, EncodedImage(JPEG, 'jpg'), now_s=10.0)
    assert sync.pop_ready(now_s=10.01) == []
    ready = sync.pop_ready(now_s=10.0 + sync.max_wait_s)
    assert len(ready) == 1
    assert not ready[0][2].valid
    assert ready[0][2].imu_status == 'missing'


def test_synchroniser_latest_without_imu_is_immediate():
    sync = FrameSynchroniser(LabelOptions(command_match='latest'), use_imu=False)
    sync.add_command(90 * MS, 1.0, 0.0)
    sync.add_frame(100 * MS, EncodedImage(JPEG, 'jpg'), now_s=0.0)
    ready = sync.pop_ready(now_s=0.0)
    assert len(ready) == 1
    assert ready[0][2].command_age_s == pytest.approx(0.01)


def test_synchroniser_flush_releases_all():
    sync = FrameSynchroniser(LabelOptions())
    for i in range(3):
        sync.add_frame((100 + i) * MS, EncodedImage(JPEG, 'jpg'), now_s=0.0)
    assert len(sync.pop_ready(now_s=0.0, flush=True)) == 3
    assert sync.pending == 0


def test_synchroniser_history_bounded_without_frames():
    sync = FrameSynchroniser(LabelOptions())
    for i in range(20_000):
        sync.add_imu(i * 5 * MS, np.zeros(6))
        sync.add_command(i * 5 * MS, 0.0, 0.0)
    # 2 s of history at 200 Hz, plus the one older sample kept for 'latest' matching.
    assert len(sync._imu) <= 402
    assert len(sync._commands) <= 402


def test_auto_record_gate_hysteresis():
    gate = AutoRecordGate(speed_threshold=0.2, stop_delay_s=1.0)
    assert gate.update(0.0, 0.1) is None
    assert gate.update(0.1, 0.5) == 'start'
    assert gate.update(0.2, -0.5) is None
    assert gate.update(0.3, 0.0) is None
    assert gate.update(0.8, 0.5) is None
    assert gate.update(1.0, 0.0) is None
    assert gate.update(1.7) is None
    assert gate.update(1.8) == 'stop'
    assert gate.update(1.9) is None
    assert not AutoRecordGate(0.0, 1.0).enabled


def _session(tmp_path, **settings):
    events = []
    session = RecordingSession(SessionSettings(output_dir=tmp_path, **settings),
                               on_event=lambda level, message: events.append((level, message)))
    return session, events


def test_session_writes_and_splits_at_gap(tmp_path):
    session, events = _session(tmp_path, split_gap_s=0.5, min_free_disk_mb=0.0)
    assert session.start()[0]
    for stamp in (0, 50, 100, 900, 950):
        assert session.submit(stamp * MS, EncodedImage(JPEG, 'jpg'), _labels())
    assert session.stop()[0]
    assert session.close()
    episodes = find_episodes(tmp_path)
    assert [len(e) for e in episodes] == [3, 2]
    assert 'gap of 0.80 s' in episodes[0].metadata['end_reason']
    assert episodes[1].metadata['end_reason'] == 'stop request'
    assert session.status()['frames_written'] == 5


def test_session_raw_frames_lossless(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    session, _ = _session(tmp_path, min_free_disk_mb=0.0)
    session.start()
    session.submit(1, RawImage('rgb8', 12, 10, 30, rgb.reshape(-1)), _labels())
    session.submit(2, RawImage('rgb8', 12, 10, 5, rgb.reshape(-1)), _labels())
    session.close()
    episode = find_episodes(tmp_path)[0]
    assert len(episode) == 1
    assert np.array_equal(episode.load_frame(0), rgb)
    assert session.drops['invalid_image'] == 1


def test_session_counts_queue_drops(tmp_path, monkeypatch):
    release = threading.Event()
    original_add = recording.EpisodeWriter.add

    def slow_add(self, *args):
        release.wait(10)
        return original_add(self, *args)

    monkeypatch.setattr(recording.EpisodeWriter, 'add', slow_add)
    session, _ = _session(tmp_path, queue_size=2, min_free_disk_mb=0.0)
    session.start()
    accepted = sum(session.submit((i + 1) * MS, EncodedImage(JPEG, 'jpg'), _labels())
                   for i in range(10))
    release.set()
    session.close()
    status = session.status()
    assert session.drops['queue_full'] == 10 - accepted
    assert status['frames_dropped'] >= 1
    assert status['frames_written'] == accepted
    assert len(find_episodes(tmp_path)[0]) == accepted


def test_session_rejects_start_low_disk(tmp_path):
    session, _ = _session(tmp_path, min_free_disk_mb=1e12)
    ok, message = session.start()
    assert not ok
    assert 'min_free_disk_mb' in message
    assert session.status()['failed']
    session.close()
    assert list(tmp_path.iterdir()) == []


def test_session_stops_when_disk_fills(tmp_path, monkeypatch):
    session, events = _session(tmp_path, min_free_disk_mb=100.0, disk_check_interval_s=0.0)
    session.start()
    session.submit(1 * MS, EncodedImage(JPEG, 'jpg'), _labels())
    time.sleep(0.3)
    monkeypatch.setattr(recording, 'free_disk_mb', lambda path: 5.0)
    session.submit(2 * MS, EncodedImage(JPEG, 'jpg'), _labels())
    deadline = time.monotonic() + 5
    while session.recording and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not session.recording
    session.close()
    status = session.status()
    assert status['failed']
    assert 'below min_free_disk_mb 100' in status['stop_reason']
    episode = find_episodes(tmp_path)[0]
    assert episode.finished
    assert len(episode) == 2
    assert any(level == 'error' and 'below min_free_disk_mb' in text for level, text in events)


def test_session_start_stop_without_frames_leaves_nothing(tmp_path):
    session, _ = _session(tmp_path, min_free_disk_mb=0.0)
    session.start()
    session.stop()
    session.close()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------- the node in real processes

def _recorder_command(output_dir, params=None, remaps=()):
    command = [sys.executable, '-m', 'liquid_control.nodes.recorder_node', '--ros-args',
               '--params-file', str(RECORDER_YAML), '-p', f'output_dir:={output_dir}',
               '-p', 'min_free_disk_mb:=0.0', '-p', 'sensor_reliability:=reliable']
    for name, value in (params or {}).items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        command += ['-p', f'{name}:={text}']
    for remap in remaps:
        command += ['-r', remap]
    return command


class Recorder:
    """recorder_node as a child process with its output in a log file."""

    def __init__(self, command, env, log_path):
        self.log_path = log_path
        self._log = open(log_path, 'w')
        self.process = subprocess.Popen(command, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def output(self):
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_for_output(self, text, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        return text in self.output()

    def signal(self, number, timeout=20.0):
        self.process.send_signal(number)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill_if_running(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if not self._log.closed:
            self._log.close()


class Teacher:
    """An rclpy node in the test process: camera, IMU and teacher commands out."""

    def __init__(self, env, command_type='twist_stamped', compressed=False,
                 image_topic='image_raw', imu_topic='imu/data', command_topic=None):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticStatus
        from geometry_msgs.msg import Twist, TwistStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image, Imu, Joy
        from std_srvs.srv import Trigger

        from liquid_control.nodes.dds import apply_large_frame_profile
        from liquid_control.nodes.qos import command_qos, sensor_qos

        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        apply_large_frame_profile()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(env['ROS_DOMAIN_ID']))
        self.node = rclpy.create_node('teacher', context=self.context)
        self.command_type = command_type
        self.compressed = compressed
        sensor = sensor_qos('reliable')
        if compressed:
            self.image_pub = self.node.create_publisher(CompressedImage,
                                                        image_topic + '/compressed', sensor)
        else:
            self.image_pub = self.node.create_publisher(Image, image_topic, sensor)
        self.imu_pub = self.node.create_publisher(Imu, imu_topic, sensor)
        message_type = {'twist': Twist, 'twist_stamped': TwistStamped, 'joy': Joy}[command_type]
        default_topic = 'joy' if command_type == 'joy' else 'cmd_vel'
        self.command_pub = self.node.create_publisher(message_type,
                                                      command_topic or default_topic,
                                                      command_qos())
        self.start_client = self.node.create_client(Trigger, '/recorder_node/start')
        self.stop_client = self.node.create_client(Trigger, '/recorder_node/stop')
        self.statuses = []
        status_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(DiagnosticStatus, '/recorder_node/status',
                                      self.statuses.append, status_qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.frames = []  # (stamp_ns, rgb or jpeg bytes, linear_x, angular_z)
        self.imu_start_ns = None

    def wait_connected(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.image_pub.get_subscription_count() > 0
                    and self.imu_pub.get_subscription_count() > 0
                    and self.command_pub.get_subscription_count() > 0
                    and self.start_client.service_is_ready()):
                time.sleep(0.2)
                return
            time.sleep(0.05)
        pytest.fail(f'recorder_node did not connect within {timeout} s')

    def call(self, client, timeout=10.0):
        from std_srvs.srv import Trigger
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert future.done(), f'{client.srv_name} did not answer within {timeout} s'
        return future.result()

    def now_ns(self):
        return self.node.get_clock().now().nanoseconds

    @staticmethod
    def _stamp(stamp_ns):
        from builtin_interfaces.msg import Time
        return Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)

    def imu_value(self, stamp_ns):
        """Angular velocity z of the IMU stream: seconds since the stream started."""
        return (stamp_ns - self.imu_start_ns) * 1e-9

    def _publish_imu(self, stamp_ns):
        from sensor_msgs.msg import Imu
        message = Imu()
        message.header.stamp = self._stamp(stamp_ns)
        message.angular_velocity.z = self.imu_value(stamp_ns)
        message.linear_acceleration.z = 9.81
        self.imu_pub.publish(message)

    def _publish_frame(self, index, stamp_ns):
        from sensor_msgs.msg import CompressedImage, Image
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[:, :, 0] = index % 256
        rgb[index % 24, :, 1] = 255
        if self.compressed:
            data = cv2.imencode('.jpg', rgb)[1].tobytes()
            message = CompressedImage(format='jpeg')
            message.data = data
            stored = data
        else:
            message = Image(height=24, width=32, encoding='rgb8', step=96)
            message.data = rgb.tobytes()
            stored = rgb
        message.header.stamp = self._stamp(stamp_ns)
        self.image_pub.publish(message)
        return stored

    def _publish_command(self, stamp_ns, linear_x, angular_z):
        from geometry_msgs.msg import Twist, TwistStamped
        from sensor_msgs.msg import Joy
        if self.command_type == 'joy':
            message = Joy(axes=[float(angular_z), float(linear_x)], buttons=[0])
            message.header.stamp = self._stamp(stamp_ns)
        else:
            twist = Twist()
            twist.linear.x, twist.angular.z = float(linear_x), float(angular_z)
            message = twist
            if self.command_type == 'twist_stamped':
                message = TwistStamped(twist=twist)
                message.header.stamp = self._stamp(stamp_ns)
        self.command_pub.publish(message)

    def drive(self, frames, rate_hz=20.0, speed=lambda i: 0.3 + 0.01 * i):
        """Publish frames with IMU at 200 Hz and one command 1 ms after each frame."""
        period_ns = int(1e9 / rate_hz)
        start_ns = self.now_ns()
        if self.imu_start_ns is None:
            self.imu_start_ns = start_ns - 50 * MS
        next_imu_ns = start_ns - 20 * MS
        for i in range(frames):
            frame_ns = start_ns + i * period_ns
            while next_imu_ns <= frame_ns + 20 * MS:
                self._publish_imu(next_imu_ns)
                next_imu_ns += 5 * MS
            stored = self._publish_frame(len(self.frames), frame_ns)
            linear_x, angular_z = speed(i), float(np.sin(0.3 * len(self.frames)))
            self._publish_command(frame_ns + MS, linear_x, angular_z)
            self.frames.append((frame_ns, stored, linear_x, angular_z))
            delay = (start_ns + (i + 1) * period_ns - self.now_ns()) * 1e-9
            time.sleep(max(0.0, delay))
        while next_imu_ns <= start_ns + frames * period_ns + 40 * MS:
            self._publish_imu(next_imu_ns)
            next_imu_ns += 5 * MS

    def wait_for_status(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.statuses and predicate(self.statuses[-1]):
                return self.statuses[-1]
            time.sleep(0.05)
        return self.statuses[-1] if self.statuses else None

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def _status_values(status):
    return {item.key: item.value for item in status.values}


@pytest.fixture
def harness(tmp_path, ros_env):
    started = []

    def start(params=None, remaps=(), **teacher_options):
        recorder = Recorder(_recorder_command(tmp_path / 'data', params, remaps), ros_env,
                            tmp_path / f'recorder{len(started)}.log')
        started.append(recorder)
        assert recorder.wait_for_output('ready:'), recorder.output()
        teacher_options.setdefault('command_type', (params or {}).get('command_type', 'twist'))
        teacher = Teacher(ros_env, **teacher_options)
        started.append(teacher)
        teacher.wait_connected()
        return recorder, teacher

    yield start
    for item in reversed(started):
        if isinstance(item, Teacher):
            item.close()
        else:
            item.kill_if_running()


def _check_rows(episode, published, compressed=False, imu_value=None):
    assert len(episode) == len(published)
    for i, (stamp_ns, stored, linear_x, angular_z) in enumerate(published):
        assert episode.stamp_ns[i] == stamp_ns
        if compressed:
            assert episode.frame_path(i).read_bytes() == stored
        else:
            assert np.array_equal(episode.load_frame(i), stored)
        assert episode.command('linear_x')[i] == pytest.approx(linear_x, abs=1e-6)
        assert episode.command('angular_z')[i] == pytest.approx(angular_z, abs=1e-6)
        assert episode.valid[i]
        if imu_value is not None:
            # Frames share stamps with IMU samples here, which count as 'nearest'.
            assert episode.imu_status[i] in ('interpolated', 'nearest')
            assert episode.imu[i, 2] == pytest.approx(imu_value(stamp_ns), abs=1e-5)
            assert episode.imu[i, 5] == pytest.approx(9.81, abs=1e-5)


def test_recorder_rows_match_published(harness, tmp_path):
    recorder, teacher = harness({'command_type': 'twist_stamped'},
                                remaps=['image_raw:=/camera/image_raw'],
                                image_topic='/camera/image_raw')
    response = teacher.call(teacher.start_client)
    assert response.success, response.message
    teacher.drive(30)
    time.sleep(0.3)
    response = teacher.call(teacher.stop_client)
    assert response.success, response.message
    assert recorder.wait_for_output('episode finished'), recorder.output()

    episode = find_episodes(tmp_path / 'data')[0]
    assert episode.finished
    _check_rows(episode, teacher.frames, imu_value=teacher.imu_value)
    assert episode.metadata['source']['topics']['image'] == '/camera/image_raw'
    assert episode.metadata['end_reason'] == 'stop service'
    status = teacher.wait_for_status(lambda s: _status_values(s)['frames_written'] == '30')
    values = _status_values(status)
    assert values['frames_written'] == '30'
    assert values['frames_dropped'] == '0'
    assert values['frames_without_command'] == '0'
    assert values['frames_without_imu'] == '0'
    assert values['recording'] == 'false'
    assert recorder.signal(signal.SIGINT) == 0


def test_recorder_compressed_joy_stored_as_received(harness, tmp_path):
    recorder, teacher = harness({'command_type': 'joy', 'compressed': True,
                                 'autostart': True}, compressed=True)
    teacher.drive(15)
    time.sleep(0.3)
    assert recorder.signal(signal.SIGTERM) == 0
    episode = find_episodes(tmp_path / 'data')[0]
    assert episode.frame_path(0).suffix == '.jpg'
    _check_rows(episode, teacher.frames, compressed=True)
    assert episode.metadata['commands']['angular_z']['source'] == 'axes[0]'


def test_recorder_sigterm_finishes_episode(harness, tmp_path):
    recorder, teacher = harness({'autostart': True, 'command_type': 'twist_stamped'})
    teacher.drive(20)
    # SIGTERM while frames are still waiting for their labels or the disk.
    assert recorder.signal(signal.SIGTERM) == 0
    output = recorder.output()
    assert 'episode finished' in output
    episode = find_episodes(tmp_path / 'data')[0]
    assert episode.finished
    assert episode.metadata['end_reason'] == 'shutdown'
    # The last frame may still be in transit when the signal arrives; every frame that
    # arrived must be in the episode.
    assert len(episode) >= len(teacher.frames) - 2
    _check_rows(episode, teacher.frames[:len(episode)])
    assert not list((tmp_path / 'data').glob('*.partial'))


def test_recorder_hard_kill_keeps_episodes(harness, tmp_path):
    recorder, teacher = harness({'autostart': True, 'command_type': 'twist_stamped',
                                 'split_gap': 0.3})
    teacher.drive(10)
    time.sleep(0.6)
    teacher.drive(10)
    # Let the writer flush the second episode's rows, then kill without warning.
    time.sleep(0.5)
    recorder.signal(signal.SIGKILL)

    dataset = tmp_path / 'data'
    finished = find_episodes(dataset)
    assert len(finished) == 1
    _check_rows(finished[0], teacher.frames[:10])
    partial = Episode(dataset / 'episode_0001.partial')
    assert not partial.finished
    assert 1 <= len(partial) <= 10
    _check_rows(partial, teacher.frames[10:10 + len(partial)])


def test_recorder_flags_frames_without_command(harness, tmp_path):
    recorder, teacher = harness({'autostart': True, 'command_type': 'twist_stamped',
                                 'command_tolerance': 0.02})
    teacher.drive(10)
    # Frames without commands: the command stream stops, the camera goes on.
    teacher._publish_command = lambda *args: None
    teacher.drive(6)
    status = teacher.wait_for_status(
        lambda s: _status_values(s)['frames_without_command'] == '6')
    assert _status_values(status)['frames_without_command'] == '6'
    assert recorder.signal(signal.SIGTERM) == 0
    episode = find_episodes(tmp_path / 'data')[0]
    assert len(episode) == 16
    assert episode.valid[:10].all()
    assert not episode.valid[10:].any()
    assert np.isnan(episode.command('linear_x')[10:]).all()
    # One warning at most every 2 s, which a missing IMU sample may also have used.
    assert 'frame without' in recorder.output()


def test_recorder_low_disk_rejects_start(harness, tmp_path):
    recorder, teacher = harness({'min_free_disk_mb': 1.0e11})
    response = teacher.call(teacher.start_client)
    assert not response.success
    assert 'below min_free_disk_mb' in response.message
    from diagnostic_msgs.msg import DiagnosticStatus
    status = teacher.wait_for_status(lambda s: s.level == DiagnosticStatus.ERROR)
    assert status.level == DiagnosticStatus.ERROR
    assert 'min_free_disk_mb' in status.message
    assert 'start rejected' in recorder.output()
    teacher.drive(5)
    assert recorder.signal(signal.SIGTERM) == 0
    assert not (tmp_path / 'data').exists() or list((tmp_path / 'data').iterdir()) == []


def test_recorder_auto_start_by_speed(harness, tmp_path):
    recorder, teacher = harness({'auto_record_speed': 0.2, 'auto_stop_delay': 0.3,
                                 'command_type': 'twist_stamped'})
    teacher.drive(5, speed=lambda i: 0.0)
    teacher.drive(10, speed=lambda i: 0.5)
    teacher.drive(12, speed=lambda i: 0.0)
    assert recorder.wait_for_output('episode finished'), recorder.output()
    assert recorder.signal(signal.SIGTERM) == 0
    episode = find_episodes(tmp_path / 'data')[0]
    assert 'speed below 0.2' in episode.metadata['end_reason']
    speeds = episode.command('linear_x')
    assert np.count_nonzero(speeds == 0.5) >= 9
    assert len(episode) <= 10 + 12


# ------------------------------------------------------------------ launch file

def _launch_calls():
    tree = ast.parse(LAUNCH_FILE.read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return [call for call in calls if isinstance(call.func, ast.Name)]


def test_launch_arguments_have_descriptions():
    declared = [call for call in _launch_calls() if call.func.id == 'DeclareLaunchArgument']
    assert declared
    for call in declared:
        keywords = {k.arg for k in call.keywords}
        assert 'description' in keywords, ast.unparse(call)
        assert 'default_value' in keywords, ast.unparse(call)


def test_launch_names_existing_executable_and_params():
    node_calls = [call for call in _launch_calls() if call.func.id == 'Node']
    assert len(node_calls) == 1
    keywords = {k.arg: k.value for k in node_calls[0].keywords}
    assert ast.literal_eval(keywords['package']) == 'liquid_control'
    assert ast.literal_eval(keywords['executable']) == 'recorder_node'
    setup = (REPO_ROOT / 'setup.py').read_text()
    assert "'recorder_node = liquid_control.nodes.recorder_node:main'" in setup
    text = LAUNCH_FILE.read_text()
    assert "'recorder.yaml'" in text
    assert RECORDER_YAML.is_file()
    remapped = {ast.literal_eval(pair.elts[0]) for pair in keywords['remappings'].elts}
    assert remapped == {'image_raw', 'image_raw/compressed', 'imu/data', 'cmd_vel', 'joy'}


def test_launch_overrides_declared_parameters():
    from liquid_control.nodes.recorder_node import SPECS
    node_call = next(call for call in _launch_calls() if call.func.id == 'Node')
    parameters = next(k.value for k in node_call.keywords if k.arg == 'parameters')
    overrides = next(item for item in parameters.elts if isinstance(item, ast.Dict))
    names = {ast.literal_eval(key) for key in overrides.keys}
    assert names
    assert names <= {spec.name for spec in SPECS}


def test_recorder_yaml_matches_parameters():
    import yaml
    from liquid_control.nodes.recorder_node import SPECS
    values = yaml.safe_load(RECORDER_YAML.read_text())['/**/recorder_node']['ros__parameters']
    assert set(values) == {spec.name for spec in SPECS}
    for spec in SPECS:
        assert type(values[spec.name]) is type(spec.default), spec.name


def test_recorder_bad_parameter_fails_start(tmp_path, ros_env):
    command = _recorder_command(tmp_path / 'data', {'command_match': 'previous'})
    result = subprocess.run(command, env=ros_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'invalid command_match' in result.stdout + result.stderr
