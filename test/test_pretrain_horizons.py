"""Encoder pretraining on the commands of other frames: targets, masks, settings and a run."""

import math

import numpy as np
import pytest
import torch

from training_data import TINY_SETTINGS

from liquid_control.data.episodes import find_episodes
from liquid_control.errors import ConfigError
from liquid_control.model.checkpoint import load_checkpoint
from liquid_control.training.config import TrainConfig
from liquid_control.training.dataset import CachedEpisode
from liquid_control.training.pretrain import horizon_targets, usable_frames
from liquid_control.training.trainer import pretraining_key, train


def _episode(length: int, run_start=None) -> CachedEpisode:
    commands = np.arange(length, dtype=np.float32)
    return CachedEpisode(
        name='synthetic', frames=np.zeros((length, 3, 4, 4), np.uint8),
        timestamps=np.arange(length) * 0.05, dt=np.full(length, 0.05, np.float32),
        targets=np.stack([commands, 10 * commands], axis=1), imu=None,
        valid=np.ones(length, bool), episode=None, run_start=run_start)


def test_horizon_targets_run_and_usable():
    # Frames 0-4 and 5-9 are two runs, and frame 8 is held out.
    episode = _episode(10, run_start=np.array([0] * 5 + [5] * 5))
    usable = usable_frames([episode], np.zeros(9, np.int64),
                           np.array([0, 1, 2, 3, 4, 5, 6, 7, 9]))
    targets, mask = horizon_targets([episode], np.zeros(3, np.int64), np.array([2, 4, 6]),
                                    [-2, 0, 2], usable)
    assert targets.shape == (3, 3, 2)
    # Frame 2: 0, 2 and 4 all lie in its run.
    np.testing.assert_array_equal(mask[0], [True, True, True])
    np.testing.assert_array_equal(targets[0, :, 0], [0, 2, 4])
    np.testing.assert_array_equal(targets[0, :, 1], [0, 20, 40])
    # Frame 4: frame 6 lies after the time gap.
    np.testing.assert_array_equal(mask[1], [True, True, False])
    np.testing.assert_array_equal(targets[1, :, 0], [2, 4, 0])
    # Frame 6: frame 4 lies before the gap and frame 8 is held out.
    np.testing.assert_array_equal(mask[2], [False, True, False])
    assert targets[2, 1, 0] == 6


def test_horizon_targets_episode_ends():
    episode = _episode(4)
    usable = usable_frames([episode], np.zeros(4, np.int64), np.arange(4))
    targets, mask = horizon_targets([episode], np.zeros(2, np.int64), np.array([0, 3]),
                                    [-1, 0, 1], usable)
    np.testing.assert_array_equal(mask, [[False, True, True], [True, True, False]])
    np.testing.assert_array_equal(targets[:, :, 0], [[0, 0, 1], [2, 3, 0]])


@pytest.mark.parametrize('horizons', [[4], [0, 4, 4], []])
def test_horizons_need_zero_once(horizons):
    with pytest.raises(ConfigError, match='pretrain_horizons .* is invalid'):
        TrainConfig.from_dict({**TINY_SETTINGS, 'pretrain_horizons': horizons})


def test_horizons_are_integer_lists():
    with pytest.raises(ConfigError, match='pretrain_horizons'):
        TrainConfig.from_dict({**TINY_SETTINGS, 'pretrain_horizons': 4})
    with pytest.raises(ConfigError, match='pretrain_horizons'):
        TrainConfig.from_dict({**TINY_SETTINGS, 'pretrain_horizons': [0, 2.5]})


def test_pretraining_key_horizons():
    plain = TrainConfig.from_dict(dict(TINY_SETTINGS))
    current = TrainConfig.from_dict({**TINY_SETTINGS, 'pretrain_horizons': [0]})
    ahead = TrainConfig.from_dict({**TINY_SETTINGS, 'pretrain_horizons': [0, 4]})
    # The default leaves the key as it was before the setting existed, so pretrained
    # encoders saved then still match.
    assert pretraining_key(plain) == pretraining_key(current)
    assert 'pretrain_horizons' not in pretraining_key(plain)
    assert pretraining_key(plain) != pretraining_key(ahead)


def test_training_with_horizons(subset, tmp_path):
    torch.set_num_threads(1)
    config = TrainConfig.from_dict({**TINY_SETTINGS, 'pretrain_epochs': 8,
                                    'pretrain_batch_size': 16, 'pretrain_patience': 50,
                                    'pretrain_horizons': [-2, 0, 4], 'epochs': 1})
    result = train(config, find_episodes(subset), tmp_path / 'model.lcm', progress=False)
    policy, metadata = load_checkpoint(result.paths.best)
    pretraining = metadata['pretraining']
    assert pretraining['steps'] == 8 * pretraining['steps_per_epoch'] > 0
    assert pretraining['last_loss'] < pretraining['first_loss']
    assert math.isfinite(pretraining['validation_mae'])
    assert metadata['train_config']['pretrain_horizons'] == [-2, 0, 4]
    # The read-out with its three horizons is dropped: the policy keeps its own outputs.
    assert list(policy.output_names) == list(config.outputs)


def test_horizons_error_names_integers():
    with pytest.raises(ConfigError, match=r"pretrain_horizons=\[0, 'a'\] is invalid: use a "
                                          'list of integers'):
        TrainConfig.from_dict({**TINY_SETTINGS, 'pretrain_horizons': (0, 'a')})
