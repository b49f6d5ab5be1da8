"""Episode format: writer, reader, crash safety, windows and label matching."""

import json
import logging
import math

import cv2
import numpy as np
import pytest

from liquid_control.data.episodes import (COLUMNS, FORMAT_VERSION, EncodedImage, Episode,
                                          EpisodeWriter, FrameLabels, find_episodes,
                                          image_extension)
from liquid_control.data.sync import LabelOptions, match_commands, match_imu
from liquid_control.errors import ConfigError, DataError

PERIOD_NS = 50_000_000


def _jpeg(value: int) -> bytes:
    image = np.full((12, 16, 3), value, np.uint8)
    return cv2.imencode('.jpg', image)[1].tobytes()


def _labels(i: int, with_command: bool = True) -> FrameLabels:
    if not with_command:
        return FrameLabels(imu=None)
    return FrameLabels(imu=np.arange(6, dtype=np.float64) + i, imu_status='interpolated',
                       linear_x=0.1 * i, angular_z=-0.2 * i, command_status='ok',
                       command_age_s=0.001)


def _write_episode(dataset, stamps_ns, invalid=(), close=True):
    writer = EpisodeWriter(dataset, {'source': {'kind': 'test'}})
    for i, stamp in enumerate(stamps_ns):
        writer.add(stamp, EncodedImage(_jpeg(i), 'jpg'), _labels(i, i not in invalid))
    return writer.close('test') if close else writer


def test_writer_reader_round_trip(tmp_path):
    stamps = [1_000_000_000 + i * PERIOD_NS for i in range(5)]
    folder = _write_episode(tmp_path, stamps, invalid={3})
    episode = Episode(folder)

    assert len(episode) == 5
    assert episode.finished
    assert episode.metadata['format_version'] == FORMAT_VERSION
    assert episode.metadata['frame_count'] == 5
    assert np.array_equal(episode.stamp_ns, stamps)
    assert np.allclose(episode.timestamps, np.array(stamps) * 1e-9)
    assert episode.command('linear_x')[2] == pytest.approx(0.2)
    assert episode.command('angular_z')[2] == pytest.approx(-0.4)
    assert math.isnan(episode.command('linear_x')[3])
    assert episode.valid.tolist() == [True, True, True, False, True]
    assert np.allclose(episode.imu[1], np.arange(6) + 1)
    assert np.all(np.isnan(episode.imu[3]))
    assert episode.imu_status[3] == 'missing'
    assert episode.has_imu
    assert episode.has_commands


def test_writer_stores_compressed_bytes_unchanged(tmp_path):
    data = _jpeg(77)
    writer = EpisodeWriter(tmp_path, {})
    writer.add(1, EncodedImage(data, image_extension(data)), _labels(0))
    episode = Episode(writer.close())
    assert episode.frame_path(0).suffix == '.jpg'
    assert episode.frame_path(0).read_bytes() == data
    assert episode.metadata['image_size'] == [16, 12]


def test_writer_raw_png_is_lossless(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    writer = EpisodeWriter(tmp_path, {})
    writer.add(1, rgb, _labels(0))
    episode = Episode(writer.close())
    assert episode.frame_path(0).suffix == '.png'
    assert np.array_equal(episode.load_frame(0), rgb)


def test_writer_raw_jpeg_option(tmp_path):
    rgb = np.full((30, 40, 3), (200, 100, 50), np.uint8)
    writer = EpisodeWriter(tmp_path, {}, image_format='jpeg', jpeg_quality=95)
    writer.add(1, rgb, _labels(0))
    episode = Episode(writer.close())
    assert episode.frame_path(0).suffix == '.jpg'
    assert np.abs(episode.load_frame(0).astype(int) - rgb).max() <= 3


def test_writer_partial_until_closed(tmp_path):
    writer = _write_episode(tmp_path, [1, 2], close=False)
    assert writer.partial_dir.name == 'episode_0000.partial'
    assert not writer.final_dir.exists()
    assert json.loads((writer.partial_dir / 'metadata.json').read_text())['finished'] is False
    final = writer.close()
    assert final.name == 'episode_0000'
    assert not writer.partial_dir.exists()
    assert json.loads((final / 'metadata.json').read_text())['finished'] is True


def test_writer_numbers_episodes_in_order(tmp_path):
    first = _write_episode(tmp_path, [1])
    second = _write_episode(tmp_path, [1])
    assert [first.name, second.name] == ['episode_0000', 'episode_0001']


def test_writer_never_reopens_finished_episode(tmp_path):
    _write_episode(tmp_path, [1])
    with pytest.raises(DataError, match='never reopened'):
        EpisodeWriter(tmp_path, {}, name='episode_0000')


def test_writer_rejects_non_increasing_stamp(tmp_path):
    writer = EpisodeWriter(tmp_path, {})
    writer.add(10, EncodedImage(_jpeg(0), 'jpg'), _labels(0))
    with pytest.raises(DataError, match='does not increase'):
        writer.add(10, EncodedImage(_jpeg(1), 'jpg'), _labels(1))
    assert len(writer) == 1


def test_writer_deletes_empty_episode(tmp_path):
    writer = EpisodeWriter(tmp_path, {})
    assert writer.close() is None
    assert list(tmp_path.iterdir()) == []


def test_writer_abort_removes_folder(tmp_path):
    writer = _write_episode(tmp_path, [1, 2], close=False)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_partial_episode_reads_complete_rows(tmp_path):
    writer = _write_episode(tmp_path, [1, 2, 3], close=False)
    # Simulate a write cut off by a crash: half a row, no newline.
    with open(writer.partial_dir / 'rows.csv', 'a') as stream:
        stream.write('3,4,frames/000003.jpg,1.0,2')
    episode = Episode(writer.partial_dir)
    assert not episode.finished
    assert len(episode) == 3
    assert any('cut off' in note for note in episode.notes)


def test_partial_episode_stops_at_missing_frame(tmp_path):
    writer = _write_episode(tmp_path, [1, 2, 3], close=False)
    (writer.partial_dir / 'frames' / '000002.jpg').unlink()
    episode = Episode(writer.partial_dir)
    assert len(episode) == 2
    assert any('000002.jpg' in note for note in episode.notes)


def test_find_episodes_skips_partial(tmp_path, caplog):
    _write_episode(tmp_path, [1, 2])
    _write_episode(tmp_path, [1, 2], close=False)
    with caplog.at_level(logging.WARNING):
        episodes = find_episodes(tmp_path)
    assert [e.name for e in episodes] == ['episode_0000']
    assert 'episode_0001.partial' in caplog.text
    assert len(find_episodes(tmp_path, include_partial=True)) == 2


def test_find_episodes_single_folder(tmp_path):
    folder = _write_episode(tmp_path, [1, 2])
    assert [e.folder for e in find_episodes(folder)] == [folder]


def test_find_episodes_empty_folder_error(tmp_path):
    with pytest.raises(DataError, match='no finished episodes'):
        find_episodes(tmp_path)


def test_episode_newer_format_rejected(tmp_path):
    folder = _write_episode(tmp_path, [1])
    metadata = json.loads((folder / 'metadata.json').read_text())
    metadata['format_version'] = FORMAT_VERSION + 1
    (folder / 'metadata.json').write_text(json.dumps(metadata))
    with pytest.raises(DataError, match='format_version'):
        Episode(folder)


def test_episode_damaged_finished_row_rejected(tmp_path):
    folder = _write_episode(tmp_path, [1, 2])
    with open(folder / 'rows.csv', 'a') as stream:
        stream.write('2,3,frames/000002.jpg\n')
    with pytest.raises(DataError, match='line 4'):
        Episode(folder)


def test_rows_csv_has_documented_columns(tmp_path):
    folder = _write_episode(tmp_path, [1])
    header = (folder / 'rows.csv').read_text().splitlines()[0].split(',')
    assert tuple(header) == COLUMNS


def test_windows_never_cross_gap(tmp_path):
    first = [i * PERIOD_NS for i in range(10)]
    second = [2_000_000_000 + i * PERIOD_NS for i in range(6)]
    stamps = first + second
    episode = Episode(_write_episode(tmp_path, stamps))
    windows = episode.windows(length=4)
    assert len(windows) == 7 + 3
    for window in windows:
        assert np.all(np.diff(episode.timestamps[window]) < 0.06)


def test_windows_skip_invalid_frames(tmp_path):
    stamps = [i * PERIOD_NS for i in range(10)]
    episode = Episode(_write_episode(tmp_path, stamps, invalid={4}))
    windows = episode.windows(length=3)
    assert all(4 not in window for window in windows)
    assert len(windows) == 2 + 3
    assert len(episode.windows(length=3, require_valid=False)) == 8


def test_windows_stride_and_explicit_gap(tmp_path):
    stamps = [0, 50, 100, 150, 300, 350, 400]
    episode = Episode(_write_episode(tmp_path, [s * 1_000_000 for s in stamps]))
    assert [w.tolist() for w in episode.windows(2, stride=2, max_gap_s=0.1)] == [
        [0, 1], [2, 3], [4, 5]]
    assert len(episode.windows(7, max_gap_s=0.2)) == 1


def test_windows_invalid_length(tmp_path):
    episode = Episode(_write_episode(tmp_path, [1, 2]))
    with pytest.raises(DataError, match='window length'):
        episode.windows(0)


def test_window_dt_first_step(tmp_path):
    stamps = [0, 50, 100, 1000, 1050]
    episode = Episode(_write_episode(tmp_path, [s * 1_000_000 for s in stamps]))
    assert np.allclose(episode.window_dt(np.array([1, 2])), [0.05, 0.05])
    assert np.allclose(episode.window_dt(np.array([3, 4])), [0.05, 0.05])
    assert np.allclose(episode.window_dt(np.array([0, 1])), [0.05, 0.05])


def test_match_commands_nearest_and_latest():
    frames = np.array([100, 200, 300, 400]) * 1_000_000
    commands = np.array([101, 199, 500]) * 1_000_000
    values = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])

    nearest, age, matched = match_commands(frames, commands, values, 'nearest', 0.02)
    assert matched.tolist() == [True, True, False, False]
    assert nearest[0].tolist() == [1.0, 10.0]
    assert age[0] == pytest.approx(-0.001)
    assert nearest[1].tolist() == [2.0, 20.0]

    latest, age, matched = match_commands(frames, commands, values, 'latest', 0.02)
    assert matched.tolist() == [False, True, False, False]
    assert age[1] == pytest.approx(0.001)
    latest, _, matched = match_commands(frames, commands, values, 'latest', 0.25)
    assert matched.tolist() == [False, True, True, True]
    assert latest[2].tolist() == [2.0, 20.0]


def test_match_imu_interpolates_within_tolerance():
    imu_ns = np.array([0, 10, 20, 100]) * 1_000_000
    imu_values = np.array([[0.0] * 6, [1.0] * 6, [2.0] * 6, [9.0] * 6])
    frames = np.array([5, 20, 60, 98, 300]) * 1_000_000
    imu, status = match_imu(frames, imu_ns, imu_values, 'interpolate', 0.01)
    assert status.tolist() == ['interpolated', 'nearest', 'missing', 'nearest', 'missing']
    assert imu[0, 0] == pytest.approx(0.5)
    assert imu[1, 0] == 2.0
    assert imu[3, 0] == 9.0
    assert np.all(np.isnan(imu[2]))

    imu, status = match_imu(frames, imu_ns, imu_values, 'nearest', 0.01)
    assert status[0] == 'nearest'
    assert imu[0, 0] in (0.0, 1.0)


def test_label_options_reject_invalid_values():
    with pytest.raises(ConfigError, match='command_match'):
        LabelOptions(command_match='previous')
    with pytest.raises(ConfigError, match='imu_tolerance_s'):
        LabelOptions(imu_tolerance_s=-1)
    with pytest.raises(ConfigError, match='unknown label option'):
        LabelOptions.from_kwargs(speed=1)


def _edit_row(folder, row_number, column, value):
    lines = (folder / 'rows.csv').read_text().splitlines()
    header = lines[0].split(',')
    fields = lines[row_number].split(',')
    fields[header.index(column)] = value
    lines[row_number] = ','.join(fields)
    (folder / 'rows.csv').write_text('\n'.join(lines) + '\n')


@pytest.mark.parametrize('column,value,message', [
    ('frame', '/etc/hostname', 'not a file name inside'),
    ('frame', '../../outside.jpg', 'not a file name inside'),
    ('linear_x', 'inf', 'valid'),
    ('linear_x', 'nan', 'valid'),
    ('angular_z', '', 'valid'),
    ('valid', 'yes', "valid is 'yes', expected 0 or 1"),
    ('stamp_ns', str(2 ** 70), 'outside the 64-bit range|invalid'),
    ('stamp_ns', '1', 'line 3: stamp_ns 1 does not follow 1'),
])
def test_episode_damaged_row_value_rejected(tmp_path, column, value, message):
    folder = _write_episode(tmp_path, [1, 2, 3])
    _edit_row(folder, 2, column, value)
    with pytest.raises(DataError, match=message):
        Episode(folder)


def test_episode_non_utf8_rows_rejected(tmp_path):
    folder = _write_episode(tmp_path, [1, 2])
    with open(folder / 'rows.csv', 'ab') as stream:
        stream.write(b'\xff\xfe\n')
    with pytest.raises(DataError, match='not UTF-8'):
        Episode(folder)


def test_episode_metadata_not_object_rejected(tmp_path):
    folder = _write_episode(tmp_path, [1, 2])
    (folder / 'metadata.json').write_text('[1, 2]')
    with pytest.raises(DataError, match='not a JSON object'):
        Episode(folder)


def test_episode_lost_rows_rejected(tmp_path):
    folder = _write_episode(tmp_path, [1, 2, 3])
    lines = (folder / 'rows.csv').read_text().splitlines(keepends=True)
    (folder / 'rows.csv').write_text(''.join(lines[:-1]))
    with pytest.raises(DataError, match='has 2 rows but metadata.json says frame_count 3'):
        Episode(folder)


@pytest.mark.parametrize('version', [None, 0, True, '1'])
def test_episode_bad_format_version_rejected(tmp_path, version):
    folder = _write_episode(tmp_path, [1])
    metadata = json.loads((folder / 'metadata.json').read_text())
    metadata['format_version'] = version
    (folder / 'metadata.json').write_text(json.dumps(metadata))
    with pytest.raises(DataError, match='expected a whole number from 1'):
        Episode(folder)


def test_find_episodes_names_missing_metadata(tmp_path):
    _write_episode(tmp_path, [1])
    folder = _write_episode(tmp_path, [1])
    (folder / 'metadata.json').unlink()
    with pytest.raises(DataError, match='episode_0001 is not an episode: metadata.json is '
                       'missing'):
        find_episodes(tmp_path)


def test_writer_command_beyond_float32_is_invalid(tmp_path):
    writer = EpisodeWriter(tmp_path, {})
    labels = FrameLabels(linear_x=0.5, angular_z=1e39, command_status='ok')
    writer.add(1, EncodedImage(_jpeg(0), 'jpg'), labels)
    episode = Episode(writer.close('test'))
    assert episode.valid.tolist() == [False]


@pytest.mark.parametrize('imu_value', [1e39, math.inf])
def test_writer_rejects_imu_beyond_float32(tmp_path, imu_value):
    writer = EpisodeWriter(tmp_path, {})
    labels = FrameLabels(imu=np.array([0.0, 0.0, imu_value, 0.0, 0.0, 9.8]),
                         imu_status='recorded')
    with pytest.raises(DataError, match='beyond float32'):
        writer.add(1, EncodedImage(_jpeg(0), 'jpg'), labels)
    assert len(writer) == 0


@pytest.mark.parametrize('stamp', [-1, 2 ** 63])
def test_writer_rejects_stamp_outside_int64(tmp_path, stamp):
    writer = EpisodeWriter(tmp_path, {})
    with pytest.raises(DataError, match='is outside 0..'):
        writer.add(stamp, EncodedImage(_jpeg(0), 'jpg'), _labels(0))
    assert len(writer) == 0
