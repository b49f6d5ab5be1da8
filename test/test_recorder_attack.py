"""recorder_node under hostile input: bad stamps, damaged frames, stop timing, parameters.

Most tests run the node as a real process over DDS, with the ``Recorder`` and ``Teacher``
helpers of test_recorder_node, and read what it wrote with ``liquid_control.data.episodes``.
"""

import signal
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest
import test_recorder_node
from test_recorder_node import MS, _recorder_command

from liquid_control.data.episodes import EncodedImage, FrameLabels, find_episodes
from liquid_control.data.recording import (HISTORY_S, FrameSynchroniser, RawImage,
                                           RecordingSession, SessionSettings)
from liquid_control.data.sync import LabelOptions

HOUR_NS = 3600 * 10**9

# The recorder and teacher launcher of the recorder node tests (a pytest fixture).
recorder_harness = test_recorder_node.harness


@pytest.fixture
def harness(recorder_harness):
    """Start a recorder and a teacher that sends stamped commands, with IMU from 50 ms ago."""
    def start(params):
        params = {'command_type': 'twist_stamped', **params}
        recorder, teacher = recorder_harness(params, compressed=bool(params.get('compressed')))
        teacher.imu_start_ns = teacher.now_ns() - 50 * MS
        return recorder, teacher

    return start


def _publish_raw(teacher, stamp_ns, data, step=96):
    from sensor_msgs.msg import Image
    message = Image(height=24, width=32, encoding='rgb8', step=step)
    message.data = data
    message.header.stamp = teacher._stamp(stamp_ns)
    teacher.image_pub.publish(message)


def _publish_jpeg(teacher, stamp_ns, data):
    from sensor_msgs.msg import CompressedImage
    message = CompressedImage(format='jpeg')
    message.data = data
    message.header.stamp = teacher._stamp(stamp_ns)
    teacher.image_pub.publish(message)


def _labelled(teacher, publish_frame):
    """Publish a frame with IMU around it and its command 1 ms after it; return the stamp."""
    stamp_ns = teacher.now_ns()
    teacher._publish_imu(stamp_ns - 2 * MS)
    publish_frame(stamp_ns)
    teacher._publish_command(stamp_ns + MS, 0.5, 0.0)
    teacher._publish_imu(stamp_ns + 3 * MS)
    time.sleep(0.05)
    return stamp_ns


def _published_speeds(teacher):
    return {stamp_ns: linear_x for stamp_ns, _, linear_x, _ in teacher.frames}


# ------------------------------------------------------------- damaged frames

def test_invalid_raw_frames_dropped_recording_continues(harness, tmp_path):
    # A small queue, so frames pile up quickly if the writer thread stops.
    recorder, teacher = harness({'autostart': True, 'queue_size': 8})
    teacher.drive(3)
    rgb = bytes(96 * 24)
    _labelled(teacher, lambda stamp_ns: _publish_raw(teacher, stamp_ns, rgb[:90 * 24], step=90))
    _labelled(teacher, lambda stamp_ns: _publish_raw(teacher, stamp_ns, rgb + bytes(500)))
    teacher.drive(20)
    time.sleep(0.3)

    assert recorder.signal(signal.SIGTERM) == 0
    output = recorder.output()
    assert 'invalid step 90' in output
    assert 'Traceback' not in output
    episode = find_episodes(tmp_path / 'data')[0]
    assert episode.finished
    assert len(episode) == 23
    assert episode.metadata['drops'] == {'invalid_image': 2}


def test_damaged_jpeg_frames_dropped(harness, tmp_path):
    recorder, teacher = harness({'autostart': True, 'compressed': True})
    good = cv2.imencode('.jpg', np.full((24, 32, 3), 100, np.uint8))[1].tobytes()
    damaged = [good[:len(good) // 2],                              # truncated
               b'\xff\xd8\xff' + b'not a jpeg' * 20,               # no end marker
               good[:100] + bytes(200) + good[-2:]]                # scan data replaced
    stamps = []
    for data in [good] + damaged + [good]:
        def publish(stamp_ns, data=data):
            _publish_jpeg(teacher, stamp_ns, data)
        stamps.append(_labelled(teacher, publish))
    time.sleep(0.3)

    assert recorder.signal(signal.SIGTERM) == 0
    assert 'frame dropped, invalid image' in recorder.output()
    episode = find_episodes(tmp_path / 'data')[0]
    assert list(episode.stamp_ns) == [stamps[0], stamps[-1]]
    assert episode.metadata['drops'] == {'invalid_image': 3}
    for index in range(len(episode)):
        assert episode.load_frame(index).shape == (24, 32, 3)


def test_session_survives_failing_event_handler(tmp_path):
    def on_event(level, message):
        if level != 'info':
            raise ValueError('handler failed')

    session = RecordingSession(SessionSettings(output_dir=tmp_path, queue_size=4,
                                               min_free_disk_mb=0.0), on_event=on_event)
    labels = FrameLabels(linear_x=0.5, angular_z=0.0, command_status='ok', command_age_s=0.0)
    session.start()
    bad = RawImage('rgb8', 2, 2, 5, np.zeros(10, np.uint8))
    session.submit(1 * MS, bad, labels)
    jpeg = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for i in range(2, 40):
        while session.status()['queue_depth'] >= 4:
            time.sleep(0.001)
            if not session._thread.is_alive():
                break
        session.submit(i * MS, EncodedImage(jpeg, 'jpg'), labels)

    closer = threading.Thread(target=session.close, kwargs={'timeout_s': 10.0}, daemon=True)
    closer.start()
    closer.join(15.0)
    assert not closer.is_alive(), 'close() blocked on a dead writer thread'
    episode = find_episodes(tmp_path)[0]
    assert len(episode) == 38
    assert session.drops['invalid_image'] == 1


# --------------------------------------------------------------------- stamps

def test_future_command_stamp_keeps_labels(harness, tmp_path):
    recorder, teacher = harness({'autostart': True})
    teacher.drive(10)
    teacher._publish_command(teacher.now_ns() + HOUR_NS, 9.0, 9.0)
    time.sleep(0.1)
    teacher.drive(20)
    time.sleep(0.3)

    assert recorder.signal(signal.SIGTERM) == 0
    assert 'its clock jumped back' in recorder.output()
    episode = find_episodes(tmp_path / 'data')[0]
    assert len(episode) == 30
    published = _published_speeds(teacher)
    # The frame right after the bad command finds only that one in the history.
    for index in [*range(10), *range(11, 30)]:
        stamp_ns = int(episode.stamp_ns[index])
        assert episode.command('linear_x')[index] == pytest.approx(published[stamp_ns],
                                                                   abs=1e-6), index
        assert episode.command_age_s[index] == pytest.approx(-0.001, abs=1e-6), index


def test_clock_jump_back_starts_new_episode(harness, tmp_path):
    recorder, teacher = harness({'autostart': True})
    teacher.drive(10)
    teacher._publish_frame(99, teacher.now_ns() + HOUR_NS)
    time.sleep(0.3)
    teacher.drive(20)
    time.sleep(0.3)

    assert recorder.signal(signal.SIGTERM) == 0
    episodes = find_episodes(tmp_path / 'data')
    assert [len(episode) for episode in episodes] == [10, 1, 20]
    assert episodes[1].metadata['end_reason'].startswith('clock jumped back by 3599.')
    assert episodes[2].metadata['drops'] == {}
    assert list(episodes[2].stamp_ns) == [stamp for stamp, *_ in teacher.frames[10:]]


def test_synchroniser_history_restarts_after_jump():
    sync = FrameSynchroniser(LabelOptions())
    for i in range(100):
        sync.add_imu(i * 5 * MS, np.full(6, float(i)))
    assert not sync.add_imu(10**15, np.zeros(6))
    assert sync.add_imu(500 * MS, np.full(6, 100.0))
    for i in range(101, 2000):
        assert not sync.add_imu(i * 5 * MS, np.full(6, float(i)))
    # Bounded by HISTORY_S at 200 Hz, plus the one older sample kept for 'latest'.
    assert len(sync._imu) <= HISTORY_S * 200 + 2
    # The future stamp no longer counts as the newest IMU sample, so the frame waits for
    # the sample after it.
    frame_ns = 1999 * 5 * MS + 2 * MS
    sync.add_command(frame_ns + MS, 1.0, 0.0)
    sync.add_frame(frame_ns, EncodedImage(b'', 'jpg'), now_s=0.0)
    assert sync.pop_ready(now_s=0.0) == []


def test_session_clock_jump_back_splits(tmp_path):
    session = RecordingSession(SessionSettings(output_dir=tmp_path, min_free_disk_mb=0.0,
                                               split_gap_s=0.0))
    labels = FrameLabels(linear_x=0.5, angular_z=0.0, command_status='ok', command_age_s=0.0)
    jpeg = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    session.start()
    for stamp_ms in (10_000, 10_050, 10_050, 9_500, 10_100, 500, 550):
        session.submit(stamp_ms * MS, EncodedImage(jpeg, 'jpg'), labels)
    assert session.close()
    episodes = find_episodes(tmp_path)
    assert [list(episode.stamp_ns // MS) for episode in episodes] == [
        [10_000, 10_050, 10_100], [500, 550]]
    assert session.drops == {'out_of_order': 2}
    assert episodes[0].metadata['end_reason'] == 'clock jumped back by 9.60 s'


# ------------------------------------------------------------------ stop timing

def test_stop_waits_for_pending_labels(harness, tmp_path):
    from std_srvs.srv import Trigger
    recorder, teacher = harness({})
    for _ in range(2):
        assert teacher.call(teacher.start_client).success
        teacher.drive(5)
        stamp_ns = teacher.now_ns()
        teacher._publish_imu(stamp_ns - 2 * MS)
        teacher._publish_frame(len(teacher.frames), stamp_ns)
        teacher.frames.append((stamp_ns, None, 2.0, 0.0))
        # The frame waits for its command, and the stop comes before the command.
        time.sleep(0.03)
        future = teacher.stop_client.call_async(Trigger.Request())
        time.sleep(0.01)
        teacher._publish_command(stamp_ns + MS, 2.0, 0.0)
        teacher._publish_imu(stamp_ns + 3 * MS)
        time.sleep(0.3)
        assert future.done()
        assert future.result().success

    assert recorder.signal(signal.SIGTERM) == 0
    episodes = find_episodes(tmp_path / 'data')
    assert [len(episode) for episode in episodes] == [6, 6]
    for episode in episodes:
        assert episode.command('linear_x')[-1] == 2.0
        assert episode.command_age_s[-1] == pytest.approx(-0.001, abs=1e-6)


# ------------------------------------------------------------------- parameters

@pytest.mark.parametrize('name, value, expected', [
    ('sensor_reliability', 'reliabel', 'invalid sensor_reliability'),
    ('command_type', 'donkeycar', 'invalid command_type'),
    ('output_dir', '""', 'output_dir is empty'),
])
def test_bad_parameter_rejected_at_start(tmp_path, ros_env, name, value, expected):
    command = _recorder_command(tmp_path / 'data', {name: value})
    result = subprocess.run(command, env=ros_env, capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert expected in output
    assert 'Traceback' not in output
    assert not list(tmp_path.glob('episode_*'))
