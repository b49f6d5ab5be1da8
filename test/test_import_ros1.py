"""ROS 1 bag import and command message types, on small bags written with rosbags."""

import numpy as np
import pytest

from liquid_control.data.episodes import find_episodes
from liquid_control.data.sources import import_source, load_episodes, source_kind
from liquid_control.data.sync import LabelOptions
from liquid_control.errors import DataError

from bag_samples import set_stamp, stamp_ns, write_sample_bag


def _only_episode(folders):
    assert len(folders) == 1
    return find_episodes(folders[0])[0]


def _expected_command(sample, stamp_ns, match='nearest'):
    """Return the sample command that a frame at ``stamp_ns`` should get."""
    stamps = np.array(sample.command_ns)
    before = np.flatnonzero(stamps <= stamp_ns)
    after = np.flatnonzero(stamps > stamp_ns)
    candidates = [before[-1]] if before.size else []
    if match == 'nearest' and after.size:
        candidates.append(after[0])
    best = min(candidates, key=lambda k: abs(stamps[k] - stamp_ns))
    return sample.commands[best]


def _check_commands(episode, sample, linear_sign=1.0, angular_sign=1.0):
    for i, stamp in enumerate(episode.stamp_ns):
        forward, turn = _expected_command(sample, int(stamp))
        assert episode.command('linear_x')[i] == pytest.approx(linear_sign * forward, abs=1e-6)
        assert episode.command('angular_z')[i] == pytest.approx(angular_sign * turn, abs=1e-6)


def test_ros1_bag_import(tmp_path):
    sample = write_sample_bag(tmp_path / 'drive.bag', ros1=True)
    assert source_kind(sample.path) == 'ros1_bag'
    episode = _only_episode(import_source(sample.path, tmp_path / 'out'))

    assert len(episode) == len(sample.frames)
    assert episode.stamp_ns.tolist() == sample.frame_ns
    assert episode.frame_path(5).read_bytes() == sample.frames[5]
    assert episode.valid.all()
    assert episode.metadata['source']['kind'] == 'ros1_bag'
    _check_commands(episode, sample)


def test_ros1_bag_imu_interpolated(tmp_path):
    sample = write_sample_bag(tmp_path / 'drive.bag', ros1=True)
    episode = _only_episode(import_source(sample.path, tmp_path / 'out'))
    assert episode.has_imu
    seconds = (episode.stamp_ns - sample.frame_ns[0]) * 1e-9
    assert np.allclose(episode.imu[:, 2], seconds, atol=1e-6)
    assert np.allclose(episode.imu[:, 5], 9.8, atol=1e-5)


def test_ros1_truncated_bag_error(tmp_path):
    sample = write_sample_bag(tmp_path / 'drive.bag', ros1=True)
    data = sample.path.read_bytes()
    truncated = tmp_path / 'truncated.bag'
    truncated.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(DataError, match='truncated.bag'):
        import_source(truncated, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() or list((tmp_path / 'out').iterdir()) == []


def test_twist_stamped_import(tmp_path):
    sample = write_sample_bag(tmp_path / 'bag', command_type='twist_stamped')
    episode = _only_episode(import_source(sample.path, tmp_path / 'out'))
    assert episode.metadata['commands']['linear_x']['source'] == 'twist.linear.x'
    _check_commands(episode, sample)


def test_joy_import_axes_and_scales(tmp_path):
    sample = write_sample_bag(tmp_path / 'bag', command_type='joy', storage='mcap')
    options = LabelOptions(joy_linear_axis=1, joy_angular_axis=0, linear_scale=2.0,
                           angular_scale=-1.0)
    episode = _only_episode(import_source(sample.path, tmp_path / 'out', options))
    assert episode.metadata['commands']['angular_z'] == {
        'source': 'axes[0]', 'scale': -1.0, 'unit': 'joystick axis (-1..1) times scale'}
    _check_commands(episode, sample, linear_sign=2.0, angular_sign=-1.0)


def test_latest_match_uses_previous_command(tmp_path):
    sample = write_sample_bag(tmp_path / 'bag')
    options = LabelOptions(command_match='latest')
    episode = _only_episode(import_source(sample.path, tmp_path / 'out', options))
    # The first frame comes before every command.
    assert not episode.valid[0]
    forward, _ = _expected_command(sample, int(episode.stamp_ns[1]), match='latest')
    assert episode.command('linear_x')[1] == pytest.approx(forward)
    assert episode.command_age_s[1] == pytest.approx(0.007)


def test_invalid_frames_skip(tmp_path):
    sample = write_sample_bag(tmp_path / 'bag')
    options = LabelOptions(command_match='latest', invalid_frames='skip')
    episode = _only_episode(import_source(sample.path, tmp_path / 'out', options))
    assert len(episode) == len(sample.frames) - 1
    assert episode.valid.all()


def test_ambiguous_command_topics_error(tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_KILTED)
    sample = write_sample_bag(tmp_path / 'bag')
    # Add a second Twist topic by writing a new bag with both.
    path = tmp_path / 'two_commands'
    with Writer(path, version=8) as writer:
        for topic in ('/cmd_vel', '/teleop/cmd_vel'):
            writer.add_connection(topic, 'geometry_msgs/msg/Twist', typestore=store)
        writer.add_connection('/camera/image_raw/compressed',
                              'sensor_msgs/msg/CompressedImage', typestore=store)
    with pytest.raises(DataError, match='several command topics'):
        import_source(path, tmp_path / 'out')
    assert sample.path.exists()


def test_load_episodes_imports_bag(tmp_path):
    sample = write_sample_bag(tmp_path / 'bag')
    episodes = load_episodes(sample.path, cache_dir=tmp_path / 'cache', command_match='nearest')
    assert [len(e) for e in episodes] == [len(sample.frames)]
    with pytest.raises(DataError, match='not found'):
        load_episodes(sample.path, cache_dir=tmp_path / 'cache', command_topic='/teleop')


def test_ros1_undecodable_frame_skipped(tmp_path, caplog):
    def cut(topic, i, data):
        return data[:10] if topic == '/camera/image_raw/compressed' and i == 6 else data
    sample = write_sample_bag(tmp_path / 'drive.bag', ros1=True, damage=cut)
    episode = _only_episode(import_source(sample.path, tmp_path / 'out'))
    assert episode.stamp_ns.tolist() == sample.frame_ns[:6] + sample.frame_ns[7:]
    assert 'message 6 on /camera/image_raw/compressed' in caplog.text


def test_ros1_future_stamp_costs_one_frame(tmp_path, caplog):
    def future(topic, i, message):
        if topic == '/camera/image_raw/compressed' and i == 12:
            set_stamp(message, stamp_ns(message) + 3600 * 10**9)
    sample = write_sample_bag(tmp_path / 'drive.bag', ros1=True, edit=future)
    episode = _only_episode(import_source(sample.path, tmp_path / 'out'))
    assert episode.stamp_ns.tolist() == sample.frame_ns[:12] + sample.frame_ns[13:]
    assert '1 frame(s) left out because their header stamp is out of order' in caplog.text
