"""Bad input to train, evaluate and compare: a clear error and exit code 2, no traceback.

Every case runs the real command line through ``main`` on a small real subset of the
donkeycar tub and checks that the files already written stay as they were.
"""

import os
import pickle
import shutil
import threading

import pytest
import torch

from conftest import SHARED_DATA
from training_data import write_subset

from liquid_control.cli.main import main

# Tiny settings so that the one training run of this file takes seconds on one core.
SETTINGS = ['--epochs', '1', '--threads', '1', '--no-progress', '--sequence-length', '8',
            '--batch-size', '8', '--validation-fraction', '0.25', '--pretrain-epochs', '0',
            '--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}',
            '--set', 'stride=2', '--set', 'warmup_frames=2', '--set', 'max_batches_per_epoch=2']
COMPARE_SETTINGS = ['--epochs', '1', '--threads', '1', '--no-progress',
                    '--validation-fraction', '0.25', '--test-fraction', '0.25',
                    '--perturbations', 'noise:0.1', '--set', 'pretrain_epochs=0',
                    '--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}',
                    '--set', 'sequence_length=8', '--set', 'stride=2',
                    '--set', 'warmup_frames=2', '--set', 'max_batches_per_epoch=2']


class RunsCode:
    """Unpickling this object runs ``touch MARKER``, as a malicious checkpoint would."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture(scope='module')
def subset(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f'sample data folder not found at {SHARED_DATA}')
    return write_subset(SHARED_DATA, tmp_path_factory.mktemp('subset'))


@pytest.fixture(scope='module')
def trained(subset, tmp_path_factory):
    """Return the --out of one finished tiny run, with its resume files."""
    out = tmp_path_factory.mktemp('trained') / 'model.lcm'
    assert main(['train', str(subset), '--out', str(out), *SETTINGS]) == 0
    return out


@pytest.fixture(scope='module')
def averaged(subset, tmp_path_factory):
    """Return the --out of one finished tiny run with a weight average (ema_decay 0.9)."""
    out = tmp_path_factory.mktemp('averaged') / 'model.lcm'
    assert main(['train', str(subset), '--out', str(out), *SETTINGS,
                 '--set', 'ema_decay=0.9']) == 0
    return out


@pytest.fixture(scope='module')
def trained_for_compare(subset, tmp_path_factory):
    """Return the checkpoint of one tiny run with the split of COMPARE_SETTINGS."""
    out = tmp_path_factory.mktemp('trained_for_compare') / 'model.lcm'
    assert main(['train', str(subset), '--out', str(out), *SETTINGS,
                 '--test-fraction', '0.25']) == 0
    return out


def write_nan_weights(trained, path):
    """Save the trained policy to ``path`` with NaN capacitances, as a diverged run would."""
    from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint

    policy, metadata = load_checkpoint(trained)
    with torch.no_grad():
        policy.core.cell.capacitance.fill_(float('nan'))
    save_checkpoint(path, policy, metadata)


def write_invalid_crop(trained, path):
    """Save the trained policy to ``path`` with the preprocessing setting crop_top=1.5."""
    from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint

    policy, metadata = load_checkpoint(trained)
    policy.config.preprocessing['crop_top'] = 1.5
    save_checkpoint(path, policy, metadata)


def run_failing(capsys, command, *arguments) -> str:
    """Run ``liquid-control COMMAND ARGUMENTS``; check exit code 2 and return the error."""
    capsys.readouterr()
    code = main([command, *[str(argument) for argument in arguments]])
    error = capsys.readouterr().err
    assert code == 2, error
    assert f'liquid-control {command}: error:' in error
    assert 'Traceback' not in error
    return error


def copy_run(trained, folder):
    """Copy the checkpoints and logs of the trained run into ``folder``; return its --out."""
    folder.mkdir()
    for name in ('model.lcm', 'model.last.lcm'):
        shutil.copy(trained.parent / name, folder / name)
    shutil.copytree(trained.parent / 'model_logs', folder / 'model_logs')
    return folder / 'model.lcm'


# -- train: settings ----------------------------------------------------------------------

@pytest.mark.parametrize('setting, words', [
    ('lr_encoder=abc', ['lr_encoder', 'finite number']),
    ('lr_encoder=1e-3', ['lr_encoder', 'decimal point']),
    ('lr_recurrent=.inf', ['lr_recurrent', 'finite number']),
    ('max_minutes=.nan', ['max_minutes', 'finite number']),
    ('validation_fraction=abc', ['validation_fraction', 'finite number']),
    ('weight_decay=abc', ['weight_decay', 'finite number']),
    ('gradient_clip=-1.0', ['gradient_clip', '>= 0']),
    ('seed=abc', ['seed', 'integer']),
    ('seed=-1', ['seed', '2**32']),
    ('epochs=true', ['epochs', 'integer']),
    ('threads=abc', ['threads', 'integer']),
    ('threads=-1', ['threads', '>= 1']),
    ('max_batches_per_epoch=-1', ['max_batches_per_epoch', '>= 1']),
    ('model=abc', ['model', 'mapping']),
    ('init_encoder=5', ['init_encoder', 'string']),
    ('outputs=angular_z', ['outputs', 'list']),
    ('output_weights=[-1.0, 1.0]', ['output_weights', '>= 0']),
])
def test_train_set_rejects_value(subset, tmp_path, capsys, setting, words):
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                        '--set', setting)
    for word in words:
        assert word in error
    assert not (tmp_path / 'm.lcm').exists()


def test_train_bad_model_key_before_import(tmp_path, capsys):
    # A misspelt model setting is reported before the tub is imported, not minutes later.
    tub = SHARED_DATA / 'donkey_indoor_train_tub'
    error = run_failing(capsys, 'train', tub, '--out', tmp_path / 'm.lcm', '--cache-dir',
                        tmp_path / 'cache', '--set', 'model.unitz=32')
    assert 'unitz' in error
    assert not (tmp_path / 'cache').exists()


def test_train_threads_option_rejects_negative(subset, tmp_path, capsys):
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                        '--threads', '-1')
    assert 'threads=-1' in error


def test_train_config_not_utf8(subset, tmp_path, capsys):
    config = tmp_path / 'binary.yaml'
    config.write_bytes(bytes(range(128, 256)))
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm',
                        '--config', config)
    assert 'binary.yaml' in error
    assert 'UTF-8' in error


def test_train_same_data_twice(subset, tmp_path, capsys):
    error = run_failing(capsys, 'train', subset, f'{subset}/', '--out', tmp_path / 'm.lcm',
                        *SETTINGS)
    assert 'is the same data as' in error
    assert not (tmp_path / 'm.lcm').exists()


def test_train_no_labelled_frame(subset, tmp_path, capsys):
    dataset = tmp_path / 'unlabelled'
    shutil.copytree(subset, dataset)
    for rows in dataset.glob('*/rows.csv'):
        lines = rows.read_text().splitlines()
        assert lines[0].endswith(',valid')
        rows.write_text('\n'.join([lines[0]] + [line[:-1] + '0' for line in lines[1:]]) + '\n')
    error = run_failing(capsys, 'train', dataset, '--out', tmp_path / 'm.lcm', *SETTINGS)
    assert 'has a valid command label' in error


def test_train_cache_dir_is_file(subset, tmp_path, capsys):
    (tmp_path / 'cache').write_text('kept\n')
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                        '--cache-dir', tmp_path / 'cache')
    assert '--cache-dir' in error
    assert 'is a file, not a folder' in error
    assert (tmp_path / 'cache').read_text() == 'kept\n'


def feed_fifo(fifo, stop):
    """Write broken YAML to the first reader of ``fifo`` until ``stop`` is set.

    Should the command read the FIFO again, this unblocks it, so the test fails with a
    message instead of hanging.
    """
    while not stop.wait(0.2):
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader has opened it yet
            continue
        os.write(descriptor, b'epochs: [\n')
        os.close(descriptor)
        return


def test_train_config_is_fifo(subset, tmp_path, capsys):
    fifo = tmp_path / 'config.yaml'
    os.mkfifo(fifo)
    stop = threading.Event()
    feeder = threading.Thread(target=feed_fifo, args=(fifo, stop), daemon=True)
    feeder.start()
    try:
        error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm',
                            '--config', fifo)
    finally:
        stop.set()
        feeder.join()
    assert 'not a regular file' in error


# -- train: --out -------------------------------------------------------------------------

def test_train_out_parent_is_file(subset, tmp_path, capsys):
    (tmp_path / 'plain').write_text('not a folder\n')
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'plain' / 'm.lcm',
                        *SETTINGS)
    assert 'is a file, not a folder' in error
    assert (tmp_path / 'plain').read_text() == 'not a folder\n'


def test_train_out_is_folder(subset, tmp_path, capsys):
    (tmp_path / 'model.lcm').mkdir()
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'model.lcm', *SETTINGS)
    assert 'is a folder' in error
    assert not list((tmp_path / 'model.lcm').iterdir())


def test_train_log_folder_is_file(subset, tmp_path, capsys):
    (tmp_path / 'model_logs').write_text('kept\n')
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'model.lcm', *SETTINGS)
    assert 'model_logs' in error
    assert not (tmp_path / 'model.lcm').exists()
    assert (tmp_path / 'model_logs').read_text() == 'kept\n'


# -- train: --init-encoder ----------------------------------------------------------------

def test_init_encoder_pickle_not_run(subset, tmp_path, capsys):
    marker = tmp_path / 'PWNED'
    raw = tmp_path / 'raw.lcm'
    raw.write_bytes(pickle.dumps(RunsCode(marker)))
    zipped = tmp_path / 'zipped.lcm'
    torch.save({'encoder': RunsCode(marker)}, zipped)
    for path in (raw, zipped, tmp_path / 'missing.lcm'):
        error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                            '--init-encoder', path)
        # The temporary folder's name contains the test name, so look for the prefix.
        assert 'error: init_encoder: ' in error
        assert path.name in error
    assert not marker.exists()
    assert not (tmp_path / 'm.lcm').exists()


def test_init_encoder_nan_weights(subset, trained, tmp_path, capsys):
    model = tmp_path / 'diverged.lcm'
    write_nan_weights(trained, model)
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                        '--init-encoder', model)
    assert f'init_encoder: checkpoint {model} contains NaN or infinite values' in error
    assert 'core.cell.capacitance' in error
    # Rejected before the data is loaded and the run starts.
    assert not (tmp_path / 'm_logs').exists()


def test_init_encoder_invalid_crop(subset, trained, tmp_path, capsys):
    model = tmp_path / 'crop.lcm'
    write_invalid_crop(trained, model)
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                        '--init-encoder', model)
    assert f'checkpoint {model} has invalid preprocessing settings' in error
    assert 'crop_top=1.5' in error
    assert not (tmp_path / 'm.lcm').exists()


def test_init_encoder_bundled(subset, tmp_path):
    from liquid_control.model.checkpoint import load_checkpoint
    from liquid_control.paths import bundled_model

    # The bundled model's encoder takes frames of 42 x 48 pixels (height x width).
    out = tmp_path / 'm.lcm'
    assert main(['train', str(subset), '--out', str(out), *SETTINGS,
                 '--set', 'preprocessing={crop_top: 0.4, height: 42, width: 48}',
                 '--init-encoder', 'bundled']) == 0
    _, metadata = load_checkpoint(out)
    assert metadata['train_config']['init_encoder'] == str(bundled_model())


def test_failed_run_removes_empty_logs(subset, tmp_path, capsys):
    # The learning rates make the loss NaN in the first epoch, before any checkpoint.
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                        '--lr-encoder', '1e30', '--lr-recurrent', '1e30')
    assert 'the loss became' in error
    assert not (tmp_path / 'm_logs').exists()


# -- train: --resume ----------------------------------------------------------------------

@pytest.mark.parametrize('content, words', [
    ('truncated', ['is damaged or not a resume state']),
    ('list', ['contains a list']),
    ('no optimizer', ['optimizer state is missing']),
    ('text epoch', ["epoch is 'x'"]),
    ('pickle', ['is damaged or not a resume state']),
])
def test_resume_damaged_state(subset, trained, tmp_path, capsys, content, words):
    out = copy_run(trained, tmp_path / 'run')
    resume = out.parent / 'model_logs' / 'resume.pt'
    marker = tmp_path / 'PWNED'
    if content == 'truncated':
        resume.write_bytes(resume.read_bytes()[:500])
    elif content == 'list':
        torch.save([1, 2], resume)
    elif content == 'no optimizer':
        torch.save({'epoch': 1}, resume)
    elif content == 'text epoch':
        state = torch.load(resume, weights_only=True)
        state['epoch'] = 'x'
        torch.save(state, resume)
    else:
        torch.save({'optimizer': RunsCode(marker)}, resume)
    checkpoints = [out, out.with_name('model.last.lcm')]
    before = [path.read_bytes() for path in checkpoints]

    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume')
    assert 'resume.pt' in error
    for word in words:
        assert word in error
    assert not marker.exists()
    assert [path.read_bytes() for path in checkpoints] == before


@pytest.mark.parametrize('key, value, words', [
    ('average_updates', 'abc', ["average_updates is 'abc'"]),
    ('average_updates', -3, ['average_updates is -3']),
    ('average_updates', None, ['average_updates is None']),
    ('training_weights', {1: torch.zeros(1)}, ['training_weights is not a mapping']),
    ('training_weights', [1, 2], ['training_weights is not a mapping']),
])
def test_resume_damaged_average_state(subset, averaged, tmp_path, capsys, key, value,
                                      words):
    out = copy_run(averaged, tmp_path / 'run')
    resume = out.parent / 'model_logs' / 'resume.pt'
    state = torch.load(resume, weights_only=True)
    state[key] = value
    torch.save(state, resume)

    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume', '--set', 'ema_decay=0.9')
    assert 'resume.pt is not a resume state' in error
    for word in words:
        assert word in error


def test_resume_state_from_another_epoch(subset, trained, tmp_path, capsys):
    # A run stopped between saving the last checkpoint and the resume state.
    out = copy_run(trained, tmp_path / 'run')
    resume = out.parent / 'model_logs' / 'resume.pt'
    state = torch.load(resume, weights_only=True)
    state['epoch'] -= 1
    torch.save(state, resume)
    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '3',
                        '--resume')
    assert 'stopped while saving' in error
    assert f'from epoch {state["epoch"]}' in error


def test_resume_other_optimizer_groups(subset, trained, tmp_path, capsys):
    # The first run trained the encoder too, so its optimizer has one group more.
    out = copy_run(trained, tmp_path / 'run')
    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume', '--freeze-encoder')
    assert 'optimizer state' in error
    assert 'does not fit this run' in error


def first_parameter_state(state):
    """Return the optimizer state of the first parameter in a loaded resume.pt."""
    return state['optimizer']['state'][min(state['optimizer']['state'])]


@pytest.mark.parametrize('value, words', [
    (torch.zeros(7), 'has shape [7], but it needs [24, 3, 5, 5]'),
    (None, 'contains NaN or infinite values'),
])
def test_resume_optimizer_moment_invalid(subset, trained, tmp_path, capsys, value, words):
    out = copy_run(trained, tmp_path / 'run')
    resume = out.parent / 'model_logs' / 'resume.pt'
    state = torch.load(resume, weights_only=True)
    moments = first_parameter_state(state)
    moments['exp_avg'] = value if value is not None else torch.full_like(
        moments['exp_avg'], float('nan'))
    torch.save(state, resume)
    checkpoints = [out, out.with_name('model.last.lcm')]
    before = [path.read_bytes() for path in checkpoints]

    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume')
    assert 'exp_avg of parameter encoder.head.convolutions.0.weight' in error
    assert words in error
    assert [path.read_bytes() for path in checkpoints] == before


def test_resume_best_score_nan(subset, trained, tmp_path, capsys):
    # With NaN, any later epoch would count as better and replace the best checkpoint.
    out = copy_run(trained, tmp_path / 'run')
    resume = out.parent / 'model_logs' / 'resume.pt'
    state = torch.load(resume, weights_only=True)
    state['best_score'] = float('nan')
    torch.save(state, resume)
    before = out.read_bytes()
    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume')
    assert 'best_score is nan' in error
    assert out.read_bytes() == before


def test_resume_last_checkpoint_nan(subset, trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path / 'run')
    last = out.with_name('model.last.lcm')
    write_nan_weights(trained, last)
    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume')
    assert f'checkpoint {last} contains NaN or infinite values' in error


def test_resume_average_weights_nan(subset, averaged, tmp_path, capsys):
    out = copy_run(averaged, tmp_path / 'run')
    resume = out.parent / 'model_logs' / 'resume.pt'
    state = torch.load(resume, weights_only=True)
    state['training_weights']['core.cell.capacitance'].fill_(float('nan'))
    torch.save(state, resume)
    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume', '--set', 'ema_decay=0.9')
    assert 'the training weights in' in error
    assert 'NaN or infinite values in core.cell.capacitance' in error


# -- evaluate -----------------------------------------------------------------------------

def test_evaluate_nan_weights(subset, trained, tmp_path, capsys):
    model = tmp_path / 'diverged.lcm'
    write_nan_weights(trained, model)
    error = run_failing(capsys, 'evaluate', subset, '--model', model,
                        '--out', tmp_path / 'evaluation', '--no-plots')
    assert f'checkpoint {model} contains NaN or infinite values' in error
    assert not (tmp_path / 'evaluation' / 'metrics.json').exists()


def test_evaluate_invalid_crop_names_file(subset, trained, tmp_path, capsys):
    model = tmp_path / 'crop.lcm'
    write_invalid_crop(trained, model)
    error = run_failing(capsys, 'evaluate', subset, '--model', model,
                        '--out', tmp_path / 'evaluation', '--no-plots')
    assert f'checkpoint {model} has invalid preprocessing settings' in error
    assert 'crop_top=1.5' in error


def test_evaluate_trace_seconds_infinite(subset, trained, tmp_path, capsys):
    error = run_failing(capsys, 'evaluate', subset, '--model', trained,
                        '--out', tmp_path / 'evaluation', '--trace-seconds', 'inf')
    assert '--trace-seconds inf' in error
    assert not (tmp_path / 'evaluation').exists()


def test_evaluate_out_parent_is_file(subset, trained, tmp_path, capsys):
    (tmp_path / 'plain').write_text('not a folder\n')
    error = run_failing(capsys, 'evaluate', subset, '--model', trained,
                        '--out', tmp_path / 'plain' / 'evaluation', '--no-plots')
    assert 'is a file, not a folder' in error
    assert (tmp_path / 'plain').read_text() == 'not a folder\n'


def test_evaluate_same_source_twice(subset, trained, tmp_path, capsys):
    error = run_failing(capsys, 'evaluate', subset, f'{subset}/.', '--model', trained,
                        '--out', tmp_path / 'evaluation', '--no-plots')
    assert 'is the same data as' in error
    assert not (tmp_path / 'evaluation').exists()


def test_evaluate_output_file_is_folder(subset, trained, tmp_path, capsys):
    (tmp_path / 'evaluation' / 'metrics.json').mkdir(parents=True)
    error = run_failing(capsys, 'evaluate', subset, '--model', trained,
                        '--out', tmp_path / 'evaluation', '--no-plots', '--perturbations')
    assert 'metrics.json' in error


# -- compare ------------------------------------------------------------------------------

@pytest.mark.parametrize('arguments, words', [
    (['--models', 'cnn:8', 'lstm', 'cnn:8'], ['--models', 'cnn:8', 'more than once']),
    (['--models', 'cnn:8', '--seeds', '1', '1'], ['--seeds', 'more than once']),
    (['--models', 'cnn:8', '--seeds', '-1'], ['--seeds -1']),
    (['--models', 'lstm:'], ['lstm:', 'unit count']),
    (['--models', 'cnn:8', '--perturbations', 'noise:abc'], ['noise:abc']),
])
def test_compare_rejects_arguments(subset, tmp_path, capsys, arguments, words):
    error = run_failing(capsys, 'compare', subset, '--out', tmp_path / 'cmp',
                        *COMPARE_SETTINGS, *arguments)
    for word in words:
        assert word in error
    assert not (tmp_path / 'cmp').exists()


def test_compare_out_is_file(subset, tmp_path, capsys):
    (tmp_path / 'cmp').write_text('kept\n')
    error = run_failing(capsys, 'compare', subset, '--out', tmp_path / 'cmp',
                        *COMPARE_SETTINGS, '--models', 'cnn:8')
    assert 'is a file, not a folder' in error
    assert (tmp_path / 'cmp').read_text() == 'kept\n'


def test_compare_pretrained_file_is_folder(subset, tmp_path, capsys):
    folder = tmp_path / 'cmp'
    (folder / 'pretrained-s0.lcm').mkdir(parents=True)
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--set', 'pretrain_epochs=1', '--models', 'cnn:8')
    assert 'pretrained-s0.lcm is not a file' in error
    assert 'remove or rename it' in error
    # The check comes before training, so no model was trained in vain.
    assert not (folder / 'cnn-8-s0.lcm').exists()


def test_compare_reuse_damaged_checkpoint(subset, trained, tmp_path, capsys):
    folder = tmp_path / 'cmp'
    folder.mkdir()
    (folder / 'ncp_ltc-s0.lcm').write_bytes(trained.read_bytes()[:2000])
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'ncp_ltc', '--reuse')
    assert 'ncp_ltc-s0.lcm is truncated' in error
    assert 'delete the damaged file' in error


def test_compare_reuse_other_settings(subset, trained, tmp_path, capsys):
    # The trained model has a 48x24 input; this comparison uses 64x32.
    folder = tmp_path / 'cmp'
    folder.mkdir()
    shutil.copy(trained, folder / 'ncp_ltc-s0.lcm')
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--set', 'preprocessing={crop_top: 0.4, height: 32, width: 64}',
                        '--models', 'ncp_ltc', '--reuse')
    assert 'was trained with preprocessing' in error
    assert "'height': 32" in error
    assert not (folder / 'compare.md').exists()


# -- writing during training --------------------------------------------------------------

def test_trainer_write_errors_named(trained, tmp_path):
    # The early --out check cannot foresee a folder that breaks during the run, so the
    # writes themselves must turn OSError into CheckpointError.
    from types import SimpleNamespace

    from liquid_control.errors import CheckpointError
    from liquid_control.model.checkpoint import load_checkpoint
    from liquid_control.training.trainer import OutputPaths, Trainer

    (tmp_path / 'plain').write_text('not a folder\n')
    policy, metadata = load_checkpoint(trained)
    trainer = SimpleNamespace(policy=policy,
                              paths=OutputPaths.from_out(tmp_path / 'plain' / 'model.lcm'),
                              optimizer=torch.optim.AdamW(policy.parameters()))
    with pytest.raises(CheckpointError, match='cannot write checkpoint'):
        Trainer._save(trainer, trainer.paths.best, metadata)
    with pytest.raises(CheckpointError, match='cannot write the resume state'):
        Trainer._save_resume_state(trainer, 1, 0.5, 1, 0, 1.0)
    assert (tmp_path / 'plain').read_text() == 'not a folder\n'


# -- checkpoints with a valid checksum but a foreign training record ----------------------

def write_foreign_checkpoint(trained, path, **metadata_changes):
    """Save the trained policy to ``path`` with its metadata changed as given."""
    from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint

    policy, metadata = load_checkpoint(trained)
    save_checkpoint(path, policy, {**metadata, **metadata_changes})


@pytest.mark.parametrize('changes, words', [
    ({'train_config': [1]}, 'train_config is not a mapping'),
    ({'train_seconds': 'x'}, "train_seconds is 'x'"),
    ({'training_output_mean': {'angular_z': 'x'}}, 'not a number'),
])
def test_compare_reuse_foreign_metadata(subset, trained, tmp_path, capsys, changes, words):
    folder = tmp_path / 'cmp'
    folder.mkdir()
    write_foreign_checkpoint(trained, folder / 'ncp_ltc-s0.lcm', **changes)
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'ncp_ltc', '--reuse')
    assert words in error
    assert 'not written by liquid-control train' in error


def move_model_settings(trained, path, family_settings):
    """Save the trained run to ``path`` with its model settings under family_model."""
    from liquid_control.model.checkpoint import load_checkpoint

    saved = load_checkpoint(trained)[1]['train_config']
    moved = {**saved, 'model': {}, 'family_model': {'ncp_ltc': family_settings(saved)}}
    write_foreign_checkpoint(trained, path, train_config=moved)


def test_compare_reuse_merges_family_model(subset, trained_for_compare, tmp_path):
    # The same model settings written under family_model count as the same model.
    folder = tmp_path / 'cmp'
    folder.mkdir()
    move_model_settings(trained_for_compare, folder / 'ncp_ltc-s0.lcm',
                        lambda saved: saved['model'])
    arguments = ['compare', str(subset), '--out', str(folder), *COMPARE_SETTINGS,
                 '--models', 'ncp_ltc', '--reuse']
    assert main([str(item) for item in arguments]) == 0
    assert (folder / 'compare.md').is_file()
    # A reused model is scored, not trained again.
    assert not (folder / 'ncp_ltc-s0_logs').exists()


def test_compare_reuse_other_family_model(subset, trained, tmp_path, capsys):
    folder = tmp_path / 'cmp'
    folder.mkdir()
    move_model_settings(trained, folder / 'ncp_ltc-s0.lcm',
                        lambda saved: {**saved['model'], 'units': 5})
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'ncp_ltc', '--reuse')
    assert 'was trained with model' in error
    assert "'units': 5" in error


def test_compare_reuse_nan_weights(subset, trained_for_compare, tmp_path, capsys):
    folder = tmp_path / 'cmp'
    folder.mkdir()
    write_nan_weights(trained_for_compare, folder / 'ncp_ltc-s0.lcm')
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'ncp_ltc', '--reuse')
    assert 'ncp_ltc-s0.lcm contains NaN or infinite values' in error
    assert 'delete the damaged file' in error
    assert not (folder / 'compare.md').exists()


def test_compare_reuse_other_split(subset, trained, tmp_path, capsys):
    # The trained run had no test part, so it trained on this comparison's test frames.
    folder = tmp_path / 'cmp'
    folder.mkdir()
    shutil.copy(trained, folder / 'ncp_ltc-s0.lcm')
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'ncp_ltc', '--reuse')
    assert 'ncp_ltc-s0.lcm was not trained on the training part' in error
    assert 'its validation, test, training_windows differ' in error
    assert not (folder / 'compare.md').exists()


def test_compare_reuse_other_episodes(subset, trained_for_compare, tmp_path, capsys):
    from liquid_control.data.episodes import find_episodes

    # The model trained on both episodes, and this comparison scores part of the first.
    folder = tmp_path / 'cmp'
    folder.mkdir()
    shutil.copy(trained_for_compare, folder / 'ncp_ltc-s0.lcm')
    one_episode = find_episodes(subset)[0].folder
    error = run_failing(capsys, 'compare', one_episode, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'ncp_ltc', '--reuse')
    assert 'ncp_ltc-s0.lcm was not trained on the training part' in error
    assert 'the model was trained on 2 episode(s), but 1 are given' in error
    assert not (folder / 'compare.md').exists()


def write_moved_checkpoint(trained, path, **changes):
    """Save the trained run to ``path`` as if its episodes had been read from a folder
    that is gone (an import cache folder that a new importer version renamed)."""
    from liquid_control.model.checkpoint import load_checkpoint

    metadata = load_checkpoint(trained)[1]

    def move(name: str) -> str:
        return f'/gone/imports/subset-0000/{name.rsplit("/", 1)[-1]}'

    ranges = {key: [dict(item, episode=move(item['episode'])) for item in metadata[key]]
              for key in ('validation', 'test')}
    episodes = [move(name) for name in metadata['episodes']]
    write_foreign_checkpoint(trained, path, episodes=episodes, **ranges, **changes)


@pytest.mark.parametrize('keep_digest', [False, True], ids=['same-source', 'same-frames'])
def test_compare_reuse_same_data_elsewhere(subset, trained_for_compare, tmp_path,
                                           keep_digest):
    # Without the digest (older checkpoints) the source given to train must match; with
    # it, the frames must.
    changes = ({'data_sources': ['/gone']} if keep_digest else
               {'data_sources': [str(subset)], 'training_data_sha256': None})
    folder = tmp_path / 'cmp'
    folder.mkdir()
    write_moved_checkpoint(trained_for_compare, folder / 'ncp_ltc-s0.lcm', **changes)
    arguments = ['compare', str(subset), '--out', str(folder), *COMPARE_SETTINGS,
                 '--models', 'ncp_ltc', '--reuse']
    assert main([str(item) for item in arguments]) == 0
    assert not (folder / 'ncp_ltc-s0_logs').exists()


def test_compare_reuse_other_frames_same_paths(subset, trained_for_compare, tmp_path, capsys):
    folder = tmp_path / 'cmp'
    folder.mkdir()
    write_foreign_checkpoint(trained_for_compare, folder / 'ncp_ltc-s0.lcm',
                             training_data_sha256='0' * 64)
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'ncp_ltc', '--reuse')
    assert 'its frames or labels differ (training_data_sha256)' in error
    # The paths are the same, so the advice must not ask for the same paths.
    assert 'to train it again, delete it or drop --reuse' in error


def test_resume_foreign_metadata(subset, trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path / 'run')
    last = out.with_name('model.last.lcm')
    write_foreign_checkpoint(trained, last, train_config=[1])
    before = last.read_bytes()
    error = run_failing(capsys, 'train', subset, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume')
    assert 'train_config is not a mapping' in error
    assert last.read_bytes() == before


# -- models too large for the checkpoint loader -------------------------------------------

def test_train_model_too_large_to_load(subset, tmp_path, capsys):
    # An fc_ltc of 362 neurons allocates about 100.7 million tensor elements, so
    # load_checkpoint would reject every checkpoint of the run.
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                        '--family', 'fc_ltc', '--units', '362')
    assert 'fc_ltc policy (units=362' in error
    assert 'more than the limit of 100,000,000' in error
    assert 'lower model.units' in error
    assert not (tmp_path / 'm.lcm').exists()


@pytest.mark.parametrize('family, settings, expected', [
    ('cnn', ['--units', '10001'], 'units=10001 (allowed 1..10000)'),
    ('ncp_ltc', ['--set', 'model.encoder={channels: [8, 1024], kernel_sizes: [3, 3], '
                 'strides: [2, 2], features_per_channel: 10}'],
     'wiring input_size=10240 (allowed 1..10000)'),
])
def test_train_size_beyond_loader_limit(subset, tmp_path, capsys, family, settings, expected):
    # Both stay far below the element limit: the loader's limits on single sizes reject them.
    error = run_failing(capsys, 'train', subset, '--out', tmp_path / 'm.lcm', *SETTINGS,
                        '--family', family, *settings)
    assert f'the model is too large: {expected}' in error
    assert not (tmp_path / 'm.lcm').exists()


def test_compare_model_too_large_to_load(subset, tmp_path, capsys):
    folder = tmp_path / 'cmp'
    error = run_failing(capsys, 'compare', subset, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'cnn:8', 'fc_ltc:362')
    assert 'model fc_ltc-362: the model is too large' in error
    # The check comes before training, so the first model was not trained in vain.
    assert not (folder / 'cnn-8-s0.lcm').exists()


# -- IMU readings -------------------------------------------------------------------------

def write_with_imu(subset, folder, scale=1.0):
    """Write the episodes of ``subset`` to ``folder`` with recorded IMU readings; return it."""
    import numpy as np

    from liquid_control.data.episodes import (EncodedImage, EpisodeWriter, FrameLabels,
                                              find_episodes)

    for episode in find_episodes(subset):
        writer = EpisodeWriter(folder, {'source': {'kind': 'test subset with IMU'},
                                        'commands': episode.metadata.get('commands', {})},
                               fsync_interval_s=None)
        for index in range(len(episode)):
            imu = scale * np.float32([0.01 * index, 0.0, 0.1, 0.2, 0.0, 9.8])
            labels = FrameLabels(imu=imu, imu_status='recorded',
                                 linear_x=float(episode.command('linear_x')[index]),
                                 angular_z=float(episode.command('angular_z')[index]),
                                 command_status='ok', command_age_s=0.0)
            writer.add(int(episode.stamp_ns[index]),
                       EncodedImage(episode.frame_path(index).read_bytes(), 'jpg'), labels)
        writer.close('test subset with IMU')
    return folder


def test_data_digest_covers_used_imu(subset, tmp_path):
    from liquid_control.data.episodes import find_episodes
    from liquid_control.training.config import TrainConfig
    from liquid_control.training.trainer import prepare_data, training_data_digest

    def digest(folder, use_imu):
        config = TrainConfig.from_dict({'use_imu': use_imu, 'sequence_length': 8,
                                        'preprocessing': {'height': 24, 'width': 48}})
        return training_data_digest(prepare_data(config, find_episodes(folder)))

    first = write_with_imu(subset, tmp_path / 'first')
    second = write_with_imu(subset, tmp_path / 'second', scale=2.0)
    assert digest(first, 'yes') != digest(second, 'yes')
    # Without IMU input the digest stays the one of the frames, labels and split alone.
    assert digest(first, 'no') == digest(subset, 'auto')


def test_compare_reuse_other_imu_use(subset, trained_for_compare, tmp_path, capsys):
    # The checkpoint has no IMU input, but this comparison's models get one.
    with_imu = write_with_imu(subset, tmp_path / 'imu')
    folder = tmp_path / 'cmp'
    folder.mkdir()
    shutil.copy(trained_for_compare, folder / 'ncp_ltc-s0.lcm')
    error = run_failing(capsys, 'compare', with_imu, '--out', folder, *COMPARE_SETTINGS,
                        '--models', 'ncp_ltc', '--reuse')
    assert 'ncp_ltc-s0.lcm was trained without IMU input' in error
    assert 'delete it or drop --reuse' in error
    assert not (folder / 'compare.md').exists()


# -- train --resume with other data -------------------------------------------------------

def test_resume_other_data(subset, trained, tmp_path, capsys):
    from liquid_control.data.episodes import find_episodes

    # One of the two episodes was deleted between the runs.
    data = tmp_path / 'data'
    shutil.copytree(subset, data)
    shutil.rmtree(find_episodes(data)[0].folder)
    out = copy_run(trained, tmp_path / 'run')
    checkpoints = [out, out.with_name('model.last.lcm')]
    before = [path.read_bytes() for path in checkpoints]
    error = run_failing(capsys, 'train', data, '--out', out, *SETTINGS, '--epochs', '2',
                        '--resume')
    assert 'the data differs from the run being resumed' in error
    assert [path.read_bytes() for path in checkpoints] == before
