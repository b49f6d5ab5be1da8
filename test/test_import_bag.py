"""rosbag2 import: the real EuRoC MCAP bag, topic selection, and damaged bags."""

import numpy as np
import pytest

from liquid_control.data.bags import BagReader
from liquid_control.data.episodes import find_episodes
from liquid_control.data.images import decode_raw
from liquid_control.data.sources import import_source
from liquid_control.data.sync import LabelOptions
from liquid_control.errors import DataError

from conftest import SHARED_DATA

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
