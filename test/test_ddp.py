"""Distributed data parallel training: two CPU processes started by torchrun (gloo)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import VENV_BIN

from liquid_control.model.checkpoint import load_checkpoint

TORCHRUN = VENV_BIN / 'torchrun'


def test_two_process_training_writes_one_checkpoint(subset, tmp_path):
    if not TORCHRUN.is_file():
        pytest.skip(f'torchrun not found at {TORCHRUN}')
    out = tmp_path / 'ddp.lcm'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    # --standalone runs the rendezvous on localhost with a free port.
    command = [str(TORCHRUN), '--standalone', '--nproc_per_node=2',
               str(Path(sys.executable).parent / 'liquid-control'), 'train', str(subset),
               '--out', str(out), '--epochs', '2', '--sequence-length', '8',
               '--batch-size', '4', '--threads', '1', '--validation-fraction', '0.25',
               '--no-progress', '--set', 'stride=2', '--set', 'warmup_frames=2',
               '--set', 'preprocessing={crop_top: 0.4, height: 24, width: 48}',
               # Both ranks pretrain on three horizons and fit the core alone, and the
               # encoder joins the distributed training only in epoch 2.
               '--set', 'pretrain_horizons=[-2, 0, 2]', '--set', 'core_warmup_epochs=2',
               '--set', 'freeze_encoder_epochs=1']
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert out.is_file()

    _, metadata = load_checkpoint(out.with_name('ddp.last.lcm'))
    assert metadata['world_size'] == 2
    assert metadata['epoch'] == 2
    # The packaged config pretrains the encoder first, with both ranks.
    assert metadata['pretraining']['steps'] > 0
    assert metadata['pretraining']['validation_mae'] > 0
    # Only rank 0 writes logs: one row per epoch, not one per process.
    with open(tmp_path / 'ddp_logs' / 'log.csv', newline='') as stream:
        assert [int(row['epoch']) for row in csv.DictReader(stream)] == [1, 2]
    assert 'rank 1 of 2' in completed.stderr
    assert 'the encoder stays frozen for the first 1 epoch(s)' in completed.stderr
    assert metadata['core_warmup']['epochs'] == 2
    assert completed.stderr.count('fitted the core alone on cached encoder features') == 1
