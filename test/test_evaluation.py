"""liquid-control evaluate on a known bag of real frames, checked against an independent replay.

The bag contains 80 real donkeycar frames at 20 Hz with a 0.8 s pause after frame 39 (short
enough to stay in one imported episode, long enough for the replay to reset the state), and
a Twist command 1 ms after each of frames 0..59. Frames 60..79 have no command.

The tests of the training parts evaluate a tiny model trained on two short episodes of the
donkeycar tub (the ``subset`` fixture), with a held-out test part.
"""

import json
import shutil
import math
import subprocess

import cv2
import numpy as np
import pytest
import torch
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from scipy import stats

from liquid_control.cli.main import main
from liquid_control.data.episodes import find_episodes
from liquid_control.data.preprocess import Preprocessing
from liquid_control.data.sources import load_episodes
from liquid_control.errors import ConfigError, DataError
from liquid_control.evaluation import plots
from liquid_control.evaluation.metrics import describe_lag, regression_metrics, timing_metrics
from liquid_control.evaluation.parts import match_training_parts
from liquid_control.evaluation.pipeline import (EvaluationOptions, _trace_window,
                                                run_evaluation)
from liquid_control.evaluation.replay import evaluate_episodes, load_frames, trace_neurons
from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint
from liquid_control.model.policy import PolicyConfig, build_policy
from liquid_control.training.config import TrainConfig
from liquid_control.training.trainer import train

from conftest import SHARED_DATA, VENV_BIN
from training_data import TINY_SETTINGS

FRAMES = 80
PAUSE_AFTER = 39
PAUSE_S = 0.8
COMMANDED = 60
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 50_000_000
OUTPUT_MEAN = {'angular_z': 0.05, 'linear_x': 0.4}


def _frame_stamps_ns() -> np.ndarray:
    stamps = START_NS + np.arange(FRAMES, dtype=np.int64) * PERIOD_NS
    stamps[PAUSE_AFTER + 1:] += int(PAUSE_S * 1e9) - PERIOD_NS
    return stamps


def _jpeg_message(store, stamp: int, jpeg: bytes) -> bytes:
    """Return a serialised CompressedImage with the JPEG ``jpeg``, stamped ``stamp`` ns."""
    types = store.types
    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=stamp // 10**9, nanosec=stamp % 10**9),
        frame_id='camera')
    image = types['sensor_msgs/msg/CompressedImage'](
        header=header, format='jpeg', data=np.frombuffer(jpeg, np.uint8))
    return store.serialize_cdr(image, 'sensor_msgs/msg/CompressedImage')


@pytest.fixture(scope='module')
def known_bag(tmp_path_factory):
    """Write the bag; return (path, JPEG bytes a frame, (angular_z, linear_x) a frame)."""
    tub = SHARED_DATA / 'donkey_indoor_train_tub'
    if not tub.is_dir():
        pytest.skip(f'sample data folder not found at {tub}; it is kept outside the '
                    'repository and needed by this test')
    records = []
    with open(tub / 'catalog_1.catalog') as stream:
        for line in stream:
            records.append(json.loads(line))
            if len(records) == FRAMES:
                break
    jpegs = [(tub / 'images' / record['cam/image_array']).read_bytes() for record in records]
    commands = np.array([(-record['user/angle'], record['user/throttle'])
                         for record in records], dtype=np.float64)

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    path = tmp_path_factory.mktemp('bag') / 'known_bag'
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        image_connection = writer.add_connection(
            '/camera/image_raw/compressed', 'sensor_msgs/msg/CompressedImage', typestore=store)
        command_connection = writer.add_connection(
            '/cmd_vel', 'geometry_msgs/msg/Twist', typestore=store)
        for index, stamp in enumerate(_frame_stamps_ns()):
            stamp = int(stamp)
            writer.write(image_connection, stamp, _jpeg_message(store, stamp, jpegs[index]))
            if index < COMMANDED:
                vector = types['geometry_msgs/msg/Vector3']
                twist = types['geometry_msgs/msg/Twist'](
                    linear=vector(x=float(commands[index, 1]), y=0.0, z=0.0),
                    angular=vector(x=0.0, y=0.0, z=float(commands[index, 0])))
                writer.write(command_connection, stamp + 1_000_000,
                             store.serialize_cdr(twist, 'geometry_msgs/msg/Twist'))
    return path, jpegs, commands


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """Save a small untrained NCP-LTC policy with output normalisation and a training mean."""
    config = PolicyConfig(family='ncp_ltc', units=12, seed=3,
                          preprocessing={'crop_top': 0.2, 'crop_bottom': 0.0, 'crop_left': 0.0,
                                         'crop_right': 0.0, 'height': 33, 'width': 100})
    policy = build_policy(config)
    policy.set_normalization(output_mean=[0.1, 0.3], output_std=[0.5, 0.2])
    path = tmp_path_factory.mktemp('model') / 'small.lcm'
    save_checkpoint(path, policy, {'training_output_mean': OUTPUT_MEAN})
    return path


@pytest.fixture(scope='module')
def episodes(known_bag, tmp_path_factory):
    return load_episodes(known_bag[0], cache_dir=tmp_path_factory.mktemp('cache'))


@torch.no_grad()
def _independent_replay(policy, jpegs) -> np.ndarray:
    """Step the policy one frame at a time from the raw JPEGs, resetting at the pause."""
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    stamps = _frame_stamps_ns() * 1e-9
    outputs = []
    state = None
    for index, data in enumerate(jpegs):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        frame = preprocessing.apply(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if index == 0 or index == PAUSE_AFTER + 1:
            state = None
            dt = PERIOD_NS * 1e-9
        else:
            dt = stamps[index] - stamps[index - 1]
        output, state = policy.step(torch.from_numpy(frame)[None], None,
                                    torch.tensor([dt], dtype=torch.float32), state)
        outputs.append(output[0].numpy())
    return np.stack(outputs)


def test_bag_imports_as_one_episode(episodes):
    assert len(episodes) == 1
    assert len(episodes[0]) == FRAMES


def test_evaluate_command_matches_independent_replay(known_bag, checkpoint, episodes,
                                                     tmp_path):
    bag, jpegs, commands = known_bag
    out = tmp_path / 'evaluation'
    completed = subprocess.run(
        [str(VENV_BIN / 'liquid-control'), 'evaluate', str(bag), '--model', str(checkpoint),
         '--out', str(out), '--perturbations', 'noise:0.1', 'blur:1.5',
         '--cache-dir', str(tmp_path / 'cache'), '--ssim-frames', '8',
         '--saliency-frames', '2', '--trace-seconds', '1'],
        capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads((out / 'metrics.json').read_text())
    assert f'angular_z: {describe_lag(metrics["angular_z"])}' in completed.stdout

    policy, _ = load_checkpoint(checkpoint)
    predictions = _independent_replay(policy, jpegs)
    targets = np.stack([episodes[0].command('angular_z'), episodes[0].command('linear_x')],
                       axis=1).astype(np.float64)
    # The labels are the commands written for frames 0..59; frames well past the last
    # command have none (the importer matches a command within 0.1 s of a frame).
    np.testing.assert_allclose(targets[:COMMANDED], commands[:COMMANDED], atol=1e-6)
    assert np.all(np.isnan(targets[COMMANDED + 3:]))

    assert metrics['frames'] == FRAMES
    assert metrics['segments'] == 2
    assert metrics['duration_s'] == pytest.approx(FRAMES * PERIOD_NS * 1e-9, rel=1e-6)
    assert metrics['unscored_frames'] == int(np.isnan(targets[:, 0]).sum())
    assert metrics['realtime_factor'] > 0
    for column, name in enumerate(('angular_z', 'linear_x')):
        scored = ~np.isnan(targets[:, column])
        prediction = predictions[scored, column]
        target = targets[scored, column]
        values = metrics[name]
        assert values['scored_frames'] == int(scored.sum())
        assert values['mae'] == pytest.approx(np.mean(np.abs(prediction - target)), rel=1e-4)
        assert values['rmse'] == pytest.approx(
            np.sqrt(np.mean((prediction - target) ** 2)), rel=1e-4)
        assert values['pearson'] == pytest.approx(stats.pearsonr(prediction, target)[0],
                                                  abs=1e-4)
        residual = np.sum((target - prediction) ** 2)
        total = np.sum((target - target.mean()) ** 2)
        assert values['r2'] == pytest.approx(1 - residual / total, rel=1e-4, abs=1e-6)
        assert values['baseline_mae'] == pytest.approx(
            np.mean(np.abs(OUTPUT_MEAN[name] - target)), rel=1e-5)
        # Frame-to-frame changes never span the pause, where the state was reset.
        pairs = np.arange(FRAMES - 1) != PAUSE_AFTER
        steps = np.abs(np.diff(predictions[:, column]))[pairs]
        assert values['mean_abs_change'] == pytest.approx(steps.mean(), rel=1e-4, abs=1e-7)
        human = np.abs(np.diff(targets[:, column]))[pairs]
        assert values['target_mean_abs_change'] == pytest.approx(
            np.nanmean(human), rel=1e-5)
        segment = (np.arange(FRAMES) > PAUSE_AFTER).astype(int)
        timing = timing_metrics(predictions[:, column], targets[:, column], segment,
                                PERIOD_NS * 1e-9)
        assert values['lag_frames'] == timing['lag_frames']
        assert values['lag_s'] == pytest.approx(timing['lag_s'], rel=1e-4)
        assert values['pearson_at_lag'] == pytest.approx(timing['pearson_at_lag'], abs=1e-4)
        assert values['pearson_fast'] == pytest.approx(timing['pearson_fast'], abs=1e-4)

    predictions_csv = (out / 'predictions.csv').read_text().splitlines()
    assert len(predictions_csv) == FRAMES + 1
    assert set(metrics['robustness']) == {'noise:0.1', 'blur:1.5'}
    for name, values in metrics['robustness'].items():
        assert values['frames'] == FRAMES
        assert 0.0 < values['saliency_ssim'] <= 1.0
        assert values['angular_z']['mae'] > 0
    report = (out / 'report.html').read_text()
    for picture in ('angular_z_time.png', 'angular_z_scatter.png', 'angular_z_errors.png',
                    'neurons.png', 'wiring.png', 'saliency.png', 'robustness.png'):
        assert (out / picture).stat().st_size > 5000, picture
        assert picture in report
    assert 'not scored' in completed.stdout


def test_chunk_length_does_not_change_outputs(checkpoint, episodes):
    policy, _ = load_checkpoint(checkpoint)
    reference = evaluate_episodes(policy, episodes, chunk_length=64).predictions
    result = evaluate_episodes(policy, episodes, chunk_length=7)
    np.testing.assert_allclose(result.predictions, reference, atol=1e-5)


def test_trace_neurons_matches_replay(checkpoint, episodes):
    policy, _ = load_checkpoint(checkpoint)
    result = evaluate_episodes(policy, episodes)
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    frames = load_frames(episodes[0], preprocessing)[:PAUSE_AFTER + 1]
    dt = np.full(len(frames), PERIOD_NS * 1e-9, dtype=np.float32)
    states, outputs = trace_neurons(policy, frames, dt)
    assert states.shape == (len(frames), 12)
    np.testing.assert_allclose(outputs, result.predictions[:PAUSE_AFTER + 1], atol=1e-5)


def test_pause_over_max_gap_resets_state(checkpoint, episodes):
    policy, _ = load_checkpoint(checkpoint)
    reset = evaluate_episodes(policy, episodes, max_gap_s=0.5)
    carried = evaluate_episodes(policy, episodes, max_gap_s=1.0)
    assert reset.segments == 2
    assert carried.segments == 1
    assert list(np.unique(reset.segment_index[PAUSE_AFTER + 1:])) == [1]
    after = PAUSE_AFTER + 1
    np.testing.assert_allclose(reset.predictions[:after], carried.predictions[:after],
                               atol=1e-6)
    assert not np.allclose(reset.predictions[after], carried.predictions[after], atol=1e-6)


def test_constant_model_matches_baseline(episodes):
    config = PolicyConfig(family='cnn', units=8, preprocessing={
        'crop_top': 0.0, 'crop_bottom': 0.0, 'crop_left': 0.0, 'crop_right': 0.0,
        'height': 24, 'width': 32})
    policy = build_policy(config)
    # A tiny output std makes every output the stored mean, so the metrics are known.
    policy.set_normalization(output_mean=[0.05, 0.4], output_std=[1e-9, 1e-9])
    result = evaluate_episodes(policy, episodes, baseline=OUTPUT_MEAN)
    np.testing.assert_allclose(result.predictions, [[0.05, 0.4]] * FRAMES, atol=1e-6)
    for name in ('angular_z', 'linear_x'):
        values = result.metrics[name]
        assert values['mae'] == pytest.approx(values['baseline_mae'], abs=1e-6)
        assert values['unscored_frames'] == FRAMES - values['scored_frames']


def test_run_evaluation_without_plots(checkpoint, episodes, tmp_path):
    policy, metadata = load_checkpoint(checkpoint)
    options = EvaluationOptions(perturbations=(), plots=False)
    metrics = run_evaluation(policy, episodes, tmp_path, metadata, options)
    assert metrics['robustness'] == {}
    assert (tmp_path / 'metrics.json').is_file()
    assert not (tmp_path / 'report.html').exists()

    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    frames = [load_frames(episode, preprocessing) for episode in episodes]
    given = run_evaluation(policy, episodes, tmp_path / 'given', metadata, options, frames)
    assert given['angular_z'] == metrics['angular_z']


def _run_cli(capsys, *arguments: str):
    """Run liquid-control evaluate in this process; return (exit code, stderr)."""
    code = main(['evaluate', *arguments])
    return code, capsys.readouterr().err


def test_evaluate_rejects_missing_model(capsys, known_bag, tmp_path):
    code, error = _run_cli(capsys, str(known_bag[0]), '--model', str(tmp_path / 'none.lcm'),
                           '--out', str(tmp_path / 'out'))
    assert code == 2
    assert 'none.lcm' in error


def test_evaluate_rejects_corrupt_model(capsys, known_bag, tmp_path):
    corrupt = tmp_path / 'corrupt.lcm'
    corrupt.write_bytes(b'not a checkpoint at all')
    code, error = _run_cli(capsys, str(known_bag[0]), '--model', str(corrupt),
                           '--out', str(tmp_path / 'out'))
    assert code == 2
    assert 'corrupt.lcm' in error


def test_evaluate_rejects_invalid_perturbation(capsys, known_bag, checkpoint, tmp_path):
    code, error = _run_cli(capsys, str(known_bag[0]), '--model', str(checkpoint),
                           '--out', str(tmp_path / 'out'), '--perturbations', 'fog:1')
    assert code == 2
    assert "invalid perturbation 'fog:1'" in error


def test_evaluate_rejects_missing_source(capsys, checkpoint, tmp_path):
    code, error = _run_cli(capsys, str(tmp_path / 'no_such_bag'), '--model', str(checkpoint),
                           '--out', str(tmp_path / 'out'))
    assert code == 2
    assert 'no_such_bag' in error


def test_evaluate_rejects_invalid_max_gap(capsys, known_bag, checkpoint, tmp_path):
    code, error = _run_cli(capsys, str(known_bag[0]), '--model', str(checkpoint),
                           '--out', str(tmp_path / 'out'), '--max-gap', '0')
    assert code == 2
    assert '--max-gap 0.0 is invalid' in error


def test_plots_accept_result_without_targets(checkpoint, episodes, tmp_path):
    policy, _ = load_checkpoint(checkpoint)
    result = evaluate_episodes(policy, episodes)
    result.targets[:] = np.nan
    result.scored[:] = False
    result.metrics = {name: regression_metrics(result.predictions[:, index],
                                               result.targets[:, index])
                      for index, name in enumerate(result.output_names)}
    for draw in (plots.plot_time_series, plots.plot_scatter, plots.plot_error_histogram):
        path = draw(result, 'angular_z', tmp_path / f'{draw.__name__}.png')
        assert path.stat().st_size > 1000


def test_evaluate_rejects_file_as_output(capsys, known_bag, checkpoint, tmp_path):
    existing = tmp_path / 'metrics.txt'
    existing.write_text('')
    code, error = _run_cli(capsys, str(known_bag[0]), '--model', str(checkpoint),
                           '--out', str(existing))
    assert code == 2
    assert 'is a file, not a folder' in error


class _InMemoryEpisode:
    """The Episode interface over arrays, for IMU cases that no sample recording has."""

    def __init__(self, frames: np.ndarray, imu: np.ndarray, has_imu: bool = True):
        self.frames = frames
        self.imu = imu
        self.has_imu = has_imu
        self.timestamps = np.arange(len(frames)) * 0.05
        self.valid = np.ones(len(frames), dtype=bool)
        self.folder = 'in-memory'

    def __len__(self) -> int:
        return len(self.frames)

    def command(self, name: str) -> np.ndarray:
        return np.linspace(-0.5, 0.5, len(self.frames)).astype(np.float32)

    def load_frame(self, index: int) -> np.ndarray:
        return self.frames[index]


def _imu_policy():
    config = PolicyConfig(family='ncp_ltc', units=12, imu_enabled=True, preprocessing={
        'crop_top': 0.0, 'crop_bottom': 0.0, 'crop_left': 0.0, 'crop_right': 0.0,
        'height': 24, 'width': 32})
    return build_policy(config)


def _imu_frames(count: int = 20) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (count, 24, 32, 3), dtype=np.uint8)


def test_imu_readings_reach_the_policy():
    policy = _imu_policy()
    frames = _imu_frames()
    still = np.zeros((len(frames), 6), dtype=np.float32)
    turning = still.copy()
    turning[:, 2] = 2.0
    first = evaluate_episodes(policy, [_InMemoryEpisode(frames, still)])
    second = evaluate_episodes(policy, [_InMemoryEpisode(frames, turning)])
    assert not np.allclose(first.predictions, second.predictions, atol=1e-6)


def test_missing_imu_reading_repeats_the_last():
    policy = _imu_policy()
    frames = _imu_frames()
    imu = np.random.default_rng(1).normal(size=(len(frames), 6)).astype(np.float32)
    filled = imu.copy()
    filled[7] = filled[6]
    with_gap = imu.copy()
    with_gap[7] = np.nan
    expected = evaluate_episodes(policy, [_InMemoryEpisode(frames, filled)])
    result = evaluate_episodes(policy, [_InMemoryEpisode(frames, with_gap)])
    np.testing.assert_allclose(result.predictions, expected.predictions, atol=1e-6)


def test_imu_policy_rejects_episode_without_imu():
    frames = _imu_frames(4)
    episode = _InMemoryEpisode(frames, np.full((4, 6), np.nan, np.float32), has_imu=False)
    with pytest.raises(DataError, match='needs IMU readings'):
        evaluate_episodes(_imu_policy(), [episode])


def test_evaluate_without_commands_skips_empty_plots(known_bag, checkpoint, tmp_path,
                                                     caplog, capsys):
    _, jpegs, _ = known_bag
    store = get_typestore(Stores.ROS2_KILTED)
    bag = tmp_path / 'camera_only'
    with Writer(bag, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connection = writer.add_connection('/camera/image_raw/compressed',
                                           'sensor_msgs/msg/CompressedImage', typestore=store)
        for index in range(20):
            stamp = START_NS + index * PERIOD_NS
            writer.write(connection, stamp, _jpeg_message(store, stamp, jpegs[index]))

    caplog.set_level('INFO')
    out = tmp_path / 'out'
    code = main(['evaluate', str(bag), '--model', str(checkpoint), '--out', str(out),
                 '--no-commands', '--perturbations', '--saliency-frames', '1',
                 '--ssim-frames', '0', '--cache-dir', str(tmp_path / 'cache')])
    assert code == 0
    assert '--no-commands' in caplog.text
    assert 'check the command topic' not in caplog.text
    printed = capsys.readouterr().out
    # No human to lag behind or to run ahead of.
    assert 'lag behind the human' not in printed
    assert 'ahead of the human' not in printed
    assert 'no clear lag' not in printed
    assert (out / 'angular_z_time.png').is_file()
    assert not (out / 'angular_z_scatter.png').exists()
    assert not (out / 'angular_z_errors.png').exists()
    assert 'angular_z_scatter.png' not in (out / 'report.html').read_text()


def test_robustness_without_saliency_frames(checkpoint, episodes, tmp_path):
    policy, metadata = load_checkpoint(checkpoint)
    options = EvaluationOptions(perturbations=('noise:0.1',), plots=False, ssim_frames=0,
                                saliency_frames=0)
    metrics = run_evaluation(policy, episodes, tmp_path, metadata, options)
    summary = metrics['robustness']['noise:0.1']
    assert math.isfinite(summary['angular_z']['mae'])
    assert math.isnan(summary['saliency_ssim'])


def _constant_cnn(output_units=('rad/s', 'm/s')):
    """Return a cnn-family policy whose outputs are always OUTPUT_MEAN's values."""
    config = PolicyConfig(family='cnn', units=8, output_units=output_units, preprocessing={
        'crop_top': 0.0, 'crop_bottom': 0.0, 'crop_left': 0.0, 'crop_right': 0.0,
        'height': 24, 'width': 32})
    policy = build_policy(config)
    policy.set_normalization(output_mean=[0.05, 0.4], output_std=[1e-9, 1e-9])
    return policy


def test_stateless_model_gets_a_report(episodes, tmp_path):
    options = EvaluationOptions(perturbations=('noise:0.1',), saliency_frames=1,
                                ssim_frames=4)
    run_evaluation(_constant_cnn(), episodes, tmp_path, {}, options)
    assert (tmp_path / 'report.html').is_file()


def test_stateless_report_explains_neurons(episodes, tmp_path):
    options = EvaluationOptions(perturbations=(), saliency_frames=1)
    run_evaluation(_constant_cnn(), episodes, tmp_path, {}, options)
    assert not (tmp_path / 'neurons.png').exists()
    assert 'no neurons to plot' in (tmp_path / 'report.html').read_text()


def test_constant_model_warnings(episodes, tmp_path):
    options = EvaluationOptions(perturbations=(), plots=False)
    metrics = run_evaluation(_constant_cnn(), episodes, tmp_path,
                             {'training_output_mean': OUTPUT_MEAN}, options)
    checks = {(warning['output'], warning['check']) for warning in metrics['warnings']}
    assert ('angular_z', 'flat_output') in checks
    assert ('angular_z', 'near_baseline') in checks
    saved = json.loads((tmp_path / 'metrics.json').read_text())
    assert saved['warnings'] == metrics['warnings']


def test_unit_mismatch_warning_names_both_units(episodes, tmp_path):
    policy = _constant_cnn(output_units=('normalised (-1..1)', 'normalised (-1..1)'))
    options = EvaluationOptions(perturbations=(), plots=False)
    metrics = run_evaluation(policy, episodes, tmp_path, {}, options)
    messages = [warning['message'] for warning in metrics['warnings']
                if warning['check'] == 'unit_mismatch' and warning['output'] == 'angular_z']
    assert len(messages) == 1
    # The bag import labels Twist commands in ROS units.
    assert '"normalised (-1..1)"' in messages[0]
    assert '"rad/s"' in messages[0]
    assert "give the unit with --angular-unit 'normalised (-1..1)'" in messages[0]


def test_report_shows_warnings_at_top(episodes, tmp_path):
    options = EvaluationOptions(perturbations=(), saliency_frames=0)
    run_evaluation(_constant_cnn(), episodes, tmp_path, {'training_output_mean': OUTPUT_MEAN},
                   options)
    report = (tmp_path / 'report.html').read_text()
    assert report.index('Warnings') < report.index('<h2>Accuracy</h2>')
    assert 'no better than sending the training mean on every frame' in report


def test_report_accuracy_table_has_units(checkpoint, episodes, tmp_path):
    policy, metadata = load_checkpoint(checkpoint)
    options = EvaluationOptions(perturbations=(), saliency_frames=0)
    run_evaluation(policy, episodes, tmp_path, metadata, options)
    report = (tmp_path / 'report.html').read_text()
    accuracy = report[report.index('<h2>Accuracy</h2>'):]
    assert '<td>angular_z</td><td>rad/s</td>' in accuracy


def test_metrics_break_down_error_by_command_size(checkpoint, episodes, tmp_path):
    policy, metadata = load_checkpoint(checkpoint)
    options = EvaluationOptions(perturbations=(), plots=False)
    metrics = run_evaluation(policy, episodes, tmp_path, metadata, options)
    groups = metrics['angular_z']['error_by_magnitude']
    assert [group['bin'] for group in groups] == ['near zero', 'moderate', 'large']
    assert sum(group['frames'] for group in groups) == metrics['angular_z']['scored_frames']
    assert metrics['angular_z']['prediction_min'] <= metrics['angular_z']['prediction_max']


def test_report_explains_noise_and_ssim(checkpoint, episodes, tmp_path):
    policy, metadata = load_checkpoint(checkpoint)
    options = EvaluationOptions(perturbations=('noise:0.1',), saliency_frames=1,
                                ssim_frames=4)
    run_evaluation(policy, episodes, tmp_path, metadata, options)
    report = (tmp_path / 'report.html').read_text()
    assert 'standard deviation 0.32' in report
    assert '1 = the maps are unchanged' in report


def test_robustness_figure_covers_every_output(checkpoint, episodes):
    policy, _ = load_checkpoint(checkpoint)
    result = evaluate_episodes(policy, episodes, baseline=OUTPUT_MEAN)
    summaries = {'clean': result.summary(), 'noise:0.1': result.summary()}
    ssim = {'clean': 1.0, 'noise:0.1': 0.5}
    figure = plots.robustness_figure(summaries, result.output_names, ssim)
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    plots.plt.close(figure)
    assert 'linear_x: Pearson r' in titles
    assert 'saliency SSIM vs clean (1 = unchanged)' in titles


def _without_targets(result):
    result.targets[:] = np.nan
    result.scored[:] = False
    result.metrics = {name: regression_metrics(result.predictions[:, index],
                                               result.targets[:, index])
                      for index, name in enumerate(result.output_names)}
    return result


def test_robustness_without_commands_only_ssim(checkpoint, episodes):
    policy, _ = load_checkpoint(checkpoint)
    result = _without_targets(evaluate_episodes(policy, episodes, baseline=OUTPUT_MEAN))
    summaries = {'clean': result.summary(), 'noise:0.1': result.summary()}
    ssim = {'clean': 1.0, 'noise:0.1': 0.5}
    figure = plots.robustness_figure(summaries, result.output_names, ssim)
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    plots.plt.close(figure)
    assert titles == ['saliency SSIM vs clean (1 = unchanged)']


def test_time_series_no_commands_legend(checkpoint, episodes):
    policy, _ = load_checkpoint(checkpoint)
    result = _without_targets(evaluate_episodes(policy, episodes, baseline=OUTPUT_MEAN))
    figure = plots.time_series_figure(result, 'angular_z')
    labels = figure.axes[0].get_legend_handles_labels()[1]
    plots.plt.close(figure)
    assert labels == ['policy']


def test_time_series_legend_leaves_data_free(checkpoint, episodes):
    policy, _ = load_checkpoint(checkpoint)
    result = evaluate_episodes(policy, episodes, baseline=OUTPUT_MEAN)
    figure = plots.time_series_figure(result, 'angular_z')
    renderer = figure.canvas.get_renderer()
    axis = figure.axes[0]
    legend_box = axis.get_legend().get_window_extent(renderer)
    axis_box = axis.get_window_extent(renderer)
    plots.plt.close(figure)
    assert not legend_box.overlaps(axis_box)


def test_neuron_trace_uses_time_plot_clock(tmp_path):
    # 10 frames, a 2 s pause, then 30 frames: the trace covers the longer second segment.
    frames = _imu_frames(40)
    episode = _InMemoryEpisode(frames, np.zeros((40, 6), np.float32), has_imu=False)
    episode.timestamps = np.concatenate([np.arange(10) * 0.05, 2.5 + np.arange(30) * 0.05])
    config = PolicyConfig(family='ncp_ltc', units=12, preprocessing={
        'crop_top': 0.0, 'crop_bottom': 0.0, 'crop_left': 0.0, 'crop_right': 0.0,
        'height': 24, 'width': 32})
    policy = build_policy(config)
    result = evaluate_episodes(policy, [episode])
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    times, _, _ = _trace_window(policy, [episode], None, preprocessing, EvaluationOptions(),
                                result)
    assert times[0] == pytest.approx(plots.replay_time(result)[10])


@pytest.fixture(scope='module')
def trained(subset, tmp_path_factory):
    """Train a tiny model on the subset with a held-out test part; return its checkpoint."""
    torch.set_num_threads(1)
    config = TrainConfig.from_dict({**TINY_SETTINGS, 'test_fraction': 0.25})
    path = tmp_path_factory.mktemp('trained') / 'model.lcm'
    return train(config, find_episodes(subset), path, progress=False).paths.best


def _part_options(part: str) -> EvaluationOptions:
    return EvaluationOptions(perturbations=(), plots=False, part=part)


def test_part_test_reproduces_stored_test_metrics(trained, subset, tmp_path):
    policy, metadata = load_checkpoint(trained)
    metrics = run_evaluation(policy, find_episodes(subset), tmp_path, metadata,
                             _part_options('test'))
    stored = metadata['test_metrics']
    assert metrics['frames'] == sum(item['stop'] - item['start'] for item in metadata['test'])
    # Train gives the first test frame its recorded time delta, the replay of the part
    # the median one, which moves the metrics by far less than this tolerance.
    for name in ('angular_z', 'linear_x'):
        assert metrics[name]['mae'] == pytest.approx(stored[f'test/{name}/mae'], rel=2e-3)
        assert metrics[name]['pearson'] == pytest.approx(stored[f'test/{name}/pearson'],
                                                         abs=2e-3)


def test_part_all_counts_training_frames(trained, subset, tmp_path):
    policy, metadata = load_checkpoint(trained)
    episodes = find_episodes(subset)
    metrics = run_evaluation(policy, episodes, tmp_path, metadata, _part_options('all'))
    held_out = {key: sum(item['stop'] - item['start'] for item in metadata[key])
                for key in ('validation', 'test')}
    total = sum(len(episode) for episode in episodes)
    assert metrics['part_frames'] == {'train': total - sum(held_out.values()), **held_out}
    assert 'training_frames' in {warning['check'] for warning in metrics['warnings']}


def test_part_all_scores_parts_like_part_test(trained, subset, tmp_path):
    policy, metadata = load_checkpoint(trained)
    episodes = find_episodes(subset)
    every = run_evaluation(policy, episodes, tmp_path / 'all', metadata, _part_options('all'))
    test = run_evaluation(policy, episodes, tmp_path / 'test', metadata, _part_options('test'))
    assert every['parts']['test']['angular_z']['mae'] == pytest.approx(
        test['angular_z']['mae'], rel=1e-6)


def test_part_rejects_other_data(trained, episodes, tmp_path):
    policy, metadata = load_checkpoint(trained)
    with pytest.raises(ConfigError, match='needs the data the model was trained on'):
        run_evaluation(policy, episodes, tmp_path, metadata, _part_options('test'))


def _moved(metadata: dict, folder: str, sources) -> dict:
    """Return the metadata of a run on the same episodes, read from another ``folder``."""
    def move(name: str) -> str:
        return f'{folder}/{name.rsplit("/", 1)[-1]}'

    ranges = {key: [dict(item, episode=move(item['episode'])) for item in metadata[key]]
              for key in ('validation', 'test')}
    return dict(metadata, episodes=[move(name) for name in metadata['episodes']],
                data_sources=list(sources), **ranges)


def test_part_matches_training_source_elsewhere(trained, subset):
    _, metadata = load_checkpoint(trained)
    # Stored episode folders that no longer exist, but the source path that was given to
    # train is the evaluated dataset folder.
    moved = _moved(metadata, '/elsewhere/copy', [str(subset)])
    parts, reason = match_training_parts(moved, find_episodes(subset))
    assert parts is not None, reason


def test_part_rejects_unknown_source_without_digest(trained, subset):
    _, metadata = load_checkpoint(trained)
    # A checkpoint written before the digest was recorded: only the paths can tell.
    moved = _moved(metadata, '/elsewhere/copy', ['/elsewhere/copy'])
    del moved['training_data_sha256']
    parts, reason = match_training_parts(moved, find_episodes(subset))
    assert parts is None
    assert 'but the model was trained on /elsewhere/copy/episode_0000' in reason


def test_part_matches_the_same_frames_anywhere(trained, subset):
    _, metadata = load_checkpoint(trained)
    moved = _moved(metadata, '/elsewhere/copy', ['/elsewhere/copy'])
    parts, reason = match_training_parts(moved, find_episodes(subset))
    assert parts is not None, reason


def test_part_rejects_other_frames_under_the_training_paths(trained, subset, tmp_path):
    _, metadata = load_checkpoint(trained)
    copy = tmp_path / 'copy'
    shutil.copytree(subset, copy)
    frames = sorted((copy / 'episode_0000' / 'frames').iterdir())
    # The same file names and rows, but one frame shows another moment of the drive.
    frames[3].write_bytes(frames[-1].read_bytes())
    moved = _moved(metadata, str(copy), [str(copy)])
    parts, reason = match_training_parts(moved, find_episodes(copy))
    assert parts is None
    assert 'frames, labels or split differ' in reason


def test_evaluate_part_option(capsys, trained, subset, tmp_path):
    out = tmp_path / 'out'
    code, _ = _run_cli(capsys, str(subset), '--model', str(trained), '--out', str(out),
                       '--part', 'test', '--perturbations', '--no-plots')
    assert code == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['part'] == 'test'


def test_evaluate_part_rejects_other_data(capsys, known_bag, trained, tmp_path):
    code, error = _run_cli(capsys, str(known_bag[0]), '--model', str(trained),
                           '--out', str(tmp_path / 'out'), '--part', 'test',
                           '--cache-dir', str(tmp_path / 'cache'))
    assert code == 2
    assert '--part test needs the data the model was trained on' in error


def test_part_matches_another_import_of_the_training_recording(tmp_path):
    from liquid_control.evaluation.parts import episodes_problem

    # The model trained on the user's import of a bag; evaluate imports the bag again.
    for dataset in ('user_import', 'cache/bag-1234'):
        episode = tmp_path / dataset / 'episode_0000'
        episode.mkdir(parents=True)
        (episode / 'metadata.json').write_text(json.dumps(
            {'source': {'kind': 'rosbag2', 'path': str(tmp_path / 'drive_bag')}}))
    metadata = {'episodes': [str(tmp_path / 'user_import' / 'episode_0000')],
                'data_sources': [str(tmp_path / 'user_import')]}
    assert episodes_problem(metadata, [tmp_path / 'cache/bag-1234/episode_0000']) is None
    (tmp_path / 'user_import' / 'episode_0000' / 'metadata.json').write_text(json.dumps(
        {'source': {'kind': 'rosbag2', 'path': str(tmp_path / 'other_bag')}}))
    assert 'but the model was trained on' in episodes_problem(
        metadata, [tmp_path / 'cache/bag-1234/episode_0000'])
