"""rosbag2 import: the real EuRoC MCAP bag, topic selection, and damaged bags."""

import signal

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Writer as Rosbag2Writer
from rosbags.typesys import Stores, get_typestore

from liquid_control.data.bags import BagReader
from liquid_control.data.episodes import find_episodes
from liquid_control.data.images import decode_raw
from liquid_control.data.importing import increasing_subset
from liquid_control.data.sources import import_source
from liquid_control.data.sync import LabelOptions
from liquid_control.errors import DataError

from bag_samples import FRAME_PERIOD_NS, START_NS, set_stamp, stamp_ns, write_sample_bag
from conftest import SHARED_DATA, terminate_when_ready

EUROC = SHARED_DATA / 'euroc_v101_micro'
DONKEY_BAG = SHARED_DATA / 'donkey_indoor_train_bag'


def _require(path):
    if not path.exists():
        pytest.skip(f'sample data not found at {path}; it is kept outside the repository')
    return path


@pytest.fixture(scope='module')
def euroc_episode(tmp_path_factory):
    out = tmp_path_factory.mktemp('euroc')
    folders = import_source(_require(EUROC), out, LabelOptions(require_commands=False))
    assert len(folders) == 1
    return find_episodes(folders[0])[0]


def test_euroc_without_commands_error(tmp_path):
    with pytest.raises(DataError) as error:
        import_source(_require(EUROC), tmp_path / 'out')
    message = str(error.value)
    assert 'no command topic' in message
    assert '/cam0/image_raw (sensor_msgs/msg/Image, 95 messages)' in message
    assert '/imu0 (sensor_msgs/msg/Imu, 1041 messages)' in message
    assert '--no-commands' in message
    assert not (tmp_path / 'out').exists()


def test_euroc_imports_camera_and_imu(euroc_episode):
    assert len(euroc_episode) == 95
    assert euroc_episode.has_imu
    assert not euroc_episode.has_commands
    assert not euroc_episode.valid.any()
    assert np.all(np.isnan(euroc_episode.command('linear_x')))
    assert set(euroc_episode.imu_status) <= {'interpolated', 'nearest'}
    assert euroc_episode.metadata['commands'] is None
    assert euroc_episode.metadata['source']['topics'] == {
        'image': '/cam0/image_raw', 'imu': '/imu0', 'command': None}


def test_euroc_frames_lossless(euroc_episode):
    with BagReader(EUROC) as bag:
        _, message = next(bag.messages('/cam0/image_raw'))
    expected = decode_raw(message.encoding, message.height, message.width, message.step,
                          message.data)
    assert euroc_episode.frame_path(0).suffix == '.png'
    assert np.array_equal(euroc_episode.load_frame(0), expected)


def test_euroc_imu_matches_bag(euroc_episode):
    with BagReader(EUROC) as bag:
        stamps, values = [], []
        for _, message in bag.messages('/imu0'):
            stamps.append(message.header.stamp.sec * 10**9 + message.header.stamp.nanosec)
            values.append([message.angular_velocity.x, message.angular_velocity.y,
                           message.angular_velocity.z, message.linear_acceleration.x,
                           message.linear_acceleration.y, message.linear_acceleration.z])
    stamps, values = np.array(stamps), np.array(values)
    # EuRoC's camera and IMU share a clock, so most frames have an IMU sample at their stamp.
    for i in range(len(euroc_episode)):
        exact = np.flatnonzero(stamps == euroc_episode.stamp_ns[i])
        if exact.size:
            assert np.allclose(euroc_episode.imu[i], values[exact[0]], atol=1e-6)


def test_topic_not_in_bag_error(tmp_path):
    with pytest.raises(DataError) as error:
        import_source(_require(EUROC), tmp_path / 'out', LabelOptions(require_commands=False),
                      image_topic='/camera/image_raw')
    assert "topic '/camera/image_raw' not found" in str(error.value)
    assert '/cam0/image_raw' in str(error.value)


def test_topic_of_wrong_type_error(tmp_path):
    with pytest.raises(DataError, match='has type sensor_msgs/msg/Imu'):
        import_source(_require(EUROC), tmp_path / 'out', LabelOptions(require_commands=False),
                      image_topic='/imu0')


def test_missing_bag_error(tmp_path):
    with pytest.raises(DataError, match='not found'):
        import_source(tmp_path / 'absent.mcap', tmp_path / 'out')


def test_truncated_sqlite_bag_error(tmp_path):
    source = _require(DONKEY_BAG) / 'donkey_indoor_train_bag.db3'
    truncated = tmp_path / 'truncated.db3'
    truncated.write_bytes(source.read_bytes()[:source.stat().st_size // 2])
    with pytest.raises(DataError, match='truncated.db3'):
        import_source(truncated, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() or list((tmp_path / 'out').iterdir()) == []


def test_truncated_mcap_bag_error(tmp_path):
    source = _require(EUROC) / 'euroc_v101_micro.mcap'
    truncated = tmp_path / 'truncated.mcap'
    truncated.write_bytes(source.read_bytes()[:source.stat().st_size // 2])
    with pytest.raises(DataError, match='truncated.mcap'):
        import_source(truncated, tmp_path / 'out', LabelOptions(require_commands=False))
    assert not (tmp_path / 'out').exists() or list((tmp_path / 'out').iterdir()) == []


def test_corrupt_bag_error(tmp_path):
    corrupt = tmp_path / 'corrupt.mcap'
    corrupt.write_bytes(b'\x89MCAP0\r\n' + bytes(range(256)) * 40)
    with pytest.raises(DataError, match='corrupt.mcap'):
        import_source(corrupt, tmp_path / 'out')


# ------------------------------------------------- small bags with damaged messages

CAMERA = '/camera/image_raw/compressed'


def _edit_frames(frames, change):
    """Return an ``edit`` hook that calls ``change(message)`` on the camera frames listed."""
    def edit(topic, i, message):
        if topic in (CAMERA, '/camera/image_raw') and i in frames:
            change(message)
    return edit


def _set_data(data):
    def change(message):
        message.data = np.frombuffer(data, np.uint8)
    return change


def _shift_stamp(offset_ns):
    def change(message):
        set_stamp(message, stamp_ns(message) + offset_ns)
    return change


def _episodes(folders):
    return [episode for folder in folders for episode in find_episodes(folder)]


def test_increasing_subset_drops_outliers():
    assert increasing_subset([1, 2, 3, 100, 4, 5, 6]).tolist() == [1, 1, 1, 0, 1, 1, 1]
    assert increasing_subset([1, 2, -9, -8, 3, 4]).tolist() == [1, 1, 0, 0, 1, 1]
    assert increasing_subset([1, 2, 2, 3]).tolist() == [1, 1, 0, 1]
    assert increasing_subset([3, 2, 1]).sum() == 1
    assert increasing_subset([]).tolist() == []


def test_bag_future_stamp_costs_one_frame(tmp_path, caplog):
    sample = write_sample_bag(tmp_path / 'bag',
                              edit=_edit_frames({10}, _shift_stamp(3600 * 10**9)))
    episodes = _episodes(import_source(sample.path, tmp_path / 'out'))
    assert len(episodes) == 1
    assert episodes[0].stamp_ns.tolist() == sample.frame_ns[:10] + sample.frame_ns[11:]
    assert 'message 10 on /camera/image_raw/compressed' in caplog.text


def test_bag_backward_block_dropped(tmp_path, caplog):
    sample = write_sample_bag(tmp_path / 'bag',
                              edit=_edit_frames({5, 6, 7}, _shift_stamp(-10 * 10**9)))
    episodes = _episodes(import_source(sample.path, tmp_path / 'out'))
    assert [len(e) for e in episodes] == [17]
    assert '3 frame(s) left out because their header stamp is out of order' in caplog.text


def test_bag_reversed_stamps_error(tmp_path):
    def reverse(topic, i, message):
        if topic == CAMERA:
            set_stamp(message, START_NS + (19 - i) * FRAME_PERIOD_NS)
    sample = write_sample_bag(tmp_path / 'bag', edit=reverse)
    with pytest.raises(DataError, match='only 1 of 20 frames have stamps that increase'):
        import_source(sample.path, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() or list((tmp_path / 'out').iterdir()) == []


def _png(frame: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode('.png', image)[1].tobytes()


@pytest.mark.parametrize('damage,reason', [
    (lambda jpeg: jpeg[:len(jpeg) // 2], 'without its end-of-image marker'),
    (lambda jpeg: jpeg[:3] + bytes(range(256)) + b'\xff\xd9', 'cannot decode'),
    (lambda jpeg: b'', 'neither JPEG nor PNG'),
    (lambda jpeg: b'hello, not an image', 'neither JPEG nor PNG'),
    (lambda jpeg: _png(jpeg)[:-40], 'without its IEND chunk'),
], ids=['jpeg_cut', 'jpeg_garbage', 'empty', 'text', 'png_cut'])
def test_bag_damaged_image_skipped(tmp_path, caplog, damage, reason):
    frames = {3, 4}

    def edit(topic, i, message):
        if topic == CAMERA and i in frames:
            message.data = np.frombuffer(damage(bytes(message.data)), np.uint8)
    sample = write_sample_bag(tmp_path / 'bag', edit=edit)
    episode = _episodes(import_source(sample.path, tmp_path / 'out'))[0]
    kept = [stamp for i, stamp in enumerate(sample.frame_ns) if i not in frames]
    assert episode.stamp_ns.tolist() == kept
    assert '2 frame(s) left out because their image is damaged' in caplog.text
    assert f'message 3 on {CAMERA}' in caplog.text
    assert reason in caplog.text


def test_bag_every_image_damaged_error(tmp_path):
    garbage = b'\xff\xd8\xff' + bytes(range(256)) + b'\xff\xd9'
    sample = write_sample_bag(tmp_path / 'bag', edit=_edit_frames(range(20), _set_data(garbage)))
    with pytest.raises(DataError) as error:
        import_source(sample.path, tmp_path / 'out')
    assert str(error.value).startswith(f'bag {sample.path} gave no frames')
    assert '20 frame(s) left out because their image is damaged' in str(error.value)


def test_bag_raw_bad_step_skipped(tmp_path, caplog):
    def bad_step(message):
        message.step = message.width
    sample = write_sample_bag(tmp_path / 'bag', raw_images=True,
                              edit=_edit_frames({2}, bad_step))
    episode = _episodes(import_source(sample.path, tmp_path / 'out'))[0]
    assert len(episode) == 19
    assert 'message 2 on /camera/image_raw' in caplog.text
    assert 'invalid step 32' in caplog.text


def test_bag_undecodable_frame_skipped(tmp_path, caplog):
    def cut(topic, i, data):
        return data[:20] if topic == CAMERA and i == 4 else data
    sample = write_sample_bag(tmp_path / 'bag', damage=cut)
    episode = _episodes(import_source(sample.path, tmp_path / 'out'))[0]
    assert len(episode) == 19
    assert f'1 frame(s) left out because they cannot be deserialised (first: message 4 on ' \
           f'{CAMERA}' in caplog.text


def test_bag_undecodable_command_skipped(tmp_path, caplog):
    def cut(topic, i, data):
        return data[:10] if topic == '/cmd_vel' and i == 7 else data
    sample = write_sample_bag(tmp_path / 'bag', damage=cut)
    episode = _episodes(import_source(sample.path, tmp_path / 'out'))[0]
    assert len(episode) == 20
    assert '1 command message(s) left out because they cannot be deserialised' in caplog.text


@pytest.mark.parametrize('value', [float('nan'), float('inf'), 1e39])
def test_bag_unusable_command_dropped(tmp_path, caplog, value):
    def edit(topic, i, message):
        if topic == '/cmd_vel' and 10 <= i < 20:
            message.angular.z = value
    sample = write_sample_bag(tmp_path / 'bag', edit=edit)
    episode = _episodes(import_source(sample.path, tmp_path / 'out'))[0]
    assert np.isfinite(episode.commands()[episode.valid]).all()
    assert not episode.valid.all()
    assert '10 command message(s) left out because a value is not a finite float32 number ' \
           '(first: message 10 on /cmd_vel' in caplog.text


def test_bag_unusable_imu_dropped(tmp_path, caplog):
    def edit(topic, i, message):
        if topic == '/imu/data' and 40 <= i < 60:
            message.angular_velocity.x = 1e39
    sample = write_sample_bag(tmp_path / 'bag', edit=edit)
    episode = _episodes(import_source(sample.path, tmp_path / 'out'))[0]
    present = episode.imu_status != 'missing'
    assert np.isfinite(episode.imu[present]).all()
    assert '20 IMU message(s) left out because a value is not a finite float32' in caplog.text


def _write_bag_without_frames(path):
    store = get_typestore(Stores.ROS2_KILTED)
    with Rosbag2Writer(path, version=8) as writer:
        writer.add_connection(CAMERA, 'sensor_msgs/msg/CompressedImage', typestore=store)
        writer.add_connection('/cmd_vel', 'geometry_msgs/msg/Twist', typestore=store)


def test_bag_without_frames_error(tmp_path):
    _write_bag_without_frames(tmp_path / 'bag')
    with pytest.raises(DataError, match=f'has no messages on the camera topic {CAMERA}$'):
        import_source(tmp_path / 'bag', tmp_path / 'out')


def test_bag_metadata_count_mismatch_error(tmp_path):
    _write_bag_without_frames(tmp_path / 'bag')
    metadata = tmp_path / 'bag' / 'metadata.yaml'
    text = metadata.read_text()
    # Each topic's count comes just before its name.
    count = text.rindex('message_count: 0', 0, text.index(f'name: {CAMERA}'))
    metadata.write_text(text[:count] + 'message_count: 5' + text[count + 16:])
    with pytest.raises(DataError, match='although its metadata lists 5'):
        import_source(tmp_path / 'bag', tmp_path / 'out')


def test_import_sigterm_removes_episodes(tmp_path):
    # 100 episodes of 30 frames, split by 2 s gaps, so the import is still running when
    # its first episode is finished.
    def gaps(topic, i, message):
        if topic == CAMERA:
            set_stamp(message, stamp_ns(message) + (i // 30) * 2 * 10**9)
    sample = write_sample_bag(tmp_path / 'bag', frames=3000, imu=False, edit=gaps)
    out = tmp_path / 'out'
    returncode, stderr = terminate_when_ready(
        ['import', sample.path, '--out', out], (out / 'episode_0000').is_dir,
        'the first finished episode of the import')
    assert returncode == 128 + signal.SIGTERM, stderr
    assert 'terminated by SIGTERM' in stderr
    assert list(out.iterdir()) == []


def test_import_stores_the_given_command_units(tmp_path):
    from liquid_control.cli.main import main

    bag = tmp_path / 'bag'
    write_sample_bag(bag)
    out = tmp_path / 'out'
    assert main(['import', str(bag), '--out', str(out), '--angular-unit',
                 'normalised (-1..1)']) == 0
    commands = find_episodes(out)[0].metadata['commands']
    assert commands['angular_z']['unit'] == 'normalised (-1..1)'
    assert commands['linear_x']['unit'] == 'm/s'
