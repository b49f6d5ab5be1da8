"""liquid-control import and dataset info, in-process and as the installed command."""

import json
import subprocess

import cv2
import numpy as np
import pytest

from liquid_control.cli.main import main
from liquid_control.data.episodes import EncodedImage, EpisodeWriter, FrameLabels

from conftest import SHARED_DATA, VENV_BIN

JPEG = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8))[1].tobytes()


def _write_dataset(folder, finish_last=True):
    """Two episodes at 10 Hz; the first has a 1 s gap after frame 4."""
    stamps = [[0, 100, 200, 300, 400, 1400, 1500], [5000, 5100, 5200]]
    commands = [[(0.5, 0.1), (0.5, -0.1), (1.0, 0.0), (1.0, 0.2), (0.5, 0.0),
                 (0.0, 0.0), (0.5, -0.2)], [(1.0, 1.0), (1.0, 1.0), (None, None)]]
    for number, (episode_stamps, episode_commands) in enumerate(zip(stamps, commands)):
        writer = EpisodeWriter(folder, {'source': {'kind': 'test'}})
        for stamp, (linear, angular) in zip(episode_stamps, episode_commands):
            labels = FrameLabels() if linear is None else FrameLabels(
                linear_x=linear, angular_z=angular, command_status='ok', command_age_s=0.0)
            writer.add(stamp * 1_000_000, EncodedImage(JPEG, 'jpg'), labels)
        if number == 0 or finish_last:
            writer.close()
    return folder


def test_dataset_info_json(tmp_path, capsys):
    folder = _write_dataset(tmp_path / 'data')
    assert main(['dataset', 'info', str(folder), '--json']) == 0
    statistics = json.loads(capsys.readouterr().out)

    assert statistics['episodes'] == 2
    assert statistics['frames'] == 10
    assert statistics['valid_frames'] == 9
    assert statistics['duration_s'] == pytest.approx(1.5 + 0.2)
    assert statistics['rate_hz'] == pytest.approx(10.0)
    assert statistics['gaps'] == 1
    assert statistics['per_episode'][0]['gaps'] == [{'after_frame': 4,
                                                     'seconds': pytest.approx(1.0)}]
    assert statistics['between_episodes'][0]['seconds'] == pytest.approx(3.5)

    linear = [0.5, 0.5, 1.0, 1.0, 0.5, 0.0, 0.5, 1.0, 1.0]
    angular = [0.1, -0.1, 0.0, 0.2, 0.0, 0.0, -0.2, 1.0, 1.0]
    for name, values in (('linear_x', linear), ('angular_z', angular)):
        field = statistics['commands'][name]
        assert field['count'] == 9
        assert field['mean'] == pytest.approx(np.mean(values), abs=1e-6)
        assert field['std'] == pytest.approx(np.std(values), abs=1e-6)
        assert field['min'] == pytest.approx(min(values))
        assert field['max'] == pytest.approx(max(values))


def test_dataset_info_text(tmp_path, capsys):
    folder = _write_dataset(tmp_path / 'data')
    assert main(['dataset', 'info', str(folder)]) == 0
    output = capsys.readouterr().out
    assert 'frames: 10 (9 with a valid command, 0 with IMU)' in output
    assert 'rate: 10.00 Hz' in output
    assert '1.00 s after frame 4' in output
    assert 'linear_x: mean +0.6667' in output


def test_dataset_info_partial_episodes(tmp_path, capsys):
    folder = _write_dataset(tmp_path / 'data', finish_last=False)
    assert main(['dataset', 'info', str(folder), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['episodes'] == 1
    assert main(['dataset', 'info', str(folder), '--json', '--include-partial']) == 0
    statistics = json.loads(capsys.readouterr().out)
    assert statistics['episodes'] == 2
    assert statistics['per_episode'][1]['finished'] is False


def test_dataset_info_source_not_object(tmp_path, capsys):
    writer = EpisodeWriter(tmp_path / 'data', {'source': None})
    writer.add(0, EncodedImage(JPEG, 'jpg'), FrameLabels())
    writer.close()
    assert main(['dataset', 'info', str(tmp_path / 'data'), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['per_episode'][0]['source'] is None


def test_dataset_info_missing_folder(tmp_path, capsys):
    assert main(['dataset', 'info', str(tmp_path / 'absent')]) == 2
    assert 'absent not found' in capsys.readouterr().err


def test_dataset_info_rejects_tub(capsys):
    tub = SHARED_DATA / 'donkey_indoor_train_tub'
    assert main(['dataset', 'info', str(tub)]) == 2
    error = capsys.readouterr().err
    assert 'is a donkeycar tub, not a folder of episodes' in error
    assert f'liquid-control import {tub} --out DIR' in error


def test_import_cli_tub(tmp_path, capsys):
    tub = SHARED_DATA / 'donkey_indoor_train_tub'
    if not tub.is_dir():
        pytest.skip(f'sample tub not found at {tub}')
    assert main(['import', str(tub), '--out', str(tmp_path / 'out')]) == 0
    assert '3 episode(s), 3500 frames' in capsys.readouterr().out
    assert main(['dataset', 'info', str(tmp_path / 'out'), '--json']) == 0
    statistics = json.loads(capsys.readouterr().out)
    assert statistics['frames'] == 3500
    assert statistics['gaps'] == 0
    pauses = [g['seconds'] for g in statistics['between_episodes']]
    assert pauses == [pytest.approx(59.0, abs=0.5), pytest.approx(4.6, abs=0.1)]
    assert statistics['rate_hz'] == pytest.approx(20.0, abs=0.1)


def test_import_cli_rejects_bad_option(tmp_path, capsys):
    tub = SHARED_DATA / 'donkey_indoor_train_tub'
    assert main(['import', str(tub), '--out', str(tmp_path), '--imu-tolerance', '-1']) == 2
    assert 'invalid imu_tolerance_s -1' in capsys.readouterr().err


def test_import_command_bag_without_commands(tmp_path):
    euroc = SHARED_DATA / 'euroc_v101_micro'
    if not euroc.is_dir():
        pytest.skip(f'sample bag not found at {euroc}')
    command = [str(VENV_BIN / 'liquid-control'), 'import', str(euroc), '--out',
               str(tmp_path / 'out')]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith('liquid-control import: error: bag ')
    assert 'has no command topic' in result.stderr
    assert '/imu0 (sensor_msgs/msg/Imu, 1041 messages)' in result.stderr

    result = subprocess.run(command + ['--no-commands'], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert '1 episode(s), 95 frames' in result.stdout
    assert 'no teacher commands' in result.stdout


def test_import_cli_out_is_file(tmp_path, capsys):
    tub = SHARED_DATA / 'donkey_indoor_train_tub'
    if not tub.is_dir():
        pytest.skip(f'sample tub not found at {tub}')
    target = tmp_path / 'taken'
    target.write_text('')
    assert main(['import', str(tub), '--out', str(target)]) == 2
    assert 'is a file' in capsys.readouterr().err
