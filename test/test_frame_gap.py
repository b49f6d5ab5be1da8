"""Policies with a frame gap: the encoder input adds the change since an earlier frame."""

import math

import numpy as np
import pytest
import torch

from training_data import TINY_SETTINGS

from liquid_control.data.augment import Augmentation
from liquid_control.data.episodes import find_episodes
from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import ConfigError
from liquid_control.evaluation.saliency import visual_backprop
from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint
from liquid_control.model.encoder import Encoder
from liquid_control.model.policy import PolicyConfig, build_policy
from liquid_control.training.config import TrainConfig
from liquid_control.training.dataset import CachedEpisode, cache_episode, encoder_frames
from liquid_control.training.pretrain import augment_frame
from liquid_control.training.trainer import pretraining_key, train

SMALL = {'height': 24, 'width': 32}


def _policy(family='ncp_ltc', gap=2, units=12):
    config = PolicyConfig(family=family, units=units, frame_gap=gap,
                          preprocessing={**PolicyConfig().preprocessing, **SMALL})
    return build_policy(config).eval()


def _frames(steps=9, batch=2, seed=0):
    return torch.rand(batch, steps, 3, 24, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('family', ['ncp_ltc', 'ncp_cfc', 'lstm', 'cnn'])
def test_sequence_steps_and_chunks_agree(family):
    policy = _policy(family)
    frames = _frames()
    with torch.no_grad():
        outputs, state = policy(frames, None, 0.05)
        step_state, steps = None, []
        for t in range(frames.shape[1]):
            output, step_state = policy.step(frames[:, t], None, 0.05, step_state)
            steps.append(output)
        # The zero state is "no frames yet", like no state at all.
        first, middle = policy(frames[:, :4], None, 0.05, policy.initial_state(2))
        second, chunk_state = policy(frames[:, 4:], None, 0.05, middle)
    assert torch.allclose(torch.stack(steps, dim=1), outputs, atol=1e-5)
    assert torch.allclose(step_state, state, atol=1e-5)
    assert torch.allclose(torch.cat([first, second], dim=1), outputs, atol=1e-5)
    assert torch.allclose(chunk_state, state, atol=1e-5)


def test_cnn_reacts_two_steps_later():
    # CNN-only has no memory, so a change of frame 5 can only reach steps 5 and 7.
    policy = _policy('cnn')
    frames = _frames()
    changed = frames.clone()
    changed[:, 5] = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before, _ = policy(frames, None, 0.05)
        after, _ = policy(changed, None, 0.05)
    moved = (after - before).abs().amax(dim=(0, 2))
    assert [t for t in range(9) if moved[t] > 1e-6] == [5, 7]


def test_first_steps_pair_with_first_frame():
    # Before frame_gap frames have arrived, the earlier frame is the first one.
    policy = _policy('cnn', gap=3)
    frames = _frames(steps=4)
    with torch.no_grad():
        inputs, _ = policy.encoder_inputs(frames, None)
    assert inputs.shape == (2, 4, 6, 24, 32)
    for t in range(3):
        assert torch.equal(inputs[:, t, 3:], frames[:, 0])
    assert torch.equal(inputs[:, 3, 3:], frames[:, 0])
    assert torch.equal(inputs[:, 3, :3], frames[:, 3])


def test_state_layout_core_then_frames():
    policy = _policy('ncp_ltc', gap=2, units=12)
    assert policy.state_size == 12 + 2 * 3 * 24 * 32 + 1
    assert _policy('ncp_ltc', gap=0).state_size == 12
    with torch.no_grad():
        _, state = policy(_frames(steps=5), None, 0.05)
    assert policy.neuron_states(state).shape == (2, 12)
    # The flag is set and the last two frames are stored.
    assert torch.all(state[:, -1] == 1.0)
    assert torch.equal(state[:, 12:-1].reshape(2, 2, 3, 24, 32), _frames(steps=5)[:, 3:])
    with pytest.raises(ValueError, match=r'state must have shape \(B, %d\)' % policy.state_size):
        policy.step(torch.rand(2, 3, 24, 32), None, 0.05, torch.zeros(2, 12))


def test_step_features_keeps_the_frames():
    policy = _policy('ncp_ltc')
    with torch.no_grad():
        _, state = policy(_frames(steps=3), None, 0.05)
        features = torch.randn(2, 32)
        _, after = policy.step_features(features, None, 0.05, state)
    assert torch.equal(after[:, 12:], state[:, 12:])


@pytest.mark.parametrize('value', [-1, 11, 1.5, True, '2'])
def test_invalid_frame_gap_named(value):
    with pytest.raises(ConfigError, match='frame_gap'):
        PolicyConfig(frame_gap=value)


def test_encoder_takes_six_channels():
    encoder = Encoder(24, 32, frames=2)
    assert encoder.head.convolutions[0].in_channels == 6
    with pytest.raises(ValueError, match=r'\(B, 6, 24, 32\)'):
        encoder(torch.rand(1, 3, 24, 32))
    with pytest.raises(ConfigError, match='frames=3'):
        Encoder(24, 32, frames=3)


def test_checkpoint_round_trip_and_old_headers(tmp_path):
    policy = _policy('ncp_ltc')
    path = save_checkpoint(tmp_path / 'gap.lcm', policy, {})
    loaded, _ = load_checkpoint(path)
    assert loaded.config.frame_gap == 2
    frames = _frames()
    with torch.no_grad():
        assert torch.equal(loaded(frames, None, 0.05)[0], policy(frames, None, 0.05)[0])
    # Checkpoints written before the setting existed have no frame_gap key.
    values = PolicyConfig().to_dict()
    del values['frame_gap']
    assert PolicyConfig.from_dict(values).frame_gap == 0


def test_onnx_export_carries_the_frames(tmp_path):
    pytest.importorskip('onnxruntime')
    from liquid_control.model import export

    policy = _policy('ncp_ltc')
    path = export.export_onnx(policy, tmp_path / 'gap.onnx')
    assert export.compare_onnx(policy, path, steps=5, batch_size=2) < 1e-5


def test_saliency_uses_the_earlier_frames():
    policy = _policy('ncp_ltc')
    frames = _frames(steps=3, batch=1)[0].numpy()
    still = visual_backprop(policy, frames)
    np.testing.assert_array_equal(still, visual_backprop(policy, frames, frames))
    moving = visual_backprop(policy, frames, np.roll(frames, 5, axis=-1))
    assert moving.shape == still.shape == (3, 24, 32)
    assert np.abs(moving - still).max() > 0.05
    with pytest.raises(ValueError, match='earlier frames'):
        visual_backprop(policy, frames, frames[:2])


def _episode(count=6):
    frames = np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones(
        (1, 3, 4, 5), np.uint8)
    return CachedEpisode(name='e', frames=frames, timestamps=np.arange(count) * 0.05,
                         dt=np.full(count, 0.05, np.float32),
                         targets=np.zeros((count, 1), np.float32), imu=None,
                         valid=np.ones(count, bool), episode=None)


def test_encoder_frames_pair_within_the_episode():
    episodes = [_episode(), _episode()]
    single = encoder_frames(episodes, np.array([0, 1]), np.array([4, 1]))
    assert single.shape == (2, 3, 4, 5)
    pairs = encoder_frames(episodes, np.array([0, 1]), np.array([4, 1]), frame_gap=2)
    assert pairs.shape == (2, 6, 4, 5)
    # Frame 4 pairs with frame 2, and frame 1 with the episode's first frame.
    assert pairs[0, 0, 0, 0] == 4
    assert pairs[0, 3, 0, 0] == 2
    assert pairs[1, 0, 0, 0] == 1
    assert pairs[1, 3, 0, 0] == 0


def test_encoder_frames_stop_at_time_gaps():
    # A time gap before frame 4 starts a new run there, as the state resets at run time.
    episode = _episode(count=7)
    episode.run_start = np.array([0, 0, 0, 0, 4, 4, 4])
    pairs = encoder_frames([episode], np.zeros(3, np.int64), np.array([3, 5, 6]), frame_gap=2)
    assert list(pairs[:, 3, 0, 0]) == [1, 4, 4]


class _Recording:
    """The parts of an episode that ``cache_episode`` reads: 5 frames, a gap before the 4th."""

    timestamps = np.array([0.0, 0.05, 0.1, 3.0, 3.05])
    valid = np.ones(5, bool)
    imu = None

    def __len__(self):
        return 5

    def load_frame(self, index):
        return np.full((8, 10, 3), index, np.uint8)

    def command(self, name):
        return np.zeros(5, np.float32)


def test_cached_episode_marks_runs():
    preprocessing = Preprocessing(height=8, width=10)
    cached = cache_episode(_Recording(), preprocessing, ['angular_z'], False, max_gap_s=0.5)
    assert list(cached.run_start) == [0, 0, 0, 3, 3]
    pairs = encoder_frames([cached], np.zeros(2, np.int64), np.array([2, 4]), frame_gap=2)
    assert list(pairs[:, 3, 0, 0]) == [0, 3]


def test_pretraining_augments_both_frames_alike():
    augmentation = Augmentation(probability=1.0, brightness=0.3, contrast=0.0,
                                shadow_probability=0.0, noise_probability=0.0,
                                shift_pixels=2)
    frame = np.random.default_rng(0).random((1, 3, 12, 16), dtype=np.float32) * 0.5
    pair = np.concatenate([frame, frame], axis=1)
    augmented = augment_frame(pair, np.zeros(1, np.float32), augmentation,
                              np.random.default_rng(3), None)
    assert augmented.shape == (1, 6, 12, 16)
    assert not np.allclose(augmented[:, :3], frame)
    np.testing.assert_array_equal(augmented[:, :3], augmented[:, 3:])


def test_frame_gap_below_sequence_length():
    with pytest.raises(ConfigError, match='model.frame_gap=8 is invalid with sequence_length=8'):
        TrainConfig.from_dict({**TINY_SETTINGS, 'model': {'frame_gap': 8}})


def test_pretraining_key_depends_on_the_gap():
    plain = TrainConfig.from_dict(dict(TINY_SETTINGS))
    gap = TrainConfig.from_dict({**TINY_SETTINGS, 'model': {'frame_gap': 2}})
    assert pretraining_key(plain) != pretraining_key(gap)


def test_frame_gap_training_end_to_end(subset, tmp_path):
    from liquid_control.evaluation.pipeline import EvaluationOptions, run_evaluation
    from liquid_control.inference import load_runner

    torch.set_num_threads(1)
    config = TrainConfig.from_dict({**TINY_SETTINGS, 'model': {'frame_gap': 2},
                                    'pretrain_epochs': 1, 'epochs': 2})
    result = train(config, find_episodes(subset), tmp_path / 'gap.lcm', progress=False)
    policy, metadata = load_checkpoint(result.paths.best)
    assert policy.config.frame_gap == 2
    assert metadata['train_config']['model']['frame_gap'] == 2
    metrics = run_evaluation(policy, find_episodes(subset), tmp_path / 'eval', metadata,
                             EvaluationOptions(perturbations=('noise:0.1',), plots=True,
                                               saliency_frames=2, ssim_frames=2))
    assert math.isfinite(metrics['angular_z']['mae'])
    assert (tmp_path / 'eval' / 'saliency.png').is_file()

    # The runner carries the frames from step to step, as the policy node does.
    runner = load_runner(result.paths.best)
    episode = find_episodes(subset)[0]
    outputs = [runner.step(episode.load_frame(index), None, 0.05) for index in range(4)]
    frames = torch.stack([torch.from_numpy(runner.preprocess(episode.load_frame(index)))
                          for index in range(4)])[None]
    with torch.no_grad():
        expected, _ = policy(frames, None, 0.05)
    np.testing.assert_allclose(np.stack(outputs), expected[0].numpy(), atol=1e-5)


class _GapRecording:
    """An episode for replay: frame i is a flat image of value ``base + i``, with a gap."""

    def __init__(self, timestamps, base):
        self.timestamps = np.asarray(timestamps, np.float64)
        self.valid = np.ones(len(self.timestamps), bool)
        self.imu = np.full((len(self.timestamps), 6), np.nan, np.float32)
        self.has_imu = False
        self.metadata = {}
        self.folder = f'recording-{base}'
        self.base = base

    def __len__(self):
        return len(self.timestamps)

    def load_frame(self, index):
        return np.full((30, 40, 3), self.base + index, np.uint8)

    def command(self, name):
        return np.zeros(len(self), np.float32)


def test_saliency_pairs_within_segments():
    from liquid_control.evaluation.pipeline import _saliency_inputs
    from liquid_control.evaluation.replay import evaluate_episodes, load_frames

    policy = _policy('ncp_ltc')
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    # Replay rows 0-4 are the first episode, rows 5-11 the second, whose state resets
    # at its frame 4 (row 9) after a 3 s gap.
    episodes = [_GapRecording(np.arange(5) * 0.05, 10),
                _GapRecording([0.0, 0.05, 0.1, 0.15, 3.0, 3.05, 3.1], 100)]
    frames = [load_frames(episode, preprocessing) for episode in episodes]
    result = evaluate_episodes(policy, episodes, frames=frames)
    rows = np.array([1, 4, 6, 9, 10, 11])
    current, earlier = _saliency_inputs(policy, rows, result, episodes, frames, preprocessing)
    values = np.rint(current[:, 0, 0, 0] * 255).astype(int)
    earlier_values = np.rint(earlier[:, 0, 0, 0] * 255).astype(int)
    assert list(values) == [11, 14, 101, 104, 105, 106]
    assert list(earlier_values) == [10, 12, 100, 104, 104, 104]


def test_frame_before_newest_older_frame():
    from liquid_control.cli.demo import frame_before

    recent = [(1.00, 'a'), (1.02, 'b'), (1.04, 'c'), (1.06, 'd')]
    assert frame_before(recent, 1.04) == 'c'
    assert frame_before(recent, 1.05) == 'c'
    assert frame_before(recent, 1.10) == 'd'
    # Older than every frame kept: the oldest, as at the start of a run.
    assert frame_before(recent, 0.90) == 'a'
    with pytest.raises(ValueError, match='no recent frames'):
        frame_before([], 1.0)


def test_demo_gif_earlier_frames(tmp_path):
    from PIL import Image

    from liquid_control.cli.demo import write_saliency_gif
    from liquid_control.inference import load_runner

    runner = load_runner(save_checkpoint(tmp_path / 'gap.lcm', _policy('ncp_ltc'), {}))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(3)]
    moved = [np.roll(frame, 8, axis=1) for frame in frames]

    def gif_frames(name, earlier):
        with Image.open(write_saliency_gif(runner, frames, tmp_path / name, earlier)) as gif:
            images = []
            for index in range(gif.n_frames):
                gif.seek(index)
                images.append(np.asarray(gif.convert('RGB')))
        return np.stack(images)

    alone = gif_frames('alone.gif', None)
    assert alone.shape[0] == 3
    np.testing.assert_array_equal(alone, gif_frames('self.gif', frames))
    assert not np.array_equal(alone, gif_frames('moved.gif', moved))
    with pytest.raises(ValueError, match='2 earlier frames for 3 frames'):
        write_saliency_gif(runner, frames, tmp_path / 'short.gif', moved[:2])
