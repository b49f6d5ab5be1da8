"""liquid-control replay plays real bags into a policy node process and records commands."""

import csv
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from node_harness import NodeProcess, make_checkpoint, node_command

CONTROL_RATE_HZ = 20.0
# The machine is shared with other jobs: these timeouts keep scheduling pauses of a few
# hundred milliseconds from flapping the input watchdog during the measured run.
RELAXED = ['-p', 'imu_timeout:=0.5', '-p', 'input_timeout:=0.5']


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('model') / 'imu.lcm', imu_enabled=True)


@pytest.fixture(scope='module')
def camera_model(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('model') / 'camera.lcm', imu_enabled=False)


def _replay(env, *arguments, timeout=180):
    command = [sys.executable, '-m', 'liquid_control.cli.main', 'replay', *map(str, arguments)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _summary(out: Path) -> dict:
    return json.loads((out / 'summary.json').read_text())


def _csv_rows(out: Path) -> list:
    with (out / 'commands.csv').open() as handle:
        return list(csv.DictReader(handle))


def test_replay_euroc_rate_and_latency(shared_data, ros_env, tmp_path, model):
    out = tmp_path / 'out'
    result = _replay(ros_env, shared_data / 'euroc_v101_micro', '--model', model,
                     '--out', out, *RELAXED)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = _summary(out)

    assert summary['frames_published'] == 95
    assert summary['imu_published'] == 1041
    assert summary['rate_hz_from_median_period'] == pytest.approx(CONTROL_RATE_HZ, rel=0.05)
    # Counting over the 4.75 s bag is coarser: one command more or less is 1 in 95.
    assert summary['rate_hz'] == pytest.approx(CONTROL_RATE_HZ, rel=0.1)
    assert summary['node_exit_code'] == 0
    assert summary['latency_ms']['count'] >= 30
    assert 0 < summary['latency_ms']['p50'] <= summary['latency_ms']['p99']
    assert isinstance(summary['deadline_misses'], int)
    # Fresh input all through the bag: one reset when the camera goes stale at its end,
    # none from the IMU watchdog.
    assert int(summary['node_diagnostics']['state_resets']) <= 2
    rows = _csv_rows(out)
    assert len(rows) == summary['commands']
    assert all(np.isfinite(float(row['linear_x'])) for row in rows)
    with_latency = [row for row in rows if row['latency_ms']]
    assert len(with_latency) == summary['latency_ms']['count']


def test_replay_sqlite3_compressed_bag(shared_data, ros_env, tmp_path, camera_model):
    out = tmp_path / 'out'
    result = _replay(ros_env, shared_data / 'donkey_indoor_train_bag', '--model',
                     camera_model, '--out', out, '--duration', '2.0', *RELAXED)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = _summary(out)
    assert summary['image_topic'] == '/camera/image_raw/compressed'
    assert summary['imu_topic'] is None
    assert summary['frames_published'] >= 39
    assert summary['invalid_frames'] == 0
    assert summary['latency_ms']['count'] >= 20


def _write_ros1_bag(path: Path, seconds: float = 2.0) -> None:
    """Write a small ROS 1 bag with 20 Hz rgb8 frames and 100 Hz IMU messages."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    Image = store.types['sensor_msgs/msg/Image']
    Imu = store.types['sensor_msgs/msg/Imu']
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    Vector3 = store.types['geometry_msgs/msg/Vector3']
    Quaternion = store.types['geometry_msgs/msg/Quaternion']
    rng = np.random.default_rng(0)
    start_ns = 1_700_000_000 * 10**9
    with Writer(path) as writer:
        camera = writer.add_connection('/camera/image_raw', Image.__msgtype__, typestore=store)
        imu = writer.add_connection('/imu', Imu.__msgtype__, typestore=store)
        for step in range(int(seconds * 100)):
            time_ns = start_ns + step * 10**7
            header = Header(seq=step, stamp=Time(sec=time_ns // 10**9,
                                                 nanosec=time_ns % 10**9), frame_id='x')
            zero = np.zeros(9, np.float64)
            message = Imu(header=header, orientation=Quaternion(x=0, y=0, z=0, w=1),
                          orientation_covariance=zero,
                          angular_velocity=Vector3(x=0.0, y=0.0, z=0.1),
                          angular_velocity_covariance=zero,
                          linear_acceleration=Vector3(x=0.0, y=0.0, z=9.81),
                          linear_acceleration_covariance=zero)
            writer.write(imu, time_ns, store.serialize_ros1(message, Imu.__msgtype__))
            if step % 5 == 0:
                pixels = rng.integers(0, 256, 120 * 160 * 3, dtype=np.uint8)
                frame = Image(header=header, height=120, width=160, encoding='rgb8',
                              is_bigendian=0, step=480, data=pixels)
                writer.write(camera, time_ns, store.serialize_ros1(frame, Image.__msgtype__))


def test_replay_ros1_bag(ros_env, tmp_path, model):
    bag = tmp_path / 'small.bag'
    _write_ros1_bag(bag)
    out = tmp_path / 'out'
    result = _replay(ros_env, bag, '--model', model, '--out', out, *RELAXED)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = _summary(out)
    assert summary['frames_published'] == 40
    assert summary['imu_published'] == 200
    assert summary['latency_ms']['count'] >= 20


def test_replay_bag_without_frames_fails(ros_env, tmp_path, model):
    bag = tmp_path / 'empty.bag'
    _write_ros1_bag(bag, seconds=0.0)
    out = tmp_path / 'out'
    result = _replay(ros_env, bag, '--model', model, '--out', out, *RELAXED)
    assert result.returncode == 1, result.stderr + result.stdout
    assert 'no camera frame was played: /camera/image_raw has no messages' in result.stderr
    assert _summary(out)['frames_published'] == 0


def test_replay_summary_names_lost_inputs():
    from liquid_control.cli.replay import summary_problems

    summary = {'invalid_frames': 10, 'dropped_frames': 0, 'invalid_imu': None,
               'invalid_outputs': 3}
    assert summary_problems(summary) == [
        '10 frame(s) the policy node rejected as unreadable (see policy_node.log)',
        '3 non-finite policy output(s), replaced by zero commands (see policy_node.log)']


def test_replay_keeps_discovery_local_by_default():
    from liquid_control.cli.replay import discovery_settings

    assert discovery_settings({}, use_running_node=False) == {
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    assert discovery_settings({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}, False) == {}
    assert discovery_settings({}, use_running_node=True) == {}


def test_replay_uses_running_node(shared_data, ros_env, tmp_path, model):
    params = {'twist_stamped': True, 'command_stamp': 'frame', 'imu_timeout': 0.5,
              'input_timeout': 0.5}
    remaps = ['image_raw:=/cam0/image_raw', 'imu/data:=/imu0', 'cmd_vel:=/robot/cmd_vel']
    node = NodeProcess(node_command(model, params, remaps), ros_env, tmp_path / 'node.log')
    try:
        assert node.wait_for_output('ready:', timeout=60), node.output()
        out = tmp_path / 'out'
        result = _replay(ros_env, shared_data / 'euroc_v101_micro', '--use-running-node',
                         '--cmd-vel-topic', '/robot/cmd_vel', '--out', out,
                         '--duration', '2.0')
        assert result.returncode == 0, result.stderr + result.stdout
        summary = _summary(out)
        assert summary['node_exit_code'] is None
        assert summary['latency_ms']['count'] >= 10
        assert node.alive()
    finally:
        assert node.stop() == 0


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ''


def _lines_of(stream, lines: list) -> None:
    for line in stream:
        lines.append(line)


# SIGINT twice: the second lands while replay stops its policy node. SIGTERM: what a
# service manager or `timeout` sends.
@pytest.mark.parametrize('signals', [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=['sigint-twice', 'sigterm'])
def test_replay_signal_keeps_summary(shared_data, ros_env, tmp_path, model, signals):
    out = tmp_path / 'out'
    command = [sys.executable, '-m', 'liquid_control.cli.main', 'replay',
               str(shared_data / 'euroc_v101_micro'), '--model', str(model), '--out', str(out),
               '--rate', '0.5', *RELAXED]
    process = subprocess.Popen(command, env=ros_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    errors = []
    reader = threading.Thread(target=_lines_of, args=(process.stderr, errors), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any('playing' in line for line in errors) and time.monotonic() < deadline:
            assert process.poll() is None, ''.join(errors)
            time.sleep(0.1)
        time.sleep(2.0)
        process.send_signal(signals[0])
        node_log = out / 'policy_node.log'
        for number in signals[1:]:
            # Send it once the policy node has started its shutdown, while replay waits
            # for that node to exit.
            deadline = time.monotonic() + 30
            while 'shutdown' not in _text(node_log) and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(number)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    log = ''.join(errors)

    assert process.returncode == 0, log
    assert 'Traceback' not in log
    assert 'terminate called' not in log
    summary = _summary(out)
    assert summary['interrupted'] is True
    assert 0 < summary['frames_published'] < 95
    assert summary['node_exit_code'] == 0
    assert len(_csv_rows(out)) == summary['commands']
    assert 'written to' in stdout


@pytest.mark.parametrize('arguments, fragment', [
    (['--model', 'missing.lcm'], 'model not found'),
    (['--image-topic', '/nope', '--model', '{model}'], '/nope not in the bag'),
    (['--imu-topic', '/cam0/image_raw', '--model', '{model}'], 'expected sensor_msgs/msg/Imu'),
    (['--rate', '0', '--model', '{model}'], '--rate must be a positive number'),
    (['--duration', '-1', '--model', '{model}'], '--duration must be a positive number'),
    ([], '--model is required'),
])
def test_replay_rejects_bad_arguments(shared_data, tmp_path, model, capsys, arguments,
                                      fragment):
    # These checks run before rclpy starts, so the command runs in this process.
    from liquid_control.cli.main import main

    arguments = [argument.format(model=model) for argument in arguments]
    code = main(['replay', str(shared_data / 'euroc_v101_micro'), '--out',
                 str(tmp_path / 'out'), *arguments])
    error = capsys.readouterr().err
    assert code == 2
    assert fragment in error
    assert error.startswith('liquid-control replay: error:')


def test_replay_missing_bag_rejected(tmp_path, model, capsys):
    from liquid_control.cli.main import main

    code = main(['replay', str(tmp_path / 'nothing'), '--model', str(model), '--out',
                 str(tmp_path / 'out')])
    assert code == 2
    assert 'bag not found' in capsys.readouterr().err
