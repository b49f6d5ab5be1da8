"""Unit tests of the training pieces: config, augmentation, split, batches and loss."""

import json
import math
import numpy as np
import pytest
import torch

from liquid_control.data.augment import (Augmentation, add_gaussian_noise,
                                         adjust_brightness_contrast, mirror, shift)
from liquid_control.errors import ConfigError, DataError
from liquid_control.training.config import TrainConfig, load_train_config, parse_overrides
from liquid_control.training.dataset import (TEST, TRAIN, VALIDATION, CachedEpisode,
                                             EpisodeSlice, assign_roles, collate,
                                             mirror_signs, split_episodes, with_burn_in)
from liquid_control.training.loss import (correlation_loss, sequence_loss,
                                          sharp_turn_weights)
from liquid_control.training.pretrain import (WARMUP_STEPS, WeightAverage, augment_frame,
                                              rate_factor)


class FakeEpisode:
    """Just enough of ``Episode`` for the split: timestamps, validity and windows."""

    def __init__(self, timestamps, valid=None):
        self.timestamps = np.asarray(timestamps, np.float64)
        self.valid = np.ones(len(self.timestamps), bool) if valid is None else valid
        self.folder = 'fake'

    def __len__(self):
        return len(self.timestamps)

    def windows(self, length, stride, max_gap_s):
        starts = np.concatenate([[0], np.nonzero(np.diff(self.timestamps) > max_gap_s)[0] + 1,
                                 [len(self)]])
        windows = []
        for first, last in zip(starts[:-1], starts[1:]):
            for start in range(first, last - length + 1, stride):
                windows.append(np.arange(start, start + length))
        return windows


def cached(timestamps, name='fake', targets=None):
    episode = FakeEpisode(timestamps)
    count = len(episode)
    if targets is None:
        targets = np.zeros((count, 1), np.float32)
    return CachedEpisode(
        name=name, frames=np.zeros((count, 3, 8, 8), np.uint8), timestamps=episode.timestamps,
        dt=np.full(count, 0.05, np.float32), targets=targets, imu=None,
        valid=np.ones(count, bool), episode=episode)


# -- config ------------------------------------------------------------------------------

def test_config_overrides_dotted_keys():
    overrides = parse_overrides(['family=lstm', 'model.units=64', 'augment.shift_pixels=2',
                                 'max_minutes=null'])
    config = TrainConfig().with_overrides(overrides)
    assert config.family == 'lstm'
    assert config.model == {'units': 64}
    assert config.augmentation().shift_pixels == 2
    assert config.max_minutes is None


def test_float_settings_store_floats():
    from liquid_control.training.trainer import pretraining_key
    from_yaml = TrainConfig(max_minutes=40, pretrain_minutes=5, weight_decay=0)
    from_command_line = TrainConfig(max_minutes=40.0, pretrain_minutes=5.0, weight_decay=0.0)
    assert type(from_yaml.max_minutes) is float
    assert type(from_yaml.weight_decay) is float
    assert pretraining_key(from_yaml) == pretraining_key(from_command_line)
    assert type(TrainConfig(epochs=3).epochs) is int
    assert TrainConfig(max_minutes=None).max_minutes is None


def test_config_round_trips_through_dict():
    config = TrainConfig(outputs=('angular_z',), output_weights=(2.0,), seed=3)
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize('values, word', [
    ({'family': 'transformer'}, 'family'),
    ({'warmup_frames': 16, 'sequence_length': 16}, 'warmup_frames'),
    ({'validation_fraction': -0.1}, 'validation_fraction'),
    ({'validation_fraction': 0.9}, 'validation_fraction'),
    ({'test_fraction': 0.8}, 'test_fraction'),
    ({'output_weights': [1.0]}, 'output_weights'),
    ({'epoch': 3}, 'unknown'),
    ({'augment': {'noise_variance_max': 2.0}}, 'noise_variance_max'),
    ({'augment': {'blur': 1.0}}, 'unknown augmentation'),
    ({'ema_decay': 1.0}, 'ema_decay'),
    ({'augment': {'mirror_probability': 1.5}}, 'mirror_probability'),
    ({'augment': {'mirror_probability': 'abc'}}, "mirror_probability='abc' is invalid"),
    ({'augment': {'mirror_probability': True}}, 'mirror_probability=True is invalid'),
    ({'loss': 'l3'}, 'loss'),
    ({'validation_blocks': 0}, 'validation_blocks=0 is invalid'),
    ({'validation_blocks': 'many'}, 'validation_blocks'),
    ({'validation_blocks': 3, 'split': 'episode'}, 'needs split=time or split=episode_end'),
    ({'burn_in_frames': 17}, 'burn_in_frames=17 is invalid'),
    ({'burn_in_frames': -1}, 'burn_in_frames=-1 is invalid'),
    ({'burn_in_frames': 2.5}, 'burn_in_frames=2.5 is invalid'),
    ({'burn_in_frames': True}, 'burn_in_frames=True is invalid'),
])
def test_config_rejects_invalid_value(values, word):
    with pytest.raises(ConfigError, match=word):
        TrainConfig.from_dict(values)


def test_family_model_applies_per_family():
    from liquid_control.data.preprocess import Preprocessing
    from liquid_control.training.trainer import build_policy_config, pretraining_key
    overrides = parse_overrides(['model.units=19', 'family_model.ncp_ltc={units: 24, '
                                 'sensory_sigma: [1.0, 2.0], encoder: {dropout: 0.1}}'])
    ltc = TrainConfig().with_overrides(overrides)
    assert ltc.model_settings() == {'units': 24, 'sensory_sigma': [1.0, 2.0],
                                    'encoder': {'dropout': 0.1}}
    lstm = ltc.with_overrides({'family': 'lstm'})
    assert lstm.model_settings() == {'units': 19}
    assert TrainConfig.from_dict(ltc.to_dict()) == ltc

    preprocessing = Preprocessing.from_dict({'height': 24, 'width': 32})
    policy_config = build_policy_config(ltc, preprocessing, False, ('rad/s', 'm/s'))
    assert (policy_config.units, policy_config.sensory_sigma) == (24, (1.0, 2.0))
    assert build_policy_config(lstm, preprocessing, False, ('rad/s', 'm/s')).units == 19
    # An encoder setting of one family gives that family its own pretraining.
    assert pretraining_key(ltc) != pretraining_key(lstm)
    assert pretraining_key(lstm) == pretraining_key(TrainConfig(model={'units': 19}))


@pytest.mark.parametrize('family_model, word', [
    ({'ltc': {'units': 8}}, "family_model has settings for 'ltc'"),
    ({'ncp_ltc': 3}, 'family_model.ncp_ltc=3 is invalid'),
    ({'ncp_ltc': {'frame_gap': 20}}, 'frame_gap=20'),
])
def test_family_model_rejects_bad_settings(family_model, word):
    with pytest.raises(ConfigError, match=word):
        TrainConfig.from_dict({'family_model': family_model})


def test_family_model_override_takes_one_mapping():
    with pytest.raises(ConfigError, match=r'write family_model.ncp_ltc=\{units: ...\}'):
        TrainConfig().with_overrides(parse_overrides(['family_model.ncp_ltc.units=3']))


def test_family_model_policy_errors():
    from liquid_control.data.preprocess import Preprocessing
    from liquid_control.training.trainer import build_policy_config
    config = TrainConfig(family_model={'ncp_ltc': {'sensory_sigma': [2.0, 1.0]}})
    preprocessing = Preprocessing.from_dict({'height': 24, 'width': 32})
    with pytest.raises(ConfigError, match='sensory_sigma'):
        build_policy_config(config, preprocessing, False, ('rad/s', 'm/s'))


def test_config_file_errors_name_the_file(tmp_path):
    broken = tmp_path / 'broken.yaml'
    broken.write_text('family: [unclosed\n')
    with pytest.raises(ConfigError, match='broken.yaml'):
        load_train_config(broken)
    listed = tmp_path / 'list.yaml'
    listed.write_text('- a\n- b\n')
    with pytest.raises(ConfigError, match='mapping'):
        load_train_config(listed)
    with pytest.raises(ConfigError, match='missing.yaml'):
        load_train_config(tmp_path / 'missing.yaml')


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match='KEY=VALUE'):
        parse_overrides(['lr_encoder'])


def test_packaged_config_loads():
    from liquid_control.paths import config_file
    config = load_train_config(config_file('train.yaml'))
    assert config.family == 'ncp_ltc'


# -- augmentation ------------------------------------------------------------------------

def test_augmentation_keeps_shape_and_range():
    frames = np.random.default_rng(0).random((5, 3, 12, 16), dtype=np.float32)
    augmentation = Augmentation(probability=1.0, shadow_probability=1.0, noise_probability=1.0)
    output = augmentation.apply(frames, np.random.default_rng(1))
    assert output.shape == frames.shape
    assert output.dtype == np.float32
    assert output.min() >= 0.0
    assert output.max() <= 1.0
    assert not np.allclose(output, frames)


def test_augmentation_is_seeded():
    frames = np.random.default_rng(0).random((4, 3, 12, 16), dtype=np.float32)
    augmentation = Augmentation(probability=1.0)
    first = augmentation.apply(frames, np.random.default_rng(7))
    second = augmentation.apply(frames, np.random.default_rng(7))
    np.testing.assert_array_equal(first, second)


def test_augmentation_off_returns_copy():
    frames = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    output = Augmentation(probability=0.0).apply(frames, np.random.default_rng(0))
    np.testing.assert_array_equal(output, frames)
    assert output is not frames


def test_shift_moves_pixels():
    frames = np.zeros((1, 3, 5, 5), np.float32)
    frames[..., 2, 2] = 1.0
    moved = shift(frames, 1, -2)
    assert moved[0, 0, 3, 0] == 1.0
    assert moved.sum() == 3.0


def test_gaussian_noise_has_requested_variance():
    frames = np.full((1, 3, 100, 100), 0.5, np.float32)
    noisy = add_gaussian_noise(frames, np.random.default_rng(0), 0.01)
    assert abs(float(np.var(noisy - frames)) - 0.01) < 0.001


def test_brightness_shift_adds_delta():
    frames = np.full((1, 3, 2, 2), 0.5, np.float32)
    output = adjust_brightness_contrast(frames, delta=0.1, factor=1.0)
    np.testing.assert_allclose(output, 0.6, atol=1e-6)


# -- split -------------------------------------------------------------------------------

def test_time_split_takes_last_frames_across_episodes():
    roles = assign_roles([400, 600], [10.0, 0.0], 'time', validation_fraction=0.2,
                         test_fraction=0.1)
    # The episode starting at 0 s comes first in time, so the tail is the other one.
    assert (roles[1] == TRAIN).all()
    assert (roles[0][-100:] == TEST).all()
    assert (roles[0][-300:-100] == VALIDATION).all()
    assert (roles[0][:100] == TRAIN).all()


def test_validation_blocks_end_each_section():
    roles = assign_roles([1000], [0.0], 'time', validation_fraction=0.2, test_fraction=0.1,
                         validation_blocks=4)[0]
    # 900 frames before the test part, four sections of 225, the last 50 of each held out.
    held_out = [(int(start), int(stop)) for start, stop in _runs_of(roles == VALIDATION)]
    assert held_out == [(175, 225), (400, 450), (625, 675), (850, 900)]
    assert (roles[900:] == TEST).all()
    assert np.count_nonzero(roles == TRAIN) == 700


def test_validation_blocks_follow_recording_order():
    # The 600-frame episode starts first, so the numbering runs through it, then the other.
    roles = assign_roles([400, 600], [10.0, 0.0], 'time', validation_fraction=0.2,
                         test_fraction=0.1, validation_blocks=2)
    assert [tuple(map(int, run)) for run in _runs_of(roles[1] == VALIDATION)] == [(350, 450)]
    assert [tuple(map(int, run)) for run in _runs_of(roles[0] == VALIDATION)] == [(200, 300)]
    assert (roles[0][300:] == TEST).all()


def test_validation_blocks_per_episode_end():
    roles = assign_roles([200, 400], [0.0, 100.0], 'episode_end', validation_fraction=0.25,
                         validation_blocks=2)
    assert [tuple(map(int, run)) for run in _runs_of(roles[0] == VALIDATION)] == [
        (75, 100), (175, 200)]
    assert [tuple(map(int, run)) for run in _runs_of(roles[1] == VALIDATION)] == [
        (150, 200), (350, 400)]


def test_training_windows_keep_away_from_blocks():
    episode = cached(np.arange(400) * 0.05)
    split = split_episodes([episode], 'time', 0.2, sequence_length=10, stride=1,
                           max_gap_s=0.5, validation_blocks=2)
    bounds = [(s.start, s.stop) for s in split.validation_segments]
    assert bounds == [(160, 200), (360, 400)]
    # No window comes within one window length of the first block, before or after it.
    for _, window in split.train_windows:
        assert window[-1] < 160 - 10 or window[0] >= 200 + 10
    assert any(window[0] == 210 for _, window in split.train_windows)


def test_validation_blocks_shorter_than_window_raise():
    # 20 validation frames in 4 blocks of 5, shorter than a 10-frame window.
    with pytest.raises(DataError, match='validation_blocks=4 makes validation stretches of '
                                        '5 frames, fewer than 10'):
        split_episodes([cached(np.arange(200) * 0.05)], 'time', 0.1, sequence_length=10,
                       stride=1, max_gap_s=0.5, validation_blocks=4)


def test_no_windows_error_names_validation_blocks():
    # Blocks of 12 frames with 10 frames kept free on each side leave no room for windows.
    with pytest.raises(DataError, match=r'validation_blocks \(5\)'):
        split_episodes([cached(np.arange(100) * 0.05)], 'time', 0.6, sequence_length=10,
                       stride=1, max_gap_s=0.5, validation_blocks=5)


def _runs_of(mask: np.ndarray):
    """Return (start, stop) of every run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_episode_split_holds_out_whole_episodes():
    roles = assign_roles([100, 100, 100], [0, 1, 2], 'episode', 0.2, seed=0)
    kinds = sorted(int(np.unique(role)[0]) for role in roles)
    assert kinds == [TRAIN, TRAIN, VALIDATION]
    with pytest.raises(DataError, match='at least 2 episodes'):
        assign_roles([100], [0], 'episode', 0.2)


def test_training_windows_stay_one_window_before_validation():
    episode = cached(np.arange(200) * 0.05)
    split = split_episodes([episode], 'time', 0.25, sequence_length=10, stride=1,
                           max_gap_s=0.5)
    first_validation = split.validation_segments[0].start
    assert first_validation == 150
    last_trained = max(int(window[-1]) for _, window in split.train_windows)
    assert last_trained < first_validation - 10


def test_validation_segments_break_at_gaps():
    stamps = np.arange(100) * 0.05
    stamps[60:] += 5.0
    split = split_episodes([cached(stamps)], 'time', 0.5, sequence_length=5, stride=5,
                           max_gap_s=0.5)
    bounds = [(s.start, s.stop) for s in split.validation_segments]
    assert bounds == [(50, 60), (60, 100)]
    for _, window in split.train_windows:
        assert not (window[0] < 60 <= window[-1])


def test_split_without_validation_trains_everything():
    episode = cached(np.arange(200) * 0.05)
    split = split_episodes([episode], 'time', 0.0, sequence_length=10, stride=1,
                           max_gap_s=0.5)
    assert split.validation_segments == []
    assert split.test_segments == []
    assert max(int(window[-1]) for _, window in split.train_windows) == 199


def test_split_with_empty_validation_part_raises():
    # 0.001 of 200 frames rounds to no frame at all.
    with pytest.raises(DataError, match='validation_fraction=0.001'):
        split_episodes([cached(np.arange(200) * 0.05)], 'time', 0.001, sequence_length=10,
                       stride=1, max_gap_s=0.5)


def test_split_without_room_for_windows_raises():
    with pytest.raises(DataError, match='no training windows'):
        split_episodes([cached(np.arange(20) * 0.05)], 'time', 0.5, sequence_length=16,
                       stride=1, max_gap_s=0.5)


# -- batches -----------------------------------------------------------------------------

def test_collate_carries_true_time_deltas():
    stamps = np.array([0.0, 0.05, 0.10, 0.18, 0.21, 0.26])
    episode = cached(stamps, targets=np.arange(6, dtype=np.float32)[:, None])
    from liquid_control.evaluation.replay import frame_intervals
    episode.dt = frame_intervals(stamps, 0.5)
    batch = collate([episode], [(0, np.arange(1, 6))], None, None)
    np.testing.assert_allclose(batch['dt'][0], [0.05, 0.05, 0.08, 0.03, 0.05], atol=1e-6)
    np.testing.assert_array_equal(batch['targets'][0, :, 0], [1, 2, 3, 4, 5])
    assert batch['frames'].shape == (1, 5, 3, 8, 8)
    assert batch['imu'] is None


def test_burn_in_prepends_earlier_frames():
    # Two runs of 10 frames with a 12 s gap between them.
    episode = cached(np.concatenate([np.arange(10) * 0.05, 12.0 + np.arange(10) * 0.05]))
    episode.run_start = np.repeat([0, 10], 10)
    chosen = [(0, np.arange(4, 8)), (0, np.arange(2, 6)), (0, np.arange(12, 16)),
              (0, np.arange(13, 17))]
    longer, complete = with_burn_in([episode], chosen, 3)
    assert complete.tolist() == [True, False, False, True]
    assert [index for index, _ in longer] == [0, 0, 0, 0]
    np.testing.assert_array_equal(longer[0][1], [1, 2, 3, 4, 5, 6, 7])
    # Where the frames before a window are missing (before the run or the recording),
    # its first frame is repeated in their place.
    np.testing.assert_array_equal(longer[1][1], [2, 2, 2, 2, 3, 4, 5])
    np.testing.assert_array_equal(longer[2][1], [12, 12, 12, 12, 13, 14, 15])
    np.testing.assert_array_equal(longer[3][1], [10, 11, 12, 13, 14, 15, 16])


# Augmentation that only mirrors, so the expected batch is known exactly.
ONLY_MIRROR = Augmentation(probability=0.0, mirror_probability=1.0)


def test_collate_mirrors_frames_and_labels():
    count = 4
    episode = cached(np.arange(count) * 0.05,
                     targets=np.tile(np.float32([[0.5, 0.8]]), (count, 1)))
    episode.frames = np.random.default_rng(0).integers(0, 255, (count, 3, 8, 8), np.uint8)
    episode.imu = np.tile(np.float32([[0.1, 0.2, 0.3, 1.0, 2.0, 9.8]]), (count, 1))
    signs = mirror_signs(['angular_z', 'linear_x'])
    batch = collate([episode], [(0, np.arange(count))], np.random.default_rng(1),
                    ONLY_MIRROR, signs)
    np.testing.assert_array_equal(batch['frames'][0],
                                  episode.frames[:, :, :, ::-1].astype(np.float32) / 255.0)
    np.testing.assert_allclose(batch['targets'][0], [[-0.5, 0.8]] * count)
    np.testing.assert_allclose(batch['imu'][0], [[-0.1, 0.2, -0.3, 1.0, -2.0, 9.8]] * count)
    # The cached episode itself is unchanged.
    np.testing.assert_allclose(episode.targets[0], [0.5, 0.8])

    with pytest.raises(ValueError, match='output_signs'):
        collate([episode], [(0, np.arange(count))], np.random.default_rng(1), ONLY_MIRROR)


def test_mirror_off_draws_no_random_numbers():
    # Runs without mirroring keep the random draws, and so the results, of earlier versions.
    rng = np.random.default_rng(3)
    assert not Augmentation(mirror_probability=0.0).draws_mirror(rng)
    assert rng.random() == np.random.default_rng(3).random()
    mirrored = [Augmentation(mirror_probability=0.5).draws_mirror(rng) for _ in range(400)]
    assert 150 < sum(mirrored) < 250


def test_pretraining_mirror_negates_targets():
    frame = np.random.default_rng(0).random((1, 3, 6, 10), dtype=np.float32)
    targets = np.float32([0.25, 0.6])
    augmented = augment_frame(frame, targets, ONLY_MIRROR, np.random.default_rng(0),
                              mirror_signs(['angular_z', 'linear_x']))
    np.testing.assert_array_equal(augmented, mirror(frame))
    np.testing.assert_allclose(targets, [-0.25, 0.6])


def test_mirror_signs_reject_unknown_outputs():
    with pytest.raises(ConfigError, match='linear_y'):
        mirror_signs(['angular_z', 'linear_y'])


def test_episode_slice_exposes_a_range():
    class Source:
        timestamps = np.arange(10) * 0.1
        valid = np.ones(10, bool)
        has_imu = False
        imu = np.full((10, 6), np.nan, np.float32)
        metadata = {}
        folder = 'ep'

        def __len__(self):
            return 10

        def command(self, name):
            return np.arange(10, dtype=np.float32)

        def load_frame(self, index):
            return np.full((2, 2, 3), index, np.uint8)

    view = EpisodeSlice(Source(), 4, 7)
    assert len(view) == 3
    np.testing.assert_array_equal(view.command('angular_z'), [4, 5, 6])
    assert view.load_frame(0)[0, 0, 0] == 4
    assert not view.has_imu
    with pytest.raises(DataError, match='outside'):
        EpisodeSlice(Source(), 5, 11)


# -- loss --------------------------------------------------------------------------------

def test_loss_ignores_masked_and_warmup_frames():
    predictions = torch.zeros(1, 4, 1)
    targets = torch.tensor([[[5.0], [1.0], [1.0], [7.0]]])
    mask = torch.tensor([[True, True, True, False]])
    loss = sequence_loss(predictions, targets, mask, torch.ones(1), kind='mse',
                         warmup_frames=1)
    assert math.isclose(float(loss), 1.0)


def test_loss_scales_by_output_std():
    predictions = torch.zeros(1, 2, 1)
    targets = torch.full((1, 2, 1), 2.0)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = sequence_loss(predictions, targets, mask, torch.tensor([2.0]), kind='mse')
    assert math.isclose(float(loss), 1.0)


def test_l1_loss_is_the_mean_absolute_error():
    predictions = torch.zeros(1, 3, 1)
    targets = torch.tensor([[[2.0], [-4.0], [8.0]]])
    mask = torch.tensor([[True, True, False]])
    loss = sequence_loss(predictions, targets, mask, torch.tensor([2.0]), kind='l1')
    assert math.isclose(float(loss), 1.5)


def test_huber_delta_quadratic_range():
    predictions = torch.zeros(1, 2, 1)
    targets = torch.tensor([[[0.2], [3.0]]])  # in std units, since std is 1
    mask = torch.ones(1, 2, dtype=torch.bool)
    wide = sequence_loss(predictions, targets, mask, torch.ones(1), kind='huber')
    narrow = sequence_loss(predictions, targets, mask, torch.ones(1), kind='huber',
                           huber_delta=0.5)
    # With delta 1 the frames give 0.5 * 0.2^2 and 3 - 0.5.
    # With delta 0.5 they give 0.5 * 0.2^2 and 0.5 * (3 - 0.25).
    assert math.isclose(float(wide), (0.02 + 2.5) / 2, rel_tol=1e-6)
    assert math.isclose(float(narrow), (0.02 + 1.375) / 2, rel_tol=1e-6)


@pytest.mark.parametrize('value', [0, -1.0, float('nan'), float('inf')])
def test_invalid_huber_delta_named(value):
    with pytest.raises(ConfigError, match='huber_delta'):
        TrainConfig(huber_delta=value)


def test_correlation_loss_perfect_and_opposite():
    targets = torch.tensor([[[0.0], [1.0], [-2.0], [0.5]]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    # r ignores scale and offset: 3x + 1 follows the targets exactly.
    assert float(correlation_loss(3 * targets + 1, targets, mask)) < 1e-6
    assert math.isclose(float(correlation_loss(-targets, targets, mask)), 2.0, rel_tol=1e-5)


def test_correlation_loss_skips_masked_and_warmup():
    targets = torch.tensor([[[5.0], [0.0], [1.0], [2.0], [9.0]]])
    predictions = torch.tensor([[[-7.0], [0.0], [2.0], [4.0], [-3.0]]])
    mask = torch.tensor([[True, True, True, True, False]])
    # Frame 0 is warm-up and frame 4 masked, so only the proportional frames 1-3 count.
    assert float(correlation_loss(predictions, targets, mask, warmup_frames=1)) < 1e-6
    assert float(correlation_loss(predictions, targets, mask)) > 0.5


def test_correlation_loss_constant_targets():
    targets = torch.full((2, 3, 2), 0.4)
    targets[..., 1] = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    predictions = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(0),
                              requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss = correlation_loss(predictions, targets, mask, output_weights=[1.0, 0.0])
    # The first output's targets never vary, so it adds 0, and the second has weight 0.
    assert float(loss.detach()) == 0.0
    both = correlation_loss(predictions, targets, mask)
    both.backward()
    assert torch.isfinite(predictions.grad).all()
    assert predictions.grad[..., 0].abs().sum() == 0
    assert predictions.grad[..., 1].abs().sum() > 0


@pytest.mark.parametrize('value', [-0.1, 11.0, float('nan')])
def test_invalid_correlation_weight_named(value):
    with pytest.raises(ConfigError, match='correlation_weight'):
        TrainConfig(correlation_weight=value)


def test_sharp_turn_weights_grow_with_steering():
    weights = sharp_turn_weights(torch.tensor([0.0, 0.5, 1.0]), scale=0.5, weight=2.0)
    np.testing.assert_allclose(weights.numpy(), [1.0, 3.0, 5.0])
    unweighted = sharp_turn_weights(torch.tensor([0.0, 1.0]), scale=0.5, weight=0.0)
    np.testing.assert_allclose(unweighted.numpy(), [1.0, 1.0])


def test_comparison_means_keep_counts_whole():
    from liquid_control.training.compare import markdown_table, mean_rows
    rows = [{'model': 'ncp_ltc', 'family': 'ncp_ltc', 'seed': seed, 'encoder_parameters': 74780,
             'recurrent_parameters': 885, 'pretrain_steps': steps, 'mae': mae, 'pearson': r,
             'mae_ratio': mae / 0.28, 'train_minutes': 16.0, 'realtime_factor': 60.0}
            for seed, steps, mae, r in ((0, 2450, 0.196, 0.786), (1, 2275, 0.204, 0.771))]
    table = markdown_table(mean_rows(rows), 'angular_z', ())
    mean_line = table.splitlines()[2]
    assert '| 74,780 | 885 |' in mean_line
    assert '| 2,362 |' in mean_line
    assert '0.200 ± 0.004' in mean_line


def _comparison_rows(scores):
    return [{'model': model, 'family': model.split('-')[0], 'seed': seed, 'mae': mae,
             'rmse': mae * 1.4, 'pearson': r, 'baseline_mae': 0.28}
            for model, seed, mae, r in scores]


def test_paired_differences_compare_seed_by_seed():
    from liquid_control.training.compare import paired_differences
    rows = _comparison_rows([
        ('ncp_ltc', 0, 0.20, 0.78), ('ncp_ltc', 1, 0.22, 0.75), ('ncp_ltc', 2, 0.18, 0.80),
        ('lstm-64', 0, 0.19, 0.79), ('lstm-64', 1, 0.20, 0.78), ('lstm-64', 2, 0.19, 0.79),
        # No seed 2, and r of seed 1 is not defined (a constant output).
        ('cnn-64', 0, 0.21, 0.77), ('cnn-64', 1, 0.23, float('nan'))])
    lstm, cnn = paired_differences(rows)
    assert lstm['reference'] == 'ncp_ltc'
    assert lstm['model'] == 'lstm-64'
    mae = lstm['mae']
    differences = np.array([-0.01, -0.02, 0.01])
    assert mae['seeds'] == 3
    assert mae['difference'] == pytest.approx(differences.mean())
    assert mae['standard_error'] == pytest.approx(differences.std(ddof=1) / np.sqrt(3))
    assert mae['better_in'] == 2                  # lower MAE in seeds 0 and 1
    assert lstm['pearson']['better_in'] == 2      # higher r in seeds 0 and 1
    assert cnn['mae']['seeds'] == 2
    assert cnn['mae']['better_in'] == 0
    assert cnn['pearson'] == {'seeds': 1, 'difference': pytest.approx(-0.01),
                              'standard_error': None, 'better_in': 0}


def test_comparison_tables_show_paired_differences(tmp_path):
    from liquid_control.training.compare import write_tables
    rows = _comparison_rows([('ncp_ltc', 0, 0.20, 0.78), ('ncp_ltc', 1, 0.22, 0.75),
                             ('lstm-64', 0, 0.19, 0.79), ('lstm-64', 1, 0.20, 0.78)])
    write_tables(tmp_path, rows, 'angular_z', ())
    text = (tmp_path / 'compare.md').read_text()
    assert '## Against ncp_ltc, seed by seed' in text
    line = next(line for line in text.split('seed by seed')[1].splitlines()
                if line.startswith('| lstm-64 |'))
    # MAE differences -0.01 and -0.02: mean -0.015, standard error 0.005.
    assert '| -0.015 ± 0.005 | 2 of 2 |' in line
    assert '| +0.020 ± 0.010 | 2 of 2 |' in line
    payload = json.loads((tmp_path / 'compare.json').read_text())
    assert payload['differences'][0]['pearson']['seeds'] == 2
    # With one seed per model the section is left out: one difference has no spread.
    write_tables(tmp_path, rows[::2], 'angular_z', ())
    assert 'seed by seed' not in (tmp_path / 'compare.md').read_text()


# -- pretraining weight average ------------------------------------------------------------

def test_weight_average_ignores_starting_weights():
    module = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(100.0)                  # the random start, far from the updates
    average = WeightAverage(module, decay=0.9)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            module.weight.fill_(value)
        average.update(module)
    # Weights 0.9 ** 2, 0.9 and 1 on the three updates, divided by their sum.
    expected = (0.81 * 1.0 + 0.9 * 2.0 + 1.0 * 3.0) / (0.81 + 0.9 + 1.0)
    assert average.module.weight.item() == pytest.approx(expected, rel=1e-6)


def test_weight_average_first_update_copies_weights():
    module = torch.nn.Linear(2, 1)
    average = WeightAverage(module, decay=0.998)
    with torch.no_grad():
        module.weight.fill_(0.5)
    average.update(module)
    assert torch.equal(average.module.weight, module.weight)


def test_pretraining_rate_warms_up_then_decays():
    assert rate_factor(0, 0.0) == pytest.approx(1.0 / WARMUP_STEPS)
    assert rate_factor(WARMUP_STEPS // 2 - 1, 0.0) == pytest.approx(0.5)
    assert rate_factor(WARMUP_STEPS - 1, 0.0) == pytest.approx(1.0)
    assert rate_factor(10 * WARMUP_STEPS, 0.5) == pytest.approx(0.525)
    assert rate_factor(10 * WARMUP_STEPS, 1.0) == pytest.approx(0.05)
    assert rate_factor(10 * WARMUP_STEPS, 3.0) == pytest.approx(0.05)


def test_progress_bars_only_on_terminal(monkeypatch):
    import argparse
    import sys

    from liquid_control.cli.train import show_progress

    monkeypatch.setattr(sys.stderr, 'isatty', lambda: False)
    assert not show_progress(argparse.Namespace(no_progress=False))
    monkeypatch.setattr(sys.stderr, 'isatty', lambda: True)
    assert show_progress(argparse.Namespace(no_progress=False))
    assert not show_progress(argparse.Namespace(no_progress=True))


def test_epoch_summary_names_every_output():
    from liquid_control.training.logs import summary_line

    values = {'train/loss': 0.5, 'val/loss': 0.4, 'time/epoch_s': 3.0,
              'val/angular_z/mae': 0.12, 'val/angular_z/baseline_mae': 0.3,
              'val/angular_z/pearson': 0.9, 'val/linear_x/mae': 1.1,
              'val/linear_x/baseline_mae': 2.0, 'val/linear_x/pearson': 0.8}
    line = summary_line(2, 10, values, ['angular_z', 'linear_x'], improved=True)
    assert 'angular_z MAE 0.1200 (constant 0.3000), r 0.900' in line
    assert 'linear_x MAE 1.1000 (constant 2.0000), r 0.800' in line
    assert line.endswith('best so far')


def test_compare_lag_at_search_limit():
    from liquid_control.evaluation.metrics import MAX_LAG_FRAMES
    from liquid_control.training.compare import _clear_lag
    assert _clear_lag({'lag_frames': 2, 'lag_s': 0.1}) == pytest.approx(0.1)
    assert math.isnan(_clear_lag({'lag_frames': -MAX_LAG_FRAMES, 'lag_s': -0.5}))


def test_constant_advice_follows_the_stop_reason():
    from liquid_control.cli.train import _constant_advice
    patience = _constant_advice('no improvement of the validation loss for 8 epochs',
                                'linear_x', ('angular_z', 'linear_x'))
    assert 'training longer will not help' in patience
    assert "--set 'outputs=[angular_z]'" in patience
    assert 'raise --max-minutes' in _constant_advice('time limit of 15 minutes', 'angular_z',
                                                     ('angular_z',))
    assert 'raise --epochs' in _constant_advice('epochs', 'angular_z', ('angular_z',))
