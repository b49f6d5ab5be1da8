"""liquid-control dataset check and repair on real episode folders with damaged files."""

import csv
import json
import math
import signal

import cv2
import numpy as np
import pytest

from liquid_control.cli.main import main
from liquid_control.data.check import check_dataset, repair_dataset
from liquid_control.data.episodes import (EncodedImage, Episode, EpisodeWriter, FrameLabels,
                                          find_episodes)
from liquid_control.errors import DataError

from bag_samples import write_sample_bag
from conftest import terminate_when_ready

RNG = np.random.default_rng(7)


def _noise_jpeg(width=32, height=24) -> bytes:
    image = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.imencode('.jpg', image)[1].tobytes()


def _labels(i: int) -> FrameLabels:
    # Values that float32 cannot hold exactly, to see that a copy keeps every digit.
    return FrameLabels(
        imu=np.array([0.1 * i, 1 / 3, math.nan, 0.2, 9.80665, -1e-7]), imu_status='nearest',
        linear_x=0.43610583819086274 + i, angular_z=-1 / 7, command_status='ok',
        command_age_s=0.001)


def _write_episode(folder, frames=12, finish=True, first_stamp=0):
    writer = EpisodeWriter(folder, {'source': {'kind': 'test'}})
    for i in range(frames):
        writer.add(first_stamp + i * 50_000_000, EncodedImage(_noise_jpeg(), 'jpg'), _labels(i))
    return writer.close('stop service') if finish else writer.partial_dir


def _rows(folder):
    with open(folder / 'rows.csv', newline='') as stream:
        return list(csv.DictReader(stream))


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / 'data'
    _write_episode(folder)
    _write_episode(folder, first_stamp=10**10)
    return folder


def test_check_clean_dataset(dataset, capsys):
    assert main(['dataset', 'check', str(dataset)]) == 0
    output = capsys.readouterr().out
    assert 'episode_0000: 12 frames, 12 with a valid command, ok' in output
    assert '2 episode(s), 24 frames: 0 error(s), 0 warning(s)' in output


def test_check_lists_damaged_frames(dataset, capsys):
    frames = dataset / 'episode_0001' / 'frames'
    data = (frames / '000003.jpg').read_bytes()
    (frames / '000003.jpg').write_bytes(data[:len(data) // 2])
    (frames / '000005.jpg').unlink()
    (frames / '000007.jpg').write_bytes(b'not an image')

    assert main(['dataset', 'check', str(dataset)]) == 1
    output = capsys.readouterr().out
    assert 'episode_0000: 12 frames, 12 with a valid command, ok' in output
    assert 'damaged: frame 3 (frames/000003.jpg): ' in output
    assert 'without its end-of-image marker' in output
    assert 'damaged: frame 5 (frames/000005.jpg): the frame file is missing' in output
    assert 'damaged: frame 7 (frames/000007.jpg): ' in output
    assert '3 error(s)' in output
    assert 'liquid-control dataset repair' in output

    assert main(['dataset', 'check', str(dataset), '--json']) == 1
    report = json.loads(capsys.readouterr().out)
    assert report['errors'] == 3
    damaged = report['episodes'][1]['damaged_frames']
    assert [frame['index'] for frame in damaged] == [3, 5, 7]


def test_check_warnings_keep_exit_code_zero(tmp_path, capsys):
    folder = tmp_path / 'data'
    writer = EpisodeWriter(folder, {'source': {'kind': 'test'}})
    frozen = _noise_jpeg()
    blank = cv2.imencode('.jpg', np.full((24, 32, 3), 90, np.uint8))[1].tobytes()
    images = [_noise_jpeg(), frozen, frozen, frozen, blank, _noise_jpeg(64, 48), _noise_jpeg()]
    for i, image in enumerate(images):
        writer.add(i * 50_000_000, EncodedImage(image, 'jpg'), FrameLabels())
    episode = writer.close()
    (episode / 'frames' / 'left_over.jpg').write_bytes(frozen)
    _write_episode(folder, finish=False, first_stamp=10**10)

    assert main(['dataset', 'check', str(folder)]) == 0
    output = capsys.readouterr().out
    assert 'no frame has a valid command' in output
    assert 'identical frames (frames 1-3)' in output
    assert '1 blank frame(s)' in output
    assert "1 frame(s) differ from the first frame's 32x24 (first: frame 5, 64x48)" in output
    assert '1 file(s) in frames/ that no row names' in output
    assert 'episode_0001.partial: 12 frames' in output
    assert 'unfinished: left by a crash or still being written' in output
    assert '0 error(s), 6 warning(s)' in output


def test_check_unreadable_episode_and_others(dataset, capsys):
    (dataset / 'episode_0000' / 'metadata.json').write_text('{"format_version": ')
    checks = check_dataset(dataset)
    assert len(checks) == 2
    assert 'metadata.json is unreadable' in checks[0].error
    assert checks[1].error is None
    assert checks[1].frames == 12
    assert main(['dataset', 'check', str(dataset)]) == 1
    assert 'episode_0000: cannot be read: ' in capsys.readouterr().out


def test_check_rejects_tub_and_missing_folder(shared_data, tmp_path, capsys):
    assert main(['dataset', 'check', str(shared_data / 'donkey_indoor_train_tub')]) == 2
    assert 'is a donkeycar tub, not a folder of episodes' in capsys.readouterr().err
    assert main(['dataset', 'check', str(tmp_path / 'absent')]) == 2
    assert 'not found' in capsys.readouterr().err


def test_check_rejects_zero_workers(dataset, capsys):
    assert main(['dataset', 'check', str(dataset), '--workers', '0']) == 2
    assert '--workers 0 is invalid: use 1 or more threads' in capsys.readouterr().err


def test_load_frame_error_names_check(dataset):
    (dataset / 'episode_0000' / 'frames' / '000002.jpg').write_bytes(b'x')
    with pytest.raises(DataError, match='liquid-control dataset check'):
        Episode(dataset / 'episode_0000').load_frame(2)


def test_repair_leaves_out_damaged_frames(dataset, tmp_path, capsys):
    source = dataset / 'episode_0001'
    (source / 'frames' / '000004.jpg').write_bytes(b'\xff\xd8broken')
    partial = _write_episode(dataset, frames=5, finish=False, first_stamp=2 * 10**10)
    before = {path: path.read_bytes() for path in dataset.rglob('*') if path.is_file()}
    out = tmp_path / 'repaired'

    assert main(['dataset', 'repair', str(dataset), '--out', str(out)]) == 0
    output = capsys.readouterr().out
    assert 'episode_0001 -> ' in output
    assert '11 frames, left out: 4' in output
    assert 'wrote 3 episode(s)' in output
    # The source is unchanged.
    assert {path: path.read_bytes() for path in dataset.rglob('*') if path.is_file()} == before

    episodes = find_episodes(out)
    assert [episode.name for episode in episodes] == ['episode_0000', 'episode_0001',
                                                      'episode_0002']
    assert [len(episode) for episode in episodes] == [12, 11, 5]
    assert all(episode.finished for episode in episodes)
    assert check_dataset(out)[1].errors == 0

    # Rows keep every stored digit. Only the index and the frame file names change.
    source_rows = [row for i, row in enumerate(_rows(source)) if i != 4]
    copied_rows = _rows(out / 'episode_0001')
    assert len(copied_rows) == len(source_rows)
    for source_row, copied_row in zip(source_rows, copied_rows):
        for column in ('stamp_ns', 'angular_velocity_x', 'angular_velocity_y', 'linear_x',
                       'angular_z', 'command_age_s', 'imu_status', 'valid'):
            assert copied_row[column] == source_row[column], column
    assert _rows(out / 'episode_0000') == _rows(dataset / 'episode_0000')
    for index, source_index in enumerate([0, 1, 2, 3, 5]):
        copied = (out / 'episode_0001' / copied_rows[index]['frame']).read_bytes()
        original = (source / source_rows[index]['frame']).read_bytes()
        assert copied == original
        assert source_rows[index]['index'] == str(source_index)

    repaired_from = episodes[1].metadata['repaired_from']
    assert repaired_from['folder'] == str(source.resolve())
    assert [frame['index'] for frame in repaired_from['left_out_frames']] == [4]
    assert repaired_from['left_out_frames'][0]['stamp_ns'] == 4 * 50_000_000 + 10**10
    assert episodes[1].metadata['source'] == {'kind': 'test'}
    assert episodes[1].metadata['end_reason'] == 'stop service'
    unfinished = episodes[2].metadata
    assert unfinished['repaired_from']['folder'] == str(partial.resolve())
    assert unfinished['repaired_from']['finished'] is False
    assert unfinished['end_reason'] == 'repaired copy of an unfinished episode'


def test_repair_skips_unreadable_episode(dataset, tmp_path):
    (dataset / 'episode_0000' / 'rows.csv').write_text('index,stamp_ns\n0,abc\n')
    results = repair_dataset(dataset, tmp_path / 'out')
    assert results[0].skipped.startswith('cannot be read: ')
    assert results[0].folder is None
    assert results[1].frames == 12
    assert [episode.name for episode in find_episodes(tmp_path / 'out')] == ['episode_0001']


@pytest.mark.parametrize('inside', ['same', 'episode', 'existing'])
def test_repair_rejects_output_folder(dataset, inside):
    out = {'same': dataset, 'episode': dataset / 'episode_0000' / 'copy',
           'existing': dataset.parent / 'existing'}[inside]
    if inside == 'existing':
        _write_episode(out)
    with pytest.raises(DataError, match='--out|already exists'):
        repair_dataset(dataset, out)


def test_repair_interrupt_deletes_copies(dataset, tmp_path, monkeypatch):
    from liquid_control.data import check

    original = check.check_episode
    calls = []

    def interrupt_second(folder, workers=2):
        calls.append(folder)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(folder, workers)

    monkeypatch.setattr(check, 'check_episode', interrupt_second)
    out = tmp_path / 'out'
    with pytest.raises(KeyboardInterrupt):
        repair_dataset(dataset, out)
    assert list(out.iterdir()) == []


def test_train_sigterm_removes_staging_import(tmp_path):
    # An import on the fly writes into a staging folder of the cache. A stop signal during
    # that import leaves neither the staging folder nor a model behind.
    bag = write_sample_bag(tmp_path / 'bag', frames=3000, imu=False).path
    cache = tmp_path / 'cache'
    model = tmp_path / 'model.lcm'
    returncode, stderr = terminate_when_ready(
        ['train', bag, '--out', model, '--cache-dir', cache, '--epochs', '1'],
        lambda: list(cache.glob('.*/episode_0000*')), 'an episode of the import on the fly',
        timeout=120)
    assert returncode == 128 + signal.SIGTERM, stderr
    assert 'liquid-control train: terminated by SIGTERM' in stderr
    assert list(cache.iterdir()) == []
    assert not model.exists()
