"""Training runs on a small real subset of the donkeycar tub: loss, files, resume, CLI."""

import csv
import dataclasses
import hashlib
import json
import logging
import math

import numpy as np
import pytest
import torch

from training_data import TINY_SETTINGS

from liquid_control.cli.main import main
from liquid_control.data.episodes import find_episodes
from liquid_control.errors import CheckpointError, ConfigError
from liquid_control.evaluation.metrics import MAX_LAG_FRAMES
from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint
from liquid_control.training.config import FAMILIES, TrainConfig
from liquid_control.model.policy import build_policy
from liquid_control.training.dataset import Segment
from liquid_control.training.normalization import measure_statistics
from liquid_control.training.pretrain import pretrain_encoder
from liquid_control.training.trainer import (Trainer, build_policy_config, prepare_data,
                                             schedule_factor, to_tensors, train)
from liquid_control.training.dataset import collate, with_burn_in


def tiny_config(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**TINY_SETTINGS, **overrides})


def test_training_reduces_loss_and_writes_checkpoints(subset, tmp_path):
    torch.set_num_threads(1)
    config = tiny_config(epochs=6, lr_encoder=3e-3, lr_recurrent=1e-2,
                         augment={'probability': 0.0})
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)

    losses = [row['train/loss'] for row in result.history]
    assert len(losses) == 6
    assert min(losses[1:]) < losses[0]
    assert result.paths.best.is_file()
    assert result.paths.last.is_file()
    assert (result.paths.logs / 'resume.pt').is_file()
    assert list(result.paths.logs.glob('events.out.tfevents.*'))
    with open(result.paths.logs / 'log.csv', newline='') as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row['epoch']) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert 'val/angular_z/mae' in rows[0]

    policy, metadata = load_checkpoint(result.paths.best)
    assert metadata['best_epoch'] == result.best_epoch
    assert set(metadata['training_output_mean']) == {'angular_z', 'linear_x'}
    assert metadata['train_config']['family'] == 'ncp_ltc'
    assert metadata['validation']
    # The normalisation measured on training data travels with the weights.
    assert not torch.allclose(policy.output_std, torch.ones_like(policy.output_std))
    assert not torch.allclose(policy.feature_std, torch.ones_like(policy.feature_std))


def test_checkpoint_loads_in_evaluation_and_runner(subset, tmp_path):
    from liquid_control.evaluation.pipeline import EvaluationOptions, run_evaluation
    from liquid_control.inference import load_runner

    torch.set_num_threads(1)
    result = train(tiny_config(), find_episodes(subset), tmp_path / 'model.lcm',
                   progress=False)
    policy, metadata = load_checkpoint(result.paths.best)
    metrics = run_evaluation(policy, find_episodes(subset), tmp_path / 'eval', metadata,
                             EvaluationOptions(perturbations=(), plots=False))
    assert math.isfinite(metrics['angular_z']['mae'])
    assert math.isfinite(metrics['angular_z']['baseline_mae'])

    runner = load_runner(result.paths.best)
    frame = find_episodes(subset)[0].load_frame(0)
    output = runner.step(frame, None, 0.05)
    assert output.shape == (2,)
    assert np.all(np.isfinite(output))


def test_resume_continues_after_last_epoch(subset, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / 'model.lcm'
    train(tiny_config(epochs=1), find_episodes(subset), out, progress=False)
    result = train(tiny_config(epochs=2), find_episodes(subset), out, progress=False,
                   resume=True)
    assert result.epochs_run == 2
    _, metadata = load_checkpoint(result.paths.last)
    assert metadata['epoch'] == 2
    with open(result.paths.logs / 'log.csv', newline='') as stream:
        assert [int(row['epoch']) for row in csv.DictReader(stream)] == [1, 2]


def test_resume_adds_validation(subset, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / 'model.lcm'
    train(tiny_config(validation_fraction=0.0, epochs=1), find_episodes(subset), out,
          progress=False)
    # Epoch 2 is the first with validation, so it must replace epoch 1 as the best.
    result = train(tiny_config(epochs=3, patience=1), find_episodes(subset), out,
                   progress=False, resume=True)
    assert result.best_epoch >= 2
    _, metadata = load_checkpoint(result.paths.best)
    assert metadata['epoch'] == result.best_epoch
    assert 'val/loss' in metadata['validation_metrics']


@pytest.mark.parametrize('changes', [{'validation_fraction': 0.4},
                                     {'validation_blocks': 2},
                                     {'sequence_length': 6}])
def test_resume_other_split_raises(subset, tmp_path, changes):
    torch.set_num_threads(1)
    out = tmp_path / 'model.lcm'
    train(tiny_config(epochs=1), find_episodes(subset), out, progress=False)
    name, value = next(iter(changes.items()))
    with pytest.raises(CheckpointError, match=f'but this run uses {name}={value!r}'):
        train(tiny_config(epochs=2, **changes), find_episodes(subset), out, progress=False,
              resume=True)


def test_resume_without_previous_run_raises(subset, tmp_path):
    with pytest.raises(CheckpointError, match='cannot resume'):
        train(tiny_config(), find_episodes(subset), tmp_path / 'model.lcm', progress=False,
              resume=True)


def test_resume_with_other_family_raises(subset, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / 'model.lcm'
    train(tiny_config(), find_episodes(subset), out, progress=False)
    with pytest.raises(CheckpointError, match='lstm'):
        train(tiny_config(family='lstm', epochs=2), find_episodes(subset), out,
              progress=False, resume=True)


@pytest.mark.parametrize('name, value', [('frame_gap', 3), ('ode_unfolds', 3),
                                         ('frame_gap', 0)])
def test_resume_other_model_settings_raises(subset, tmp_path, name, value):
    # Only frame_gap 0 changes a tensor shape, so the others must be caught by name.
    torch.set_num_threads(1)
    out = tmp_path / 'model.lcm'
    train(tiny_config(model={'frame_gap': 2}), find_episodes(subset), out, progress=False)
    model = {'frame_gap': 2, name: value}
    with pytest.raises(CheckpointError, match=f'{name}=.*but this run builds {name}={value}'):
        train(tiny_config(model=model, epochs=2), find_episodes(subset), out,
              progress=False, resume=True)


@pytest.mark.parametrize('family', FAMILIES)
def test_every_family_trains_one_batch(subset, tmp_path, family):
    torch.set_num_threads(1)
    config = tiny_config(family=family, max_batches_per_epoch=1, model={'units': 12})
    result = train(config, find_episodes(subset), tmp_path / f'{family}.lcm', progress=False)
    policy, metadata = load_checkpoint(result.paths.best)
    assert policy.config.family == family
    assert math.isfinite(result.history[0]['val/loss'])


def test_time_limit_stops_training(subset, tmp_path):
    torch.set_num_threads(1)
    # 60 microseconds is shorter than one batch (milliseconds here), so the limit has
    # passed when the first batch ends.
    result = train(tiny_config(epochs=50, max_minutes=1e-6), find_episodes(subset),
                   tmp_path / 'model.lcm', progress=False)
    assert result.epochs_run == 1
    assert 'time limit' in result.stop_reason


def test_time_limit_leaves_the_schedule_alone(subset, tmp_path, caplog):
    # The learning rate follows the epochs, not the clock, so a seed trains the same on a
    # busy machine. With one batch per epoch, epoch k runs at progress (k - 1) / 50,
    # however much of the 0.06 s limit has passed by then.
    torch.set_num_threads(1)
    config = tiny_config(epochs=50, max_minutes=0.001, max_batches_per_epoch=1)
    with caplog.at_level(logging.INFO, logger='liquid_control.training.trainer'):
        result = train(config, find_episodes(subset), tmp_path / 'short.lcm', progress=False)
    assert 'time limit' in result.stop_reason
    for row in result.history:
        factor = schedule_factor(config, (row['epoch'] - 1) / 50)
        assert row['lr/recurrent'] == pytest.approx(config.lr_recurrent * factor, rel=1e-9)
        assert row['lr/encoder'] == pytest.approx(config.lr_encoder * factor, rel=1e-9)
    # The log gives the rate reached and an epoch count that fits the limit.
    epochs = result.epochs_run
    percent = 100.0 * schedule_factor(config, epochs / 50)
    assert f'after epoch {epochs} of 50, with the learning rate at {percent:.0f} %' in caplog.text
    assert f'set epochs to about {epochs}' in caplog.text


def test_train_command_writes_model(subset, tmp_path, capsys):
    settings = ['--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}',
                '--set', 'stride=2', '--set', 'warmup_frames=2']
    code = main(['train', str(subset), '--out', str(tmp_path / 'cli.lcm'), '--epochs', '1',
                 '--sequence-length', '8', '--batch-size', '8', '--threads', '1',
                 '--validation-fraction', '0.25', '--no-progress', *settings])
    assert code == 0
    assert (tmp_path / 'cli.lcm').is_file()
    assert 'best checkpoint' in capsys.readouterr().out


def test_train_command_reports_missing_data(tmp_path, capsys):
    code = main(['train', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'm.lcm')])
    assert code == 2
    error = capsys.readouterr().err
    assert 'liquid-control train: error' in error
    assert 'nowhere' in error


def test_train_command_reports_invalid_override(subset, tmp_path, capsys):
    code = main(['train', str(subset), '--out', str(tmp_path / 'm.lcm'),
                 '--set', 'sequence_length=0'])
    assert code == 2
    assert 'sequence_length' in capsys.readouterr().err


def test_compare_command_writes_table(subset, tmp_path, capsys):
    settings = ['--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}',
                '--set', 'sequence_length=8', '--set', 'stride=2', '--set', 'warmup_frames=2',
                '--set', 'batch_size=8', '--set', 'max_batches_per_epoch=2',
                '--set', 'pretrain_epochs=2', '--set', 'pretrain_batch_size=16',
                '--set', 'freeze_encoder=true']
    code = main(['compare', str(subset), '--out', str(tmp_path / 'cmp'), '--models',
                 'ncp_ltc', 'lstm:8', '--epochs', '1', '--test-fraction', '0.25',
                 '--validation-fraction', '0.25', '--threads', '1',
                 '--perturbations', 'noise:0.1', '--no-progress', *settings])
    assert code == 0
    table = (tmp_path / 'cmp' / 'compare.md').read_text()
    assert '| ncp_ltc |' in table
    assert '| lstm-8 |' in table
    assert 'test part' in table
    assert 'change / frame' in table
    ltc_row = next(line for line in table.splitlines() if line.startswith('| ncp_ltc |'))
    evaluation = json.loads((tmp_path / 'cmp' / 'ncp_ltc-s0' / 'metrics.json').read_text())
    assert f"| {evaluation['angular_z']['mean_abs_change']:.3f} |" in ltc_row
    header = [cell.strip() for cell in table.splitlines()[
        next(i for i, line in enumerate(table.splitlines()) if line.startswith('| model |'))
    ].split('|')]
    cells = [cell.strip() for cell in ltc_row.split('|')]
    lag = evaluation['angular_z']
    clear = abs(lag['lag_frames']) < MAX_LAG_FRAMES
    assert cells[header.index('lag ms')] == (f"{1000 * lag['lag_s']:.0f}" if clear else '-')
    assert cells[header.index('r fast')] == f"{evaluation['angular_z']['pearson_fast']:.3f}"
    assert (tmp_path / 'cmp' / 'lstm-8-s0' / 'metrics.json').is_file()
    # Both models start from one encoder pretraining: the second reuses the first's.
    ltc, ltc_metadata = load_checkpoint(tmp_path / 'cmp' / 'ncp_ltc-s0.lcm')
    lstm, lstm_metadata = load_checkpoint(tmp_path / 'cmp' / 'lstm-8-s0.lcm')
    assert 'reused' not in ltc_metadata['pretraining']
    assert lstm_metadata['pretraining']['reused'] is True
    for name, value in ltc.encoder.state_dict().items():  # frozen after pretraining
        assert torch.equal(value, lstm.encoder.state_dict()[name]), name


def test_encoder_pretraining_runs_first(subset, tmp_path):
    torch.set_num_threads(1)
    config = tiny_config(pretrain_epochs=6, pretrain_batch_size=16, pretrain_patience=50)
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    _, metadata = load_checkpoint(result.paths.best)
    pretraining = metadata['pretraining']
    # A fixed amount of work: every epoch is one pass over the training frames.
    assert pretraining['epochs'] == 6
    assert pretraining['steps'] == 6 * pretraining['steps_per_epoch'] > 0
    assert pretraining['last_loss'] < pretraining['first_loss']
    assert 0 < pretraining['validation_mae'] < 5
    assert 1 <= pretraining['best_epoch'] <= 6
    # Pretraining counts toward the training time.
    assert metadata['train_seconds'] >= pretraining['seconds'] > 0


def test_pretraining_is_reproducible_across_cores(subset, tmp_path):
    torch.set_num_threads(1)
    episodes = find_episodes(subset)
    config = tiny_config(pretrain_epochs=4, pretrain_batch_size=16, pretrain_patience=50,
                         epochs=1, freeze_encoder=True)
    first = load_checkpoint(train(config, episodes, tmp_path / 'a.lcm',
                                  progress=False).paths.best)[0]
    # Another core and size draw other initial weights; the pretraining must not change.
    other = config.with_overrides({'family': 'lstm', 'model.units': 16})
    second = load_checkpoint(train(other, episodes, tmp_path / 'b.lcm',
                                   progress=False).paths.best)[0]
    for name, value in first.encoder.state_dict().items():
        assert torch.equal(value, second.encoder.state_dict()[name]), name


def test_pretraining_stops_on_validation(subset):
    # Validation steering is mirrored, so a better fit of the training frames scores
    # worse there and patience soon ends the pretraining.
    torch.set_num_threads(1)
    config = tiny_config(outputs=['angular_z'])
    data = prepare_data(config, find_episodes(subset))
    policy = build_policy(build_policy_config(config, data.preprocessing, data.use_imu,
                                              data.units))
    statistics = measure_statistics(policy.encoder, data.episodes, data.split.train_windows,
                                    data.use_imu)
    statistics.apply(policy)
    mirrored = dataclasses.replace(data.episodes[0],
                                   targets=-data.episodes[0].targets + 2 * statistics.output_mean)
    episodes = list(data.episodes) + [mirrored]
    validation = [Segment(len(episodes) - 1, 0, len(mirrored))]
    summary = pretrain_encoder(policy, episodes, data.split.train_windows, validation,
                               epochs=40, batch_size=16, lr_encoder=3e-3, lr_readout=1e-2,
                               ema_decay=0.0, validate_every=1, patience=3)
    assert summary['epochs'] == summary['best_epoch'] + 3 < 40
    assert math.isfinite(summary['validation_mae'])


def test_frozen_encoder_keeps_its_weights(subset, tmp_path):
    torch.set_num_threads(1)
    config = tiny_config(pretrain_epochs=2, pretrain_batch_size=16, freeze_encoder=True,
                         epochs=3)
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    after_three = load_checkpoint(result.paths.last)[0]
    # Train 3 epochs and 1 epoch after the same pretraining: the frozen encoder must be
    # equal in both, the recurrent core must differ.
    reference = train(config.with_overrides({'epochs': 1}), find_episodes(subset),
                      tmp_path / 'reference.lcm', progress=False)
    after_one = load_checkpoint(reference.paths.last)[0]
    for name, value in after_three.encoder.state_dict().items():
        assert torch.equal(value, after_one.encoder.state_dict()[name]), name
    core_changed = any(not torch.equal(value, after_one.core.state_dict()[name])
                       for name, value in after_three.core.state_dict().items())
    assert core_changed


def test_train_command_init_encoder(subset, tmp_path, capsys):
    settings = ['--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}',
                '--set', 'stride=2', '--set', 'warmup_frames=2', '--set', 'batch_size=8',
                '--sequence-length', '8', '--validation-fraction', '0.25', '--threads', '1',
                '--no-progress', '--epochs', '1']
    assert main(['train', str(subset), '--out', str(tmp_path / 'first.lcm'),
                 '--pretrain-epochs', '2', *settings]) == 0
    assert main(['train', str(subset), '--out', str(tmp_path / 'second.lcm'),
                 '--pretrain-epochs', '0', '--freeze-encoder',
                 '--init-encoder', str(tmp_path / 'first.lcm'), *settings]) == 0
    first = load_checkpoint(tmp_path / 'first.lcm')[0]
    second = load_checkpoint(tmp_path / 'second.lcm')[0]
    for name, value in first.encoder.state_dict().items():
        assert torch.equal(value, second.encoder.state_dict()[name]), name
    capsys.readouterr()

    # An encoder of another input size cannot start this run.
    code = main(['train', str(subset), '--out', str(tmp_path / 'third.lcm'),
                 '--init-encoder', str(tmp_path / 'first.lcm'), *settings,
                 '--set', 'preprocessing={crop_top: 0.4, height: 32, width: 64}'])
    assert code == 2
    error = capsys.readouterr().err
    assert 'first.lcm' in error
    assert '48x24' in error
    assert '64x32' in error


def test_no_validation_trains_all_epochs(subset, tmp_path, capsys):
    torch.set_num_threads(1)
    # patience 1 would stop a validated run after two epochs without improvement.
    config = tiny_config(validation_fraction=0.0, epochs=3, patience=1, pretrain_epochs=1,
                         pretrain_batch_size=16)
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    assert result.epochs_run == 3
    assert result.best_epoch == 3
    assert result.stop_reason == 'epochs'
    assert all(math.isnan(row['val/loss']) for row in result.history)
    best, best_metadata = load_checkpoint(result.paths.best)
    last, last_metadata = load_checkpoint(result.paths.last)
    assert best_metadata['validation'] == []
    assert not [key for key in best_metadata['validation_metrics'] if key.startswith('val/')]
    assert best_metadata['epoch'] == last_metadata['epoch'] == 3
    for name, value in best.state_dict().items():
        assert torch.equal(value, last.state_dict()[name]), name
    # Every frame of the subset trains: none is kept back for validation.
    validated = train(tiny_config(epochs=1), find_episodes(subset), tmp_path / 'v.lcm',
                      progress=False)
    assert best_metadata['training_windows'] > load_checkpoint(
        validated.paths.best)[1]['training_windows']
    assert 'validation MAE' not in best_metadata['pretraining']


def _train_command(subset, out, *options) -> int:
    """Run ``liquid-control train`` for one small epoch on ``subset`` with ``options``."""
    return main(['train', str(subset), '--out', str(out), '--epochs', '1',
                 '--sequence-length', '8', '--batch-size', '8', '--threads', '1',
                 '--no-progress', '--set', 'stride=2', '--set', 'warmup_frames=2',
                 '--set', 'pretrain_epochs=0',
                 '--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}', *options])


def test_train_command_without_validation(subset, tmp_path, capsys):
    code = _train_command(subset, tmp_path / 'cli.lcm', '--validation-fraction', '0')
    assert code == 0
    out = capsys.readouterr().out
    assert 'best checkpoint' in out
    assert 'validation angular_z' not in out
    assert (tmp_path / 'cli.lcm').is_file()


def test_train_scores_held_out_part(subset, tmp_path):
    torch.set_num_threads(1)
    config = tiny_config(epochs=1, test_fraction=0.2)
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    _, metadata = load_checkpoint(result.paths.best)
    assert metadata['test_metrics'] == pytest.approx(
        {key: value for key, value in result.test_metrics.items() if math.isfinite(value)})
    # The constant predictor's MAE on the test frames, computed here from their labels.
    data = prepare_data(config, find_episodes(subset))
    assert data.split.test_segments
    labels = np.concatenate([data.episodes[s.episode_index].targets[s.start:s.stop, 0][
        data.episodes[s.episode_index].valid[s.start:s.stop]]
        for s in data.split.test_segments])
    mean = metadata['training_output_mean']['angular_z']
    expected = float(np.mean(np.abs(labels[np.isfinite(labels)] - mean)))
    baseline = result.test_metrics['test/angular_z/baseline_mae']
    assert baseline == pytest.approx(expected, rel=1e-4)
    assert result.test_metrics['test/angular_z/mae'] > 0
    assert result.test_metrics['test/angular_z/mae'] != result.best_metrics[
        'val/angular_z/mae']


def test_train_prints_held_out_score(subset, tmp_path, capsys):
    code = _train_command(subset, tmp_path / 'cli.lcm', '--test-fraction', '0.2')
    assert code == 0
    out = capsys.readouterr().out
    _, metadata = load_checkpoint(tmp_path / 'cli.lcm')
    mae = metadata['test_metrics']['test/angular_z/mae']
    assert f'held-out test angular_z: MAE {mae:.4f}' in out
    assert 'validation angular_z: MAE' in out


def test_train_prints_held_out_score_of_every_output(subset, tmp_path, capsys):
    code = _train_command(subset, tmp_path / 'cli.lcm', '--test-fraction', '0.2',
                          '--set', 'outputs=[angular_z, linear_x]')
    assert code == 0
    out = capsys.readouterr().out
    assert 'held-out test angular_z: MAE' in out
    assert 'held-out test linear_x: MAE' in out


def test_compare_without_held_out_part_raises(subset, tmp_path, capsys):
    code = main(['compare', str(subset), '--out', str(tmp_path / 'cmp'), '--models',
                 'ncp_ltc', '--epochs', '1', '--validation-fraction', '0',
                 '--test-fraction', '0', '--threads', '1', '--no-progress',
                 '--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}'])
    assert code == 2
    error = capsys.readouterr().err
    assert 'test_fraction' in error
    assert not (tmp_path / 'cmp' / 'ncp_ltc-s0.lcm').exists()


COMPARE_SETTINGS = ['--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}',
                    '--set', 'sequence_length=8', '--set', 'stride=2',
                    '--set', 'warmup_frames=2', '--set', 'batch_size=8',
                    '--set', 'max_batches_per_epoch=2', '--set', 'pretrain_batch_size=16',
                    '--set', 'freeze_encoder=true', '--epochs', '1', '--test-fraction', '0.25',
                    '--validation-fraction', '0.25', '--threads', '1',
                    '--perturbations', 'noise:0.1', '--no-progress']


def run_compare(source, out, models, pretrain_epochs, *options) -> int:
    """Run ``liquid-control compare`` with the tiny settings; return its exit code."""
    return main(['compare', str(source), '--out', str(out), '--models', *models,
                 '--set', f'pretrain_epochs={pretrain_epochs}', *COMPARE_SETTINGS, *options])


def test_compare_reuses_saved_pretrained_encoder(subset, tmp_path, caplog):
    out = tmp_path / 'cmp'
    assert run_compare(subset, out, ['ncp_ltc'], 2) == 0
    saved = out / 'pretrained-s0.lcm'
    _, metadata = load_checkpoint(saved)
    assert metadata['kind'] == 'pretrained encoder'
    assert metadata['pretraining']['epochs'] == 2

    # A later run that adds a family loads that encoder instead of pretraining again.
    caplog.set_level('INFO')
    assert run_compare(subset, out, ['ncp_ltc', 'lstm:8'], 2, '--reuse') == 0
    assert 'loaded the pretrained encoder' in caplog.text
    assert 'pretrained the encoder on' not in caplog.text
    ltc, _ = load_checkpoint(out / 'ncp_ltc-s0.lcm')
    lstm, lstm_metadata = load_checkpoint(out / 'lstm-8-s0.lcm')
    assert lstm_metadata['pretraining']['reused'] is True
    for name, value in ltc.encoder.state_dict().items():  # frozen after pretraining
        assert torch.equal(value, lstm.encoder.state_dict()[name]), name
    # The statistics measured again on the loaded encoder are the ones the first run used.
    assert torch.equal(ltc.feature_mean, lstm.feature_mean)
    assert torch.equal(ltc.feature_std, lstm.feature_std)


def test_compare_replaces_unfitting_pretrained_encoder(subset, tmp_path, caplog):
    out = tmp_path / 'cmp'
    assert run_compare(subset, out, ['ncp_ltc'], 1) == 0
    caplog.set_level('INFO')
    # Other pretraining settings: the file is not used, and the new encoder replaces it.
    assert run_compare(subset, out, ['lstm:8'], 2) == 0
    assert 'pretrained with other settings' in caplog.text
    assert load_checkpoint(out / 'pretrained-s0.lcm')[1]['pretraining']['epochs'] == 2
    # A damaged file: a warning, then pretraining as if it were not there.
    (out / 'pretrained-s0.lcm').write_bytes(b'not a checkpoint')
    caplog.clear()
    assert run_compare(subset, out, ['gru:8'], 2) == 0
    assert 'not reusing the pretrained encoder' in caplog.text
    assert 'pretrained the encoder on' in caplog.text
    assert load_checkpoint(out / 'pretrained-s0.lcm')[1]['kind'] == 'pretrained encoder'


def test_compare_pretrains_again_on_other_data(subset, tmp_path, caplog):
    out = tmp_path / 'cmp'
    assert run_compare(subset, out, ['ncp_ltc'], 1) == 0
    caplog.set_level('INFO')
    # The same settings on one episode of the two: the saved encoder saw other frames.
    one_episode = find_episodes(subset)[0].folder
    assert run_compare(one_episode, out, ['lstm:8'], 1) == 0
    assert 'pretrained on other frames' in caplog.text
    assert 'pretrained the encoder on' in caplog.text


def test_compare_pretrains_again_on_other_validation(subset, tmp_path, caplog):
    out = tmp_path / 'cmp'
    assert run_compare(subset, out, ['ncp_ltc'], 1) == 0
    caplog.set_level('INFO')
    # Validation 0 and test 0.5 keep the training windows of validation 0.25 and test
    # 0.25, but the saved pretraining chose its epoch by scores on this run's test frames.
    assert run_compare(subset, out, ['lstm:8'], 1, '--validation-fraction', '0',
                       '--test-fraction', '0.5') == 0
    assert '21 training windows' in caplog.text
    assert 'loaded the pretrained encoder' not in caplog.text
    assert 'pretrained on other frames or another split' in caplog.text
    assert 'pretrained the encoder on' in caplog.text


def replace_in_header(path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in a checkpoint and write its checksum again."""
    assert len(old) == len(new)
    content = path.read_bytes()
    assert content.count(old) == 1
    body = content[:-32].replace(old, new)
    path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize('summary, text', [
    ({'seconds': 'abc'}, None), ({'seconds': None}, None), ({'steps': 'x'}, None),
    ({'epochs': True}, None), ({'seconds': 123456.5}, b'NaN     '),
])
def test_compare_ignores_invalid_pretraining_summary(subset, tmp_path, caplog, summary, text):
    out = tmp_path / 'cmp'
    assert run_compare(subset, out, ['ncp_ltc'], 1) == 0
    saved = out / 'pretrained-s0.lcm'
    policy, metadata = load_checkpoint(saved)
    metadata['pretraining'] = {**metadata['pretraining'], **summary}
    save_checkpoint(saved, policy, metadata)
    if text is not None:
        # Python's json.loads accepts NaN, but save_checkpoint never writes it.
        replace_in_header(saved, b'123456.5', text)
    caplog.set_level('INFO')
    assert run_compare(subset, out, ['lstm:8'], 1) == 0
    assert 'loaded the pretrained encoder' not in caplog.text
    assert 'invalid pretraining summary' in caplog.text
    assert 'pretrained the encoder on' in caplog.text
    assert isinstance(load_checkpoint(saved)[1]['pretraining']['seconds'], float)


def test_max_minutes_bounds_pretraining(subset, tmp_path):
    torch.set_num_threads(1)
    # 1,000 pretraining epochs would take minutes; max_minutes 0.1 leaves them 3 s.
    config = tiny_config(pretrain_epochs=1000, pretrain_batch_size=16, pretrain_patience=1000,
                         max_minutes=0.1, epochs=2)
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    _, metadata = load_checkpoint(result.paths.best)
    pretraining = metadata['pretraining']
    assert pretraining['epochs'] < 1000
    assert pretraining['seconds'] < 0.1 * 60 * 0.5 + 1.0
    assert result.history


def test_pretraining_warns_near_constant_predictor(subset, tmp_path, caplog):
    torch.set_num_threads(1)
    config = tiny_config(pretrain_epochs=1, pretrain_batch_size=16)
    caplog.set_level('INFO')
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    _, metadata = load_checkpoint(result.paths.best)
    pretraining = metadata['pretraining']
    # The constant predictor's MAE, computed here from the validation frames' labels.
    data = prepare_data(config, find_episodes(subset))
    mean = np.array([metadata['training_output_mean'][name] for name in config.outputs])
    std = np.array([metadata['training_output_std'][name] for name in config.outputs])
    labels = np.concatenate([data.episodes[s.episode_index].targets[s.start:s.stop][
        data.episodes[s.episode_index].valid[s.start:s.stop]]
        for s in data.split.validation_segments])
    expected = float(np.mean(np.abs(np.nan_to_num(labels) - mean) / std))
    assert pretraining['validation_constant_mae'] == pytest.approx(expected, rel=1e-4)
    # One epoch on the 96 frames does not beat it by much: the log reports it and what to do.
    assert pretraining['validation_mae'] > 0.9 * expected
    assert 'hardly better than a constant predictor' in caplog.text
    assert 'raise pretrain_epochs' in caplog.text


def test_pretraining_warning_names_time_limit(subset, tmp_path, caplog):
    torch.set_num_threads(1)
    # 0.3 s of pretraining ends long before 1000 epochs.
    config = tiny_config(pretrain_epochs=1000, pretrain_minutes=0.005, pretrain_batch_size=16)
    caplog.set_level('INFO')
    train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    assert 'hardly better than a constant predictor' in caplog.text
    assert 'reached its time limit' in caplog.text
    assert 'raise pretrain_epochs' not in caplog.text


def test_compare_table_explains_undefined_values(subset, tmp_path):
    out = tmp_path / 'cmp'
    assert run_compare(subset, out, ['cnn:8'], 1) == 0
    table = (out / 'compare.md').read_text()
    assert 'A "-" marks a value that is not defined' in table


def test_weight_average_is_saved_and_resumed(subset, tmp_path):
    torch.set_num_threads(1)
    episodes = find_episodes(subset)
    # A constant rate, so that a run of 1 epoch resumed to 2 takes the same steps as one
    # run of 2 epochs (a cosine schedule depends on the number of epochs).
    settings = {'epochs': 2, 'lr_schedule': 'constant'}
    plain = train(tiny_config(**settings), episodes, tmp_path / 'plain.lcm', progress=False)
    averaged = train(tiny_config(**settings, ema_decay=0.9), episodes,
                     tmp_path / 'averaged.lcm', progress=False)
    # The average does not change what the optimizer does: the weights it moved equal
    # those of the run without an average, and the saved model is the average.
    state = torch.load(averaged.paths.logs / 'resume.pt', weights_only=True)
    plain_weights = load_checkpoint(plain.paths.last)[0].state_dict()
    saved_weights = load_checkpoint(averaged.paths.last)[0].state_dict()
    assert state['average_updates'] > 0
    changed = []
    for name, value in plain_weights.items():
        torch.testing.assert_close(state['training_weights'][name], value)
        if value.is_floating_point() and not torch.equal(saved_weights[name], value):
            changed.append(name)
    assert len(changed) > 10

    # One epoch, then one more after --resume, gives the same average as two epochs.
    out = tmp_path / 'resumed.lcm'
    train(tiny_config(**settings, ema_decay=0.9).with_overrides({'epochs': 1}), episodes,
          out, progress=False)
    resumed = train(tiny_config(**settings, ema_decay=0.9), episodes, out, progress=False,
                    resume=True)
    resumed_weights = load_checkpoint(resumed.paths.last)[0].state_dict()
    for name, value in saved_weights.items():
        torch.testing.assert_close(resumed_weights[name], value)


def test_resume_unaveraged_uses_training_weights(subset, tmp_path):
    torch.set_num_threads(1)
    episodes = find_episodes(subset)
    settings = {'epochs': 2, 'lr_schedule': 'constant'}
    plain = train(tiny_config(**settings), episodes, tmp_path / 'plain.lcm', progress=False)
    # An averaged first epoch resumed without the average continues from the weights
    # the optimizer moved, so it ends where the run without any average ends.
    out = tmp_path / 'resumed.lcm'
    train(tiny_config(**settings, ema_decay=0.9).with_overrides({'epochs': 1}), episodes,
          out, progress=False)
    resumed = train(tiny_config(**settings), episodes, out, progress=False, resume=True)
    resumed_weights = load_checkpoint(resumed.paths.last)[0].state_dict()
    for name, value in load_checkpoint(plain.paths.last)[0].state_dict().items():
        torch.testing.assert_close(resumed_weights[name], value)


def test_resume_averaged_after_plain_raises(subset, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / 'model.lcm'
    train(tiny_config(), find_episodes(subset), out, progress=False)
    with pytest.raises(CheckpointError, match='ema_decay'):
        train(tiny_config(epochs=2, ema_decay=0.9), find_episodes(subset), out,
              progress=False, resume=True)


def test_mirrored_training_differs_from_plain(subset, tmp_path):
    torch.set_num_threads(1)
    settings = {'pretrain_epochs': 1, 'pretrain_batch_size': 16}
    plain = train(tiny_config(**settings), find_episodes(subset), tmp_path / 'plain.lcm',
                  progress=False)
    mirrored = train(tiny_config(**settings, augment={'mirror_probability': 0.5}),
                     find_episodes(subset), tmp_path / 'mirrored.lcm', progress=False)
    assert mirrored.history[0]['train/loss'] != plain.history[0]['train/loss']
    _, metadata = load_checkpoint(mirrored.paths.best)
    assert metadata['train_config']['augment']['mirror_probability'] == 0.5
    assert metadata['pretraining']['steps'] > 0


def test_correlation_weight_in_losses(subset, tmp_path):
    torch.set_num_threads(1)
    config = tiny_config(outputs=['angular_z'], loss='l1', correlation_weight=1.0, epochs=2)
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    _, metadata = load_checkpoint(result.paths.last)
    std = metadata['training_output_std']['angular_z']
    # The validation part is one segment, so its correlation term uses the same frames
    # as the logged Pearson r: the loss is the L1 error in std units plus 1 - r.
    row = result.history[-1]
    expected = row['val/angular_z/mae'] / std + 1.0 - row['val/angular_z/pearson']
    assert math.isclose(row['val/loss'], expected, rel_tol=1e-4)
    assert all(math.isfinite(row['train/loss']) for row in result.history)


def test_freeze_encoder_first_epochs(subset, tmp_path):
    torch.set_num_threads(1)
    episodes = find_episodes(subset)
    warm = tiny_config(freeze_encoder_epochs=1, epochs=1)
    frozen = tiny_config(freeze_encoder=True, epochs=1)
    first = load_checkpoint(train(warm, episodes, tmp_path / 'warm.lcm',
                                  progress=False).paths.last)[0]
    reference = load_checkpoint(train(frozen, episodes, tmp_path / 'frozen.lcm',
                                      progress=False).paths.last)[0]
    # In the frozen first epoch only the core learns, exactly as with freeze_encoder.
    for name, value in first.state_dict().items():
        assert torch.equal(value, reference.state_dict()[name]), name
    # From the second epoch on the encoder learns too.
    second = load_checkpoint(train(warm.with_overrides({'epochs': 2}), episodes,
                                   tmp_path / 'second.lcm', progress=False).paths.last)[0]
    changed = [name for name, value in second.encoder.state_dict().items()
               if not torch.equal(value, first.encoder.state_dict()[name])]
    assert changed


def test_burn_in_sets_the_start_state(subset, tmp_path):
    torch.set_num_threads(1)
    burn_in = 4
    trainer = Trainer(tiny_config(burn_in_frames=burn_in), find_episodes(subset),
                      tmp_path / 'model.lcm', progress=False)
    windows = trainer.split.train_windows[-3:]
    longer, complete = with_burn_in(trainer.episodes, windows, burn_in)
    assert complete.all()
    batch = to_tensors(collate(trainer.episodes, longer, None, None))
    window = {name: None if value is None else value[:, burn_in:]
              for name, value in batch.items()}
    policy = trainer.policy
    _, state = policy(batch['frames'][:, :burn_in], None, batch['dt'][:, :burn_in])
    outputs, _ = policy(window['frames'], None, window['dt'], state)
    expected = trainer._training_loss(outputs, window['targets'], window['mask'], 2)
    assert torch.allclose(trainer._batch_loss(batch, 2, complete), expected)
    # Without the frames before them, the windows start from rest as without burn-in.
    outputs, _ = policy(window['frames'], None, window['dt'])
    at_rest = trainer._training_loss(outputs, window['targets'], window['mask'], 2)
    assert not torch.allclose(at_rest, expected)
    assert torch.allclose(trainer._batch_loss(batch, 2, ~complete), at_rest)
    # No gradient reaches the burn-in frames.
    assert not trainer._burned_in_state(batch, burn_in, complete).requires_grad


def test_burn_in_training_run(subset, tmp_path, caplog):
    torch.set_num_threads(1)
    caplog.set_level(logging.INFO, logger='liquid_control.training.trainer')
    episodes = find_episodes(subset)
    plain = train(tiny_config(), episodes, tmp_path / 'plain.lcm', progress=False)
    burned = train(tiny_config(burn_in_frames=8), episodes, tmp_path / 'burned.lcm',
                   progress=False)
    assert burned.history[0]['train/loss'] != plain.history[0]['train/loss']
    assert 'burn-in: 18 of 26 training windows start from the state' in caplog.text
    _, metadata = load_checkpoint(burned.paths.best)
    assert metadata['train_config']['burn_in_frames'] == 8


@pytest.mark.parametrize('value', [-1, 1.5, 'two'])
def test_freeze_encoder_epochs_invalid(value):
    with pytest.raises(ConfigError, match='freeze_encoder_epochs'):
        tiny_config(freeze_encoder_epochs=value)


def test_core_warmup_fits_core_only(subset):
    from liquid_control.training.core_warmup import (episode_features, validation_loss,
                                                     warm_up_core)
    from liquid_control.training.loss import sequence_loss

    torch.set_num_threads(1)
    config = tiny_config(outputs=['angular_z'])
    data = prepare_data(config, find_episodes(subset))
    policy = build_policy(build_policy_config(config, data.preprocessing, data.use_imu,
                                              data.units))
    measure_statistics(policy.encoder, data.episodes, data.split.train_windows,
                       data.use_imu).apply(policy)
    before = {name: value.clone() for name, value in policy.state_dict().items()}
    scale = policy.output_std.clone()

    def loss(outputs, targets, mask):
        return sequence_loss(outputs, targets, mask, scale, kind='huber')

    summary = warm_up_core(policy, data.episodes, data.split.train_windows,
                           data.split.validation_segments, epochs=6, batch_size=8, lr=1e-2,
                           weight_decay=0.0, gradient_clip=1.0, train_loss=loss,
                           validation_loss_function=loss, seed=0)
    assert summary['epochs'] == 6
    assert 0 <= summary['best_epoch'] <= 6
    assert summary['validation_loss'] < summary['initial_validation_loss']
    for name, value in policy.encoder.state_dict().items():
        assert torch.equal(value, before[f'encoder.{name}']), name
    changed = [name for name, value in policy.core.state_dict().items()
               if not torch.equal(value, before[f'core.{name}'])]
    assert changed
    # The core keeps the weights whose validation loss the summary reports.
    policy.eval()
    features = episode_features(policy, data.episodes)
    kept_loss = validation_loss(policy, data.episodes, features,
                                data.split.validation_segments, loss)
    assert math.isclose(kept_loss, summary['validation_loss'], rel_tol=1e-5)


def test_core_warmup_without_validation_keeps_last(subset):
    from liquid_control.training.core_warmup import warm_up_core
    from liquid_control.training.loss import sequence_loss

    torch.set_num_threads(1)
    config = tiny_config(outputs=['angular_z'], validation_fraction=0.0)
    data = prepare_data(config, find_episodes(subset))
    policy = build_policy(build_policy_config(config, data.preprocessing, data.use_imu,
                                              data.units))

    def loss(outputs, targets, mask):
        return sequence_loss(outputs, targets, mask, torch.ones(1), kind='huber')

    summary = warm_up_core(policy, data.episodes, data.split.train_windows, [], epochs=2,
                           batch_size=8, lr=1e-2, weight_decay=0.0, gradient_clip=1.0,
                           train_loss=loss, validation_loss_function=loss, seed=0)
    assert summary['best_epoch'] == 2
    assert summary['validation_loss'] is None


def test_core_warmup_in_training_run(subset, tmp_path, caplog):
    torch.set_num_threads(1)
    # Without validation the warm-up keeps its last epoch, so the core surely changes.
    config = tiny_config(core_warmup_epochs=4, epochs=1, validation_fraction=0.0)
    with caplog.at_level('INFO', logger='liquid_control.training.trainer'):
        result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    _, metadata = load_checkpoint(result.paths.last)
    summary = metadata['core_warmup']
    assert summary['epochs'] == 4
    assert summary['best_epoch'] == 4
    assert 'fitted the core alone on cached encoder features: 4 epochs' in caplog.text
    # A resumed run does not warm up again, but keeps the first run's record.
    resumed = train(config.with_overrides({'epochs': 2}), find_episodes(subset),
                    tmp_path / 'model.lcm', progress=False, resume=True)
    resumed_metadata = load_checkpoint(resumed.paths.last)[1]
    assert resumed_metadata['epoch'] == 2
    assert resumed_metadata['core_warmup'] == summary
    assert resumed_metadata['pretraining'] == metadata['pretraining']
    # Without the warm-up the same run starts from another core.
    plain = train(config.with_overrides({'core_warmup_epochs': 0}), find_episodes(subset),
                  tmp_path / 'plain.lcm', progress=False)
    assert load_checkpoint(plain.paths.last)[1]['core_warmup'] == {}
    assert result.history[0]['train/loss'] != plain.history[0]['train/loss']


@pytest.mark.parametrize('value', [-1, 2.5, 'ten'])
def test_core_warmup_epochs_invalid(value):
    with pytest.raises(ConfigError, match='core_warmup_epochs'):
        tiny_config(core_warmup_epochs=value)


@pytest.mark.parametrize('text, value', [('yes', 'yes'), ('no', 'no'), ('true', 'yes'),
                                         ('false', 'no')])
def test_use_imu_override_yaml_boolean(text, value):
    from liquid_control.training.config import load_train_config, parse_overrides

    # YAML reads yes and no as booleans.
    config = load_train_config(None, parse_overrides([f'use_imu={text}']))
    assert config.use_imu == value


def test_use_imu_file_yaml_boolean(tmp_path):
    from liquid_control.training.config import load_train_config

    path = tmp_path / 'train.yaml'
    path.write_text('use_imu: no\n')
    assert load_train_config(path).use_imu == 'no'


def test_use_imu_number_rejected():
    with pytest.raises(ConfigError, match='use_imu=3 is invalid; use auto, yes or no'):
        tiny_config(use_imu=3)
