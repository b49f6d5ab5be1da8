"""The training loop: truncated back-propagation through time over windows of frames.

One loop serves every model family, so comparisons share the encoder, the data, the
augmentation and the schedule. Validation replays each validation segment from a fresh
state with its true time deltas, as ``liquid-control evaluate`` and the policy node do,
and early stopping watches its loss.

Files written next to ``out`` (say ``model.lcm``): ``model.lcm`` (the best epoch),
``model.last.lcm`` (the latest epoch) and ``model_logs/`` with ``log.csv``, TensorBoard
event files and ``resume.pt`` (optimizer state for ``resume``).
"""

import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import (CheckpointError, ConfigError, DataError,
                                   LiquidControlError)
from liquid_control.evaluation.metrics import regression_metrics
from liquid_control.model.checkpoint import (declared_size_problem, load_checkpoint,
                                             save_checkpoint)
from liquid_control.model.policy import (PolicyConfig, build_policy, sensory_size,
                                         size_limit_problem, wiring_synapse_counts)
from liquid_control.training import distributed
from liquid_control.training.config import TrainConfig
from liquid_control.training.core_warmup import warm_up_core
from liquid_control.training.dataset import (CachedEpisode, Split, cache_episode, collate,
                                             mirror_signs, segment_arrays, split_episodes,
                                             with_burn_in)
from liquid_control.training.logs import EpochLog, summary_line
from liquid_control.training.loss import correlation_loss, sequence_loss, sharp_turn_weights
from liquid_control.training.normalization import Statistics, measure_statistics
from liquid_control.training.pretrain import WeightAverage, pretrain_encoder

LOGGER = logging.getLogger(__name__)

RESUME_FILE = 'resume.pt'
DEFAULT_UNITS = {'angular_z': 'rad/s', 'linear_x': 'm/s'}


@dataclass
class OutputPaths:
    """Checkpoint and log locations of a run, derived from ``--out``."""

    best: Path
    last: Path
    logs: Path

    @classmethod
    def from_out(cls, out: Path) -> 'OutputPaths':
        out = Path(out)
        suffix = out.suffix or '.lcm'
        return cls(best=out.with_suffix(suffix),
                   last=out.with_name(out.stem + '.last' + suffix),
                   logs=out.with_name(out.stem + '_logs'))


@dataclass
class TrainResult:
    """Files, counters and metrics of a finished run."""

    paths: OutputPaths
    epochs_run: int
    best_epoch: int
    best_metrics: Dict[str, float]
    train_seconds: float
    stop_reason: str
    parameter_counts: Dict[str, int]
    history: List[Dict[str, float]] = field(default_factory=list)
    # Metrics of the best checkpoint on the held-out test part (test_fraction > 0), keyed
    # like the validation ones with 'test/' in place of 'val/'.
    test_metrics: Dict[str, float] = field(default_factory=dict)


def decide_imu(config: TrainConfig, episodes: Sequence) -> bool:
    """Return whether the policy gets IMU input, from ``use_imu`` and the data."""
    with_imu = [bool(getattr(episode, 'has_imu', False)) for episode in episodes]
    if config.use_imu == 'no':
        return False
    if config.use_imu == 'yes':
        if not all(with_imu):
            raise DataError(f'use_imu=yes but {with_imu.count(False)} of {len(with_imu)} '
                            'episodes have no IMU readings; record IMU or set use_imu=no')
        return True
    return bool(with_imu) and all(with_imu)


def output_units(episodes: Sequence, outputs: Sequence[str]) -> Tuple[str, ...]:
    """Return the unit of each output from the first episode's metadata, else the ROS unit."""
    metadata = getattr(episodes[0], 'metadata', {}) or {}
    commands = metadata.get('commands') or {}
    units = []
    for name in outputs:
        entry = commands.get(name) if isinstance(commands, dict) else None
        unit = entry.get('unit') if isinstance(entry, dict) else None
        units.append(str(unit or DEFAULT_UNITS.get(name, '')))
    return tuple(units)


def build_policy_config(config: TrainConfig, preprocessing: Preprocessing, use_imu: bool,
                        units: Sequence[str]) -> PolicyConfig:
    """Return the ``PolicyConfig`` of a run: family, outputs and input size from the config."""
    values = config.model_settings()
    values.update({
        'family': config.family,
        'imu_enabled': use_imu,
        'output_names': tuple(config.outputs),
        'output_units': tuple(units),
        'preprocessing': preprocessing.to_dict(),
        'seed': config.seed,
    })
    try:
        policy_config = PolicyConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f'invalid model settings {config.model_settings()}: {error}') \
            from error
    check_policy_size(policy_config)
    return policy_config


def check_policy_size(config: PolicyConfig) -> None:
    """Raise ConfigError when ``load_checkpoint`` would reject the policy of ``config``.

    It applies the loader's limits on single sizes (units, sides, channels) and on tensor
    elements, with the synapse counts of the wiring that the policy will get, so no model
    trains that the loader then rejects.
    """
    problem = declared_size_problem(config.to_dict(), _declared_wiring(config))
    if problem is not None:
        raise ConfigError(f'the model is too large: {problem}, so its checkpoints would not '
                          'load; lower that setting')
    problem = size_limit_problem(config)
    if problem is not None and config.family in ('ncp_ltc', 'fc_ltc'):
        # The loader counts the stored synapses, fewer than the bound without counts assumes.
        problem = size_limit_problem(config, wiring_synapse_counts(config))
    if problem is not None:
        raise ConfigError(f'the model is too large: {problem}, so its checkpoints would not '
                          'load; lower model.units, or the encoder channels or the '
                          'preprocessing height and width')


def _declared_wiring(config: PolicyConfig) -> Optional[Dict[str, int]]:
    """Return the sizes that a checkpoint header stores for the policy's wiring, or None."""
    if config.family not in ('ncp_ltc', 'ncp_cfc', 'fc_ltc'):
        return None
    return {'units': config.units, 'input_size': sensory_size(config),
            'output_size': config.output_size}


def parameter_groups(policy: torch.nn.Module, config: TrainConfig) -> List[dict]:
    """Split parameters into the encoder (``lr_encoder``) and the rest (``lr_recurrent``)."""
    encoder = getattr(policy, 'encoder', None)
    encoder_ids = set()
    if encoder is not None:
        encoder_ids = {id(p) for p in encoder.parameters()}
    # Frozen parameters (freeze_encoder) stay out of the optimizer.
    trainable = [p for p in policy.parameters() if p.requires_grad]
    encoder_parameters = [p for p in trainable if id(p) in encoder_ids]
    other_parameters = [p for p in trainable if id(p) not in encoder_ids]
    groups = []
    if encoder_parameters:
        groups.append({'params': encoder_parameters, 'lr': config.lr_encoder,
                       'name': 'encoder'})
    if other_parameters:
        groups.append({'params': other_parameters, 'lr': config.lr_recurrent,
                       'name': 'recurrent'})
    return groups


def schedule_factor(config: TrainConfig, progress: float) -> float:
    """Return the learning-rate multiplier at ``progress`` (0 at the start, 1 at the end).

    ``cosine`` decays from 1 to ``lr_min_fraction`` along half a cosine; ``constant``
    keeps 1.
    """
    if config.lr_schedule == 'constant':
        return 1.0
    progress = min(max(progress, 0.0), 1.0)
    floor = config.lr_min_fraction
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def shard_windows(windows: Sequence, context: distributed.Context) -> List:
    """Return this rank's share of the windows; every rank gets the same count."""
    if not context.distributed:
        return list(windows)
    usable = len(windows) - len(windows) % context.world_size
    return [windows[i] for i in range(context.rank, usable, context.world_size)]


def to_tensors(batch: Dict[str, np.ndarray]) -> Dict[str, Optional[torch.Tensor]]:
    """Convert a numpy batch from ``collate`` into torch tensors."""
    return {key: None if value is None else torch.from_numpy(np.ascontiguousarray(value))
            for key, value in batch.items()}


@dataclass
class PreparedData:
    """Cached frames and the split of a run, shareable between runs with equal data settings.

    Runs may share it when they agree on preprocessing, outputs, IMU use, sequence length,
    stride, gap and split settings (``liquid-control compare`` varies only the model).
    ``pretrained`` keeps pretrained encoders by ``pretraining_key``: pretraining does
    not depend on the recurrent core, so runs that differ only in it reuse one encoder.
    """

    preprocessing: Preprocessing
    use_imu: bool
    units: Tuple[str, ...]
    episodes: List[CachedEpisode]
    split: Split
    pretrained: Dict[str, dict] = field(default_factory=dict)


# The largest share of max_minutes that encoder pretraining may take.
PRETRAIN_SHARE_OF_MAX_MINUTES = 0.5

# Settings that decide which frames train and which validate. A resumed run must keep them.
SPLIT_SETTINGS = ('split', 'validation_fraction', 'validation_blocks', 'test_fraction',
                  'sequence_length', 'stride', 'max_gap_s')

# Settings that decide the pretrained encoder. The recurrent core is not among them.
PRETRAINING_SETTINGS = ('init_encoder', 'pretrain_epochs', 'pretrain_minutes', 'max_minutes',
                        'pretrain_batch_size', 'pretrain_patience', 'pretrain_ema_decay',
                        'lr_recurrent', 'weight_decay', 'augment', 'seed', 'threads')


def pretraining_key(config: TrainConfig) -> str:
    """Return a key that is equal for runs with the same encoder pretraining."""
    values = config.to_dict()
    chosen = {name: values[name] for name in PRETRAINING_SETTINGS}
    model = config.model_settings()
    chosen['encoder'] = model.get('encoder')
    chosen['frame_gap'] = model.get('frame_gap', 0)
    chosen['lr_encoder'] = config.pretrain_lr_encoder or config.lr_encoder
    if list(config.pretrain_horizons) != [0]:
        # Left out otherwise, so pretrained encoders saved before the setting existed match.
        chosen['pretrain_horizons'] = list(config.pretrain_horizons)
    return json.dumps(chosen, sort_keys=True)


def training_data_digest(data: PreparedData) -> str:
    """Return a SHA-256 digest of the frames, their labels, the IMU readings and the split.

    The IMU readings count only when the data's policies use them, so the digests of data
    without IMU input stay those written before the readings were included. The split part
    covers the training windows and the validation segments, because pretraining keeps the
    epoch that scores best on the validation frames.
    """
    digest = hashlib.sha256()
    for cached in data.episodes:
        for array in (cached.frames, cached.timestamps, cached.targets, cached.valid):
            digest.update(np.ascontiguousarray(array).tobytes())
    if data.use_imu:
        digest.update(b'imu')
        for cached in data.episodes:
            digest.update(np.ascontiguousarray(cached.imu, np.float32).tobytes())
    for index, window in data.split.train_windows:
        digest.update(np.asarray([index, *window], np.int64).tobytes())
    digest.update(b'validation')
    for segment in data.split.validation_segments:
        digest.update(np.asarray([segment.episode_index, segment.start, segment.stop],
                                 np.int64).tobytes())
    return digest.hexdigest()


def save_pretrained(data: PreparedData, config: TrainConfig, path: Path) -> bool:
    """Write the encoder pretrained for ``config`` to ``path`` as a ``.lcm`` checkpoint.

    The checkpoint contains a policy with that encoder and an untrained core, and its
    metadata records the pretraining settings. Returns False when ``data`` has no such
    encoder.
    """
    key = pretraining_key(config)
    pretrained = data.pretrained.get(key)
    if pretrained is None:
        return False
    policy = build_policy(build_policy_config(config, data.preprocessing, data.use_imu,
                                              data.units))
    policy.encoder.load_state_dict(pretrained['encoder'])
    pretrained['statistics'].apply(policy)
    summary = {name: value for name, value in pretrained['summary'].items()
               if name != 'reused'}
    try:
        save_checkpoint(path, policy, {'kind': 'pretrained encoder', 'pretraining_key': key,
                                       'training_data_sha256': training_data_digest(data),
                                       'pretraining': summary,
                                       'train_config': config.to_dict()})
    except OSError as error:
        raise CheckpointError(f'cannot write the pretrained encoder {path}: {error}; free '
                              'disk space or choose a writable output folder') from error
    return True


def load_pretrained(data: PreparedData, config: TrainConfig, path: Path) -> bool:
    """Make the encoder that ``save_pretrained`` wrote to ``path`` available to runs.

    Returns False when the file is missing, has an invalid pretraining summary, or was
    pretrained with other settings, on other frames or with other training and validation
    parts. ``data`` then stays as it was, and runs pretrain again.
    """
    if not path.is_file():
        return False
    key = pretraining_key(config)
    policy, metadata = load_checkpoint(path)
    summary = metadata.get('pretraining')
    if metadata.get('pretraining_key') != key or not isinstance(summary, dict):
        LOGGER.info('not reusing the pretrained encoder %s: it was pretrained with other '
                    'settings', path)
        return False
    # The file's checksum proves only that it is intact, not that these values are numbers,
    # and every run that reuses the encoder copies them into its own metadata.
    invalid = [str(name) for name, value in summary.items()
               if not isinstance(value, (int, float)) or isinstance(value, bool)
               or not math.isfinite(value)]
    if invalid:
        LOGGER.warning('not reusing the pretrained encoder %s: it has an invalid pretraining '
                       'summary (%s not a finite number); pretraining again', path,
                       ', '.join(invalid))
        return False
    if metadata.get('training_data_sha256') != training_data_digest(data):
        LOGGER.info('not reusing the pretrained encoder %s: it was pretrained on other '
                    'frames or another split', path)
        return False
    ours = build_policy(build_policy_config(config, data.preprocessing, data.use_imu,
                                            data.units))
    try:
        ours.encoder.load_state_dict(policy.encoder.state_dict())
    except (AttributeError, RuntimeError) as error:
        LOGGER.info('not reusing the pretrained encoder %s: it does not fit (%s)', path, error)
        return False
    statistics = measure_statistics(ours.encoder, data.episodes, data.split.train_windows,
                                    data.use_imu, seed=config.seed,
                                    frame_gap=ours.config.frame_gap)
    data.pretrained[key] = {'encoder': copy.deepcopy(ours.encoder.state_dict()),
                            'statistics': statistics, 'summary': summary}
    LOGGER.info('loaded the pretrained encoder %s', path)
    return True


def prepare_data(config: TrainConfig, episodes: Sequence,
                 context: Optional[distributed.Context] = None) -> PreparedData:
    """Decode and cache every frame once, then split into training, validation and test."""
    context = context or distributed.Context()
    if not episodes:
        raise DataError('no episodes to train on; pass episode folders, a tub or a bag')
    preprocessing = Preprocessing.from_dict(config.preprocessing)
    use_imu = decide_imu(config, episodes)
    started = time.perf_counter()
    cached = [cache_episode(episode, preprocessing, config.outputs, use_imu, config.max_gap_s)
              for episode in episodes]
    if context.is_main:
        LOGGER.info('cached %d frames of %d episode(s) at %dx%d (%.0f MB) in %.1f s',
                    sum(len(item) for item in cached), len(cached), preprocessing.width,
                    preprocessing.height, sum(item.frames.nbytes for item in cached) / 1e6,
                    time.perf_counter() - started)
    split = split_episodes(cached, config.split, config.validation_fraction,
                           config.sequence_length, config.stride, config.max_gap_s,
                           seed=config.seed, test_fraction=config.test_fraction,
                           validation_blocks=config.validation_blocks)
    if context.is_main:
        LOGGER.info('split by %s: %d training windows of %d frames, %d validation '
                    'segment(s) with %d frames, %d held-out test frames', config.split,
                    len(split.train_windows), config.sequence_length,
                    len(split.validation_segments),
                    sum(len(s) for s in split.validation_segments),
                    sum(len(s) for s in split.test_segments))
    return PreparedData(preprocessing, use_imu, output_units(episodes, config.outputs),
                        cached, split)


class Trainer:
    """Trains one policy on cached episodes and writes its checkpoints and logs."""

    def __init__(self, config: TrainConfig, episodes: Sequence, out: Path, *,
                 sources: Sequence[str] = (), resume: bool = False, progress: bool = True,
                 context: Optional[distributed.Context] = None,
                 data: Optional[PreparedData] = None):
        if not episodes and data is None:
            raise DataError('no episodes to train on; pass episode folders, a tub or a bag')
        self.config = config
        self.paths = OutputPaths.from_out(out)
        self.sources = [str(source) for source in sources]
        self.resume = resume
        self.progress = progress
        self.context = context or distributed.Context()
        self.data = data or prepare_data(config, episodes, self.context)
        self.preprocessing = self.data.preprocessing
        self.use_imu = self.data.use_imu
        self.units = self.data.units
        self.episodes: List[CachedEpisode] = self.data.episodes
        self.split: Split = self.data.split
        # Sign of each output in mirrored frames, or None when nothing is mirrored.
        self.output_signs = (mirror_signs(config.outputs)
                             if config.augmentation().mirror_probability > 0 else None)

        torch.manual_seed(config.seed)
        self.policy = build_policy(build_policy_config(
            config, self.preprocessing, self.use_imu, self.units))
        self.statistics: Optional[Statistics] = None
        self.model = self.policy
        self.optimizer: Optional[torch.optim.Optimizer] = None
        # With ema_decay > 0, a moving average of the weights is validated and saved,
        # while the policy keeps the weights the optimizer moves.
        self.average: Optional[WeightAverage] = None
        self.history: List[Dict[str, float]] = []
        self.pretrain_summary: Dict[str, float] = {}
        self.core_warmup_summary: Dict[str, float] = {}

    # -- set-up --------------------------------------------------------------------------

    def _prepare(self) -> Tuple[int, float, int, int, float]:
        """Normalise, build the optimizer, and load the resume state if asked.

        Returns (first epoch, best score, best epoch, epochs without improvement, seconds
        already trained).
        """
        start_epoch, best_score, best_epoch, stale, trained_s = 1, math.inf, 0, 0, 0.0
        resume_state = None
        if self.resume:
            resume_state = self._load_resume_state()
        if resume_state is None:
            encoder = getattr(self.policy, 'encoder', None)
            if self.config.init_encoder:
                self._load_initial_encoder(Path(self.config.init_encoder))
            self.statistics = measure_statistics(
                encoder if encoder is not None else torch.nn.Identity(), self.episodes,
                self.split.train_windows, self.use_imu, seed=self.config.seed,
                frame_gap=self.policy.config.frame_gap)
            self.statistics.apply(self.policy)
            if self.config.pretrain_epochs > 0 or self.config.pretrain_minutes > 0:
                trained_s = self._pretrain()
            if self.config.core_warmup_epochs > 0:
                trained_s += self._warm_up_core()
        if self.config.freeze_encoder and getattr(self.policy, 'encoder', None) is not None:
            # The sequence training then fits only the recurrent core and its output map.
            self.policy.encoder.requires_grad_(False)

        self.optimizer = torch.optim.AdamW(parameter_groups(self.policy, self.config),
                                           weight_decay=self.config.weight_decay)
        if resume_state is not None:
            try:
                self.optimizer.load_state_dict(resume_state['optimizer'])
            except (ValueError, KeyError, TypeError, RuntimeError) as error:
                raise CheckpointError(
                    f'cannot resume: the optimizer state in {self.paths.logs / RESUME_FILE} '
                    f'does not fit this run ({error}); train without --resume, or with the '
                    'settings of the first run') from error
            self._check_optimizer_state()
            start_epoch = int(resume_state['epoch']) + 1
            best_score = float(resume_state['best_score'])
            if math.isnan(best_score):
                # A run without validation stores NaN, so the first validated epoch after
                # it counts as an improvement.
                best_score = math.inf
            best_epoch = int(resume_state['best_epoch'])
            stale = int(resume_state['stale_epochs'])
            trained_s = float(resume_state['train_seconds'])
            if self.context.is_main:
                LOGGER.info('resuming after epoch %d (best epoch %d, val loss %.4f)',
                            start_epoch - 1, best_epoch, best_score)
        if self.config.ema_decay > 0:
            self._start_average(resume_state)
        elif resume_state is not None and 'training_weights' in resume_state:
            # The first run saved a weight average in MODEL.last.lcm, but the optimizer
            # state belongs to the weights it moved, so training continues from those.
            self._load_training_weights(resume_state)

        if self.config.burn_in_frames and self.context.is_main:
            _, complete = with_burn_in(self.episodes, self.split.train_windows,
                                       self.config.burn_in_frames)
            LOGGER.info('burn-in: %d of %d training windows start from the state that the %d '
                        'frames before them leave; the rest start from rest, at the start of '
                        'a run', int(complete.sum()), len(complete), self.config.burn_in_frames)
        if self.context.distributed:
            from torch.nn.parallel import DistributedDataParallel
            self.model = DistributedDataParallel(self.policy, find_unused_parameters=True)
        return start_epoch, best_score, best_epoch, stale, trained_s

    def _check_optimizer_state(self) -> None:
        """Raise CheckpointError unless the loaded optimizer state fits every parameter.

        ``Optimizer.load_state_dict`` (torch 2.13) compares only the parameter counts, so a
        moment estimate of another shape would fail in the first step, and a NaN one would
        make every later step NaN.
        """
        names = {id(parameter): name for name, parameter in self.policy.named_parameters()}
        for group in self.optimizer.param_groups:
            for parameter in group['params']:
                for key, value in self.optimizer.state.get(parameter, {}).items():
                    problem = _optimizer_value_problem(key, value, parameter)
                    if problem is not None:
                        raise CheckpointError(
                            f'cannot resume: in the optimizer state in '
                            f'{self.paths.logs / RESUME_FILE}, {key} of parameter '
                            f'{names.get(id(parameter), "?")} {problem}; delete the file and '
                            'train without --resume')

    def _start_average(self, resume_state: Optional[dict]) -> None:
        """Start the weight average, or continue the one a resumed run saved.

        A resumed run's last checkpoint contains the average, so the weights the optimizer
        moved come from the resume state.
        """
        self.average = WeightAverage(self.policy, self.config.ema_decay)
        if resume_state is None:
            return
        if 'training_weights' not in resume_state:
            raise CheckpointError(
                f'cannot resume with ema_decay={self.config.ema_decay}: '
                f'{self.paths.logs / RESUME_FILE} was written without a weight average; '
                'resume with the first run\'s ema_decay, or train without --resume')
        self._load_training_weights(resume_state)
        self.average.updates = resume_state['average_updates']

    def _load_training_weights(self, resume_state: dict) -> None:
        """Load the weights the optimizer moved, which an averaged run saves in resume.pt."""
        weights = resume_state['training_weights']
        non_finite = sorted(name for name, value in weights.items()
                            if value.is_floating_point() and not torch.isfinite(value).all())
        if non_finite:
            raise CheckpointError(f'cannot resume: the training weights in '
                                  f'{self.paths.logs / RESUME_FILE} contain NaN or infinite '
                                  f'values in {", ".join(non_finite[:5])}; train without '
                                  '--resume')
        try:
            self.policy.load_state_dict(weights)
        except RuntimeError as error:
            raise CheckpointError(f'cannot resume: the training weights in '
                                  f'{self.paths.logs / RESUME_FILE} do not fit this model '
                                  f'({error}); train without --resume') from error

    @property
    def scored_policy(self) -> torch.nn.Module:
        """Return the policy that is validated and saved: the weight average if there is one."""
        return self.average.module if self.average is not None else self.policy

    def _load_initial_encoder(self, path: Path) -> None:
        """Start from the encoder weights of the checkpoint at ``path``."""
        try:
            policy, _ = load_checkpoint(path)
        except CheckpointError as error:
            raise CheckpointError(f'init_encoder: {error}; name a .lcm file written by '
                                  'liquid-control train') from error
        ours, theirs = self.policy.config, policy.config
        if (ours.input_height, ours.input_width, ours.encoder, ours.frame_gap) != \
                (theirs.input_height, theirs.input_width, theirs.encoder, theirs.frame_gap):
            raise ConfigError(
                f'init_encoder {path} has a {theirs.input_width}x{theirs.input_height} '
                f'encoder with settings {theirs.encoder} and frame_gap {theirs.frame_gap}, '
                f'but this run builds a {ours.input_width}x{ours.input_height} one with '
                f'{ours.encoder} and frame_gap {ours.frame_gap}; use the same preprocessing '
                'size, encoder settings and frame_gap as that model')
        self.policy.encoder.load_state_dict(policy.encoder.state_dict())
        if self.context.is_main:
            LOGGER.info('starting from the encoder of %s', path)

    def _pretrain(self) -> float:
        """Pretrain the encoder on single frames, or reuse an earlier run's equal pretraining.

        Returns the seconds the pretraining took, also when reused, so every model of a
        comparison reports its full training time.
        """
        config = self.config
        key = pretraining_key(config)
        reused = self.data.pretrained.get(key)
        if reused is not None:
            self.policy.encoder.load_state_dict(reused['encoder'])
            reused['statistics'].apply(self.policy)
            self.statistics = reused['statistics']
            self.pretrain_summary = dict(reused['summary'], reused=True)
            if self.context.is_main:
                LOGGER.info('reusing the encoder pretrained for an earlier run with the same '
                            'pretraining settings')
            return float(reused['summary'].get('seconds', 0.0))
        minutes = config.pretrain_minutes or None
        if config.max_minutes is not None:
            # Pretraining counts toward max_minutes but leaves the sequence training its share.
            share = config.max_minutes * PRETRAIN_SHARE_OF_MAX_MINUTES
            if minutes is None or share < minutes:
                minutes = share
                if self.context.is_main:
                    LOGGER.info('pretraining stops after %.1f minutes at the latest, half of '
                                'max_minutes', minutes)
        summary = pretrain_encoder(
            self.policy, self.episodes, self.split.train_windows,
            self.split.validation_segments, epochs=config.pretrain_epochs,
            minutes=minutes, batch_size=config.pretrain_batch_size,
            lr_encoder=config.pretrain_lr_encoder or config.lr_encoder,
            lr_readout=config.lr_recurrent,
            weight_decay=config.weight_decay, ema_decay=config.pretrain_ema_decay,
            patience=config.pretrain_patience, augmentation=config.augmentation(),
            output_signs=self.output_signs, seed=config.seed,
            horizons=config.pretrain_horizons, context=self.context, progress=self.progress)
        # The encoder changed, so its feature statistics must be measured again.
        self.statistics = measure_statistics(self.policy.encoder, self.episodes,
                                             self.split.train_windows, self.use_imu,
                                             seed=config.seed,
                                             frame_gap=self.policy.config.frame_gap)
        self.statistics.apply(self.policy)
        self.pretrain_summary = summary
        self.data.pretrained[key] = {
            'encoder': copy.deepcopy(self.policy.encoder.state_dict()),
            'statistics': self.statistics, 'summary': summary}
        return float(summary.get('seconds', 0.0))

    def _warm_up_core(self) -> float:
        """Fit the core alone on cached encoder features; return the seconds it took."""
        config = self.config
        summary = warm_up_core(
            self.policy, self.episodes, self.split.train_windows,
            self.split.validation_segments, epochs=config.core_warmup_epochs,
            batch_size=config.batch_size, lr=config.lr_recurrent,
            weight_decay=config.weight_decay, gradient_clip=config.gradient_clip,
            train_loss=lambda outputs, targets, mask: self._training_loss(
                outputs, targets, mask, config.warmup_frames),
            validation_loss_function=self._validation_loss, seed=config.seed)
        self.core_warmup_summary = summary
        if self.context.is_main and summary['validation_loss'] is None:
            LOGGER.info('fitted the core alone on cached encoder features: %d epochs in '
                        '%.1f s, without validation', summary['epochs'], summary['seconds'])
        elif self.context.is_main:
            LOGGER.info('fitted the core alone on cached encoder features: %d epochs in '
                        '%.1f s, kept epoch %d (val loss %.4f, before %.4f)',
                        summary['epochs'], summary['seconds'], summary['best_epoch'],
                        summary['validation_loss'], summary['initial_validation_loss'])
        return float(summary['seconds'])

    def _first_run_digest(self, saved_config: dict) -> str:
        """Return ``training_data_digest`` of this run's data split as the first run split it.

        The split differs from this run's only where a run without validation is resumed
        with validation.
        """
        defaults = TrainConfig().to_dict()
        first = {name: saved_config.get(name, defaults[name])
                 for name in (*SPLIT_SETTINGS, 'seed')}
        ours = self.config.to_dict()
        if all(first[name] == ours[name] for name in first):
            return self._data_digest()
        split = split_episodes(self.episodes, first['split'], first['validation_fraction'],
                               first['sequence_length'], first['stride'], first['max_gap_s'],
                               seed=first['seed'], test_fraction=first['test_fraction'],
                               validation_blocks=first['validation_blocks'])
        return training_data_digest(dataclasses.replace(self.data, split=split))

    def _load_resume_state(self) -> Optional[dict]:
        resume_path = self.paths.logs / RESUME_FILE
        if not self.paths.last.is_file() or not resume_path.is_file():
            raise CheckpointError(
                f'cannot resume: {self.paths.last} or {resume_path} is missing; train '
                'without --resume first, with the same --out')
        policy, metadata = load_checkpoint(self.paths.last)
        problem = training_metadata_problem(metadata)
        if problem is not None:
            raise CheckpointError(f'cannot resume {self.paths.last}: {problem}, so it was not '
                                  'written by liquid-control train; train without --resume')
        # The steps before epoch 1 ran only in the first run; their records carry over.
        self.pretrain_summary = metadata.get('pretraining') or {}
        self.core_warmup_summary = metadata.get('core_warmup') or {}
        saved_config = metadata.get('train_config', {})
        if saved_config.get('family') != self.config.family:
            raise CheckpointError(
                f'cannot resume {self.paths.last}: it is a {saved_config.get("family")} '
                f'model and this run trains {self.config.family}')
        # A changed split would validate on frames the first run trained on.
        defaults = TrainConfig().to_dict()
        ours_split = self.config.to_dict()
        moved = [name for name in SPLIT_SETTINGS
                 if saved_config.get(name, defaults[name]) != ours_split[name]]
        if saved_config.get('validation_fraction') == 0 and set(moved) <= {
                'validation_fraction', 'validation_blocks'}:
            # The first run trained on every frame, so any validation part is allowed.
            if moved and self.context.is_main:
                LOGGER.warning('resuming with validation: the earlier epochs trained on '
                               'the validation frames too')
            moved = []
        if moved:
            raise CheckpointError(
                f'cannot resume {self.paths.last}: the first run split the data with '
                + ', '.join(f'{name}={saved_config.get(name, defaults[name])!r}'
                            for name in moved)
                + ' but this run uses '
                + ', '.join(f'{name}={ours_split[name]!r}' for name in moved)
                + '; resume with the settings of the first run, or train without --resume')
        recorded = metadata.get('training_data_sha256')
        if recorded is not None and recorded != self._first_run_digest(saved_config):
            raise ConfigError(
                f'cannot resume {self.paths.last}: the data differs from the run being '
                'resumed: its frames, labels, IMU readings or split differ from those that '
                'the checkpoint records (training_data_sha256), so the validation and test '
                'parts could contain frames that the first run trained on; give the same '
                'DATA, or start a new run without --resume')
        # Settings such as frame_gap or ode_unfolds leave every tensor shape as it is, so
        # loading the weights alone would not catch a change of them.
        theirs, ours = policy.config.to_dict(), self.policy.config.to_dict()
        changed = sorted(name for name in ours if name != 'seed'
                         and theirs.get(name) != ours[name])
        if changed:
            raise CheckpointError(
                f'cannot resume {self.paths.last}: its model was built with '
                + ', '.join(f'{name}={theirs.get(name)!r}' for name in changed)
                + ' but this run builds '
                + ', '.join(f'{name}={ours[name]!r}' for name in changed)
                + '; resume with the settings of the first run, or train without --resume')
        try:
            self.policy.load_state_dict(policy.state_dict())
        except RuntimeError as error:
            raise CheckpointError(f'cannot resume {self.paths.last}: its model settings '
                                  f'differ from this run ({error})') from error
        try:
            state = torch.load(resume_path, weights_only=True)
        except Exception as error:  # torch raises several types for damaged files
            # torch's own text can be pages long and suggests weights_only=False, which
            # would let the file run code, so the message gives only the type.
            LOGGER.debug('torch.load(%s) failed: %s', resume_path, error)
            raise CheckpointError(f'{resume_path} is damaged or not a resume state of '
                                  f'liquid-control train ({type(error).__name__}); delete it '
                                  'and train without --resume') from error
        problem = _resume_state_problem(state)
        if problem is None:
            problem = _best_score_problem(
                state, saved_config.get('validation_fraction', defaults['validation_fraction']))
        if problem is not None:
            raise CheckpointError(f'{resume_path} is not a resume state of liquid-control '
                                  f'train ({problem}); delete it and train without --resume')
        if metadata.get('epoch') != state['epoch']:
            # Each epoch writes the last checkpoint first and the resume state second, so
            # a run stopped between the two leaves a pair from different epochs.
            raise CheckpointError(
                f'cannot resume: {self.paths.last} is from epoch {metadata.get("epoch")} but '
                f'{resume_path} from epoch {state["epoch"]}, so the run stopped while saving; '
                'train without --resume')
        self._output_mean = metadata.get('training_output_mean', {})
        self._output_std = metadata.get('training_output_std', {})
        return state

    # -- one epoch -----------------------------------------------------------------------

    def _output_scale(self) -> torch.Tensor:
        std = getattr(self.policy, 'output_std', None)
        if isinstance(std, torch.Tensor) and std.numel() == len(self.config.outputs):
            return std.detach().float().reshape(-1)
        return torch.ones(len(self.config.outputs))

    def _batch_loss(self, batch: Dict[str, Optional[torch.Tensor]], warmup: int,
                    complete: Optional[np.ndarray] = None) -> torch.Tensor:
        """Return the loss of a batch; with ``complete`` set, its first frames burn in."""
        state = None
        if complete is not None:
            burn_in = self.config.burn_in_frames
            state = self._burned_in_state(batch, burn_in, complete)
            batch = {name: None if value is None else value[:, burn_in:]
                     for name, value in batch.items()}
        outputs, _ = self.model(batch['frames'], batch['imu'], batch['dt'], state)  # (B, T, O)
        return self._training_loss(outputs, batch['targets'], batch['mask'], warmup)

    def _burned_in_state(self, batch: Dict[str, Optional[torch.Tensor]], burn_in: int,
                         complete: np.ndarray) -> torch.Tensor:
        """Run the first ``burn_in`` frames without gradients; return the state they leave.

        Windows whose frames before them were missing (``complete`` False) start from rest.
        NOTE: burn-in has not run under torchrun. It calls the policy outside the
        distributed wrapper, so only the window's pass synchronises gradients.
        """
        imu = batch['imu'][:, :burn_in] if batch['imu'] is not None else None
        with torch.no_grad():
            _, state = self.policy(batch['frames'][:, :burn_in], imu, batch['dt'][:, :burn_in])
        rest = self.policy.initial_state(len(complete))
        return torch.where(torch.from_numpy(complete)[:, None], state, rest)

    def _training_loss(self, outputs: torch.Tensor, targets: torch.Tensor,
                       mask: torch.Tensor, warmup: int) -> torch.Tensor:
        """Return the training loss of outputs (B, T, O) in physical units."""
        scale = self._output_scale()
        frame_weights = None
        if self.config.sharp_turn_weight > 0:
            index = list(self.config.outputs).index(self.config.sharp_turn_output)
            frame_weights = sharp_turn_weights(targets[..., index], float(scale[index]),
                                               self.config.sharp_turn_weight)
        loss = sequence_loss(outputs, targets, mask, scale,
                             kind=self.config.loss, warmup_frames=warmup,
                             output_weights=self.config.output_weights or None,
                             frame_weights=frame_weights,
                             huber_delta=self.config.huber_delta)
        return loss + self._correlation_term(outputs, targets, mask, warmup)

    def _validation_loss(self, outputs: torch.Tensor, targets: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
        """Return the loss that validation scores: every frame counts, without turn weights."""
        loss = sequence_loss(outputs, targets, mask, self._output_scale(),
                             kind=self.config.loss,
                             output_weights=self.config.output_weights or None,
                             huber_delta=self.config.huber_delta)
        return loss + self._correlation_term(outputs, targets, mask)

    def _correlation_term(self, outputs: torch.Tensor, targets: torch.Tensor,
                          mask: torch.Tensor, warmup: int = 0) -> torch.Tensor:
        """Return ``correlation_weight * (1 - r)``, or 0 when the weight is 0."""
        if self.config.correlation_weight <= 0:
            return torch.zeros((), dtype=outputs.dtype)
        return self.config.correlation_weight * correlation_loss(
            outputs, targets, mask, warmup_frames=warmup,
            output_weights=self.config.output_weights or None)

    def _progress(self, epoch: int, fraction: float) -> float:
        """Return how far the run is through its epochs, 0..1, for the learning-rate schedule.

        The time limit is not used, because a schedule that followed the clock would
        give the same seed other weights on a busier machine. A run that the limit stops
        ends with the rate not fully decayed, and the log gives the rate it reached.
        """
        return (epoch - 1 + fraction) / self.config.epochs

    def _set_learning_rates(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            base = self.config.lr_encoder if group.get('name') == 'encoder' else \
                self.config.lr_recurrent
            group['lr'] = base * factor

    def _train_epoch(self, epoch: int, deadline: Optional[float]) -> Tuple[float, bool]:
        """Run one epoch; return (mean training loss, whether the time limit was hit)."""
        config = self.config
        rng = np.random.default_rng([config.seed, epoch, self.context.rank])
        torch.manual_seed(config.seed * 100003 + epoch)
        augmentation = config.augmentation()
        encoder = getattr(self.policy, 'encoder', None)
        if encoder is not None and not config.freeze_encoder:
            # The first freeze_encoder_epochs fit only the core and its output map, so the
            # untrained core's first gradients do not distort the pretrained features.
            encoder.requires_grad_(epoch > config.freeze_encoder_epochs)
        windows = shard_windows(self.split.train_windows, self.context)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(windows))
        batch_count = math.ceil(len(order) / config.batch_size)
        if config.max_batches_per_epoch:
            batch_count = min(batch_count, config.max_batches_per_epoch)

        bar = None
        if self.progress and self.context.is_main:
            from tqdm import tqdm
            bar = tqdm(total=batch_count, desc=f'epoch {epoch}', unit='batch', leave=False)
        self.model.train()
        total, seen, out_of_time = 0.0, 0, False
        try:
            for batch_number in range(batch_count):
                chosen = [windows[i] for i in
                          order[batch_number * config.batch_size:
                                (batch_number + 1) * config.batch_size]]
                complete = None
                if config.burn_in_frames:
                    chosen, complete = with_burn_in(self.episodes, chosen,
                                                    config.burn_in_frames)
                batch = to_tensors(collate(self.episodes, chosen, rng, augmentation,
                                           self.output_signs))
                progress = self._progress(epoch, batch_number / batch_count)
                # Every rank must use the same rate; rank 0's progress decides.
                if self.context.distributed:
                    progress = distributed.broadcast_value(self.context, progress)
                self._set_learning_rates(schedule_factor(config, progress))
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._batch_loss(batch, config.warmup_frames, complete)
                if not torch.isfinite(loss):
                    raise LiquidControlError(
                        f'training failed: the loss became {loss.item()} in epoch {epoch}; lower '
                        'lr_encoder/lr_recurrent or check the data for extreme values')
                loss.backward()
                if config.gradient_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(),
                                                   config.gradient_clip)
                self.optimizer.step()
                if self.average is not None:
                    self.average.update(self.policy)
                total += float(loss.item()) * len(chosen)
                seen += len(chosen)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f'{total / seen:.4f}')
                late = deadline is not None and time.perf_counter() > deadline
                if distributed.any_rank(self.context, late):
                    out_of_time = True
                    break
        finally:
            if bar is not None:
                bar.close()
        mean_loss = total / max(seen, 1)
        return distributed.mean_over_ranks(self.context, mean_loss), out_of_time

    def validate(self) -> Dict[str, float]:
        """Replay every validation segment from a fresh state; return loss and metrics.

        Without validation segments (``validation_fraction: 0``) the loss is NaN and there
        are no metrics.
        """
        return self.score_segments(self.scored_policy, self.split.validation_segments, 'val')

    @torch.no_grad()
    def score_segments(self, policy, segments, prefix: str) -> Dict[str, float]:
        """Replay ``segments`` through ``policy`` from a fresh state and return loss and metrics.

        Keys are ``PREFIX/loss`` and ``PREFIX/OUTPUT/METRIC``. Without segments the loss
        is NaN and there are no metrics.
        """
        if not segments:
            return {f'{prefix}/loss': math.nan}
        policy.eval()
        predictions, targets, masks = [], [], []
        losses, weights = 0.0, 0.0
        try:
            for segment in segments:
                cached = self.episodes[segment.episode_index]
                batch = to_tensors(segment_arrays(cached, segment))
                outputs, _ = policy(batch['frames'], batch['imu'], batch['dt'])
                mask = batch['mask']
                count = float(mask.sum())
                if count > 0:
                    loss = self._validation_loss(outputs, batch['targets'], mask)
                    losses += float(loss) * count
                    weights += count
                predictions.append(outputs[0].numpy())
                targets.append(batch['targets'][0].numpy())
                masks.append(mask[0].numpy())
        finally:
            policy.train()
        prediction = np.concatenate(predictions)
        target = np.concatenate(targets)
        mask = np.concatenate(masks)
        values = {f'{prefix}/loss': losses / weights if weights else math.nan}
        means = self.output_mean()
        for index, name in enumerate(self.config.outputs):
            scored_target = np.where(mask, target[:, index], np.nan)
            metrics = regression_metrics(prediction[:, index], scored_target, means[name])
            for key in ('mae', 'rmse', 'pearson', 'r2', 'baseline_mae'):
                values[f'{prefix}/{name}/{key}'] = metrics[key]
        return values

    def score_test_part(self) -> Dict[str, float]:
        """Score the best checkpoint on the held-out test part and record it in that file.

        Returns the 'test/...' metrics, or an empty dict without a test part. The metrics
        are stored as ``test_metrics`` in the best checkpoint's metadata.
        """
        if not self.split.test_segments:
            return {}
        policy, metadata = load_checkpoint(self.paths.best)
        values = self.score_segments(policy, self.split.test_segments, 'test')
        metadata['test_metrics'] = {key: float(value) for key, value in values.items()
                                    if math.isfinite(value)}
        self._save(self.paths.best, metadata, policy)
        for name in self.config.outputs:
            LOGGER.info('held-out test %s (best checkpoint): MAE %.4f (constant predictor '
                        '%.4f), Pearson r %.3f', name, values[f'test/{name}/mae'],
                        values[f'test/{name}/baseline_mae'], values[f'test/{name}/pearson'])
        return values

    def output_mean(self) -> Dict[str, float]:
        """Return the training mean of every output, the constant predictor's value."""
        if self.statistics is not None:
            return {name: float(value) for name, value in
                    zip(self.config.outputs, self.statistics.output_mean)}
        return {name: float(value) for name, value in self._output_mean.items()}

    def output_std(self) -> Dict[str, float]:
        """Return the training std of every output."""
        if self.statistics is not None:
            return {name: float(value) for name, value in
                    zip(self.config.outputs, self.statistics.output_std)}
        return {name: float(value) for name, value in self._output_std.items()}

    # -- checkpoints ---------------------------------------------------------------------

    def _data_digest(self) -> str:
        """Return ``training_data_digest`` of this run's data, computed once."""
        if getattr(self, '_digest', None) is None:
            self._digest = training_data_digest(self.data)
        return self._digest

    def metadata(self, epoch: int, best_epoch: int, kind: str, values: Dict[str, float],
                 train_seconds: float) -> dict:
        """Return the JSON-able training record stored with each checkpoint."""
        return {
            'kind': kind,
            'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec='seconds'),
            'data_sources': self.sources,
            'episodes': [cached.name for cached in self.episodes],
            'frames': int(sum(len(cached) for cached in self.episodes)),
            'split': self.config.split,
            'validation': Split.describe_segments(self.episodes,
                                                  self.split.validation_segments),
            'test': Split.describe_segments(self.episodes, self.split.test_segments),
            'training_windows': len(self.split.train_windows),
            'training_data_sha256': self._data_digest(),
            'training_output_mean': self.output_mean(),
            'training_output_std': self.output_std(),
            'train_config': self.config.to_dict(),
            'epoch': epoch,
            'best_epoch': best_epoch,
            'validation_metrics': {key: float(value) for key, value in values.items()
                                   if math.isfinite(value)},
            'train_seconds': round(train_seconds, 1),
            'pretraining': self.pretrain_summary,
            'core_warmup': self.core_warmup_summary,
            'world_size': self.context.world_size,
            'torch_version': torch.__version__,
        }

    def _save(self, path: Path, metadata: dict, policy=None) -> None:
        """Write ``policy`` (by default the scored policy) with ``metadata`` to ``path``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, self.scored_policy if policy is None else policy, metadata)
        except OSError as error:
            raise CheckpointError(f'cannot write checkpoint {path}: {error}; free disk space '
                                  'or choose a writable --out') from error

    def _save_resume_state(self, epoch: int, best_score: float, best_epoch: int,
                           stale: int, train_seconds: float) -> None:
        temporary = self.paths.logs / (RESUME_FILE + '.tmp')
        try:
            self.paths.logs.mkdir(parents=True, exist_ok=True)
            state = {'optimizer': self.optimizer.state_dict(), 'epoch': epoch,
                     'best_score': best_score, 'best_epoch': best_epoch,
                     'stale_epochs': stale, 'train_seconds': train_seconds}
            if self.average is not None:
                state['training_weights'] = self.policy.state_dict()
                state['average_updates'] = self.average.updates
            torch.save(state, temporary)
            temporary.replace(self.paths.logs / RESUME_FILE)
        except (OSError, RuntimeError) as error:  # torch.save raises RuntimeError on I/O
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass  # the write error above is the one to report
            raise CheckpointError(f'cannot write the resume state {temporary}: {error}; free '
                                  'disk space or choose a writable --out') from error

    # -- the run -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train until the epochs, the patience or the time limit run out."""
        config = self.config
        start_epoch, best_score, best_epoch, stale, trained_s = self._prepare()
        session_started = time.perf_counter()
        deadline = None
        if config.max_minutes is not None:
            deadline = session_started + config.max_minutes * 60.0 - trained_s
        log = EpochLog(self.paths.logs, enabled=self.context.is_main)
        counts = self.policy.parameter_counts()
        if self.context.is_main:
            encoder = f'{counts.get("encoder", 0):,}'
            if config.freeze_encoder:
                frozen = sum(p.numel() for p in self.policy.encoder.parameters())
                encoder = f'0, {frozen:,} frozen'
            LOGGER.info('training %s: %s parameters (encoder %s, recurrent %s), %d epochs '
                        'at most', config.family, f'{counts.get("total", 0):,}', encoder,
                        f'{counts.get("recurrent", 0):,}', config.epochs)
            if config.freeze_encoder_epochs and not config.freeze_encoder:
                LOGGER.info('the encoder stays frozen for the first %d epoch(s)',
                            config.freeze_encoder_epochs)

        stop_reason = 'epochs'
        epoch = start_epoch - 1
        values: Dict[str, float] = {}
        try:
            for epoch in range(start_epoch, config.epochs + 1):
                epoch_started = time.perf_counter()
                train_loss, out_of_time = self._train_epoch(epoch, deadline)
                improved = False
                if self.context.is_main:
                    values = {'train/loss': train_loss, **self.validate()}
                    validated = bool(self.split.validation_segments)
                    values['time/epoch_s'] = time.perf_counter() - epoch_started
                    values['time/total_s'] = trained_s + time.perf_counter() - session_started
                    for group in self.optimizer.param_groups:
                        values[f'lr/{group.get("name", "group")}'] = group['lr']
                    score = values['val/loss']
                    # Without validation the latest epoch counts as the best, and the run
                    # ends only when the epochs or the time limit run out.
                    improved = not validated or (math.isfinite(score) and score < best_score)
                    if improved:
                        best_score, best_epoch, stale = score, epoch, 0
                    else:
                        stale += 1
                    self.history.append({'epoch': epoch, **values})
                    log.write(epoch, values)
                    LOGGER.info(summary_line(epoch, config.epochs, values, config.outputs,
                                             improved and validated))
                    total_s = values['time/total_s']
                    if improved:
                        self._save(self.paths.best, self.metadata(
                            epoch, best_epoch, 'best', values, total_s))
                    self._save(self.paths.last, self.metadata(
                        epoch, best_epoch, 'last', values, total_s))
                    self._save_resume_state(epoch, best_score, best_epoch, stale, total_s)
                patience_over = distributed.broadcast_flag(
                    self.context, stale >= config.patience)
                if out_of_time:
                    stop_reason = f'time limit of {config.max_minutes} minutes'
                    if epoch < config.epochs and config.lr_schedule != 'constant' and \
                            self.context.is_main:
                        LOGGER.info('the time limit came after epoch %d of %d, with the '
                                    'learning rate at %.0f %% of its start; for a schedule '
                                    'that ends within the limit, set epochs to about %d',
                                    epoch, config.epochs,
                                    100.0 * schedule_factor(config, epoch / config.epochs),
                                    epoch)
                    break
                if patience_over:
                    stop_reason = (f'no improvement of the validation loss for '
                                   f'{config.patience} epochs')
                    break
        finally:
            log.close()
        train_seconds = trained_s + time.perf_counter() - session_started
        best_metrics = {}
        for row in self.history:
            if row['epoch'] == best_epoch:
                best_metrics = {k: v for k, v in row.items() if k != 'epoch'}
        if self.context.is_main and self.split.validation_segments:
            LOGGER.info('stopped after epoch %d (%s); best epoch %d, val loss %.4f; '
                        '%.1f minutes; best checkpoint %s', epoch, stop_reason, best_epoch,
                        best_score, train_seconds / 60.0, self.paths.best)
        elif self.context.is_main:
            LOGGER.info('stopped after epoch %d (%s), without validation; %.1f minutes; '
                        'the best checkpoint %s is the last epoch\'s', epoch, stop_reason,
                        train_seconds / 60.0, self.paths.best)
        test_metrics = self.score_test_part() if self.context.is_main else {}
        return TrainResult(paths=self.paths, epochs_run=epoch, best_epoch=best_epoch,
                           best_metrics=best_metrics, train_seconds=train_seconds,
                           stop_reason=stop_reason, parameter_counts=dict(counts),
                           history=list(self.history), test_metrics=test_metrics)


def training_metadata_problem(metadata: dict) -> Optional[str]:
    """Return which training record in a checkpoint's metadata has the wrong type, or None.

    The checksum proves only that the file is intact, not that its writer was this trainer.
    """
    for key in ('train_config', 'training_output_mean', 'training_output_std',
                'pretraining', 'core_warmup'):
        if not isinstance(metadata.get(key, {}), (dict, type(None))):
            return f'its metadata {key} is not a mapping'
    for key in ('training_output_mean', 'training_output_std'):
        values = (metadata.get(key) or {}).values()
        if not all(isinstance(value, (int, float)) for value in values):
            return f'its metadata {key} contains a value that is not a number'
    for key in ('epoch', 'best_epoch'):
        value = metadata.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            return f'its metadata {key} is {value!r}, not an integer'
    if not isinstance(metadata.get('train_seconds', 0.0), (int, float)):
        return f'its metadata train_seconds is {metadata["train_seconds"]!r}, not a number'
    return None


def _resume_state_problem(state) -> Optional[str]:
    """Return what is missing or mistyped in a loaded ``resume.pt``, or None."""
    if not isinstance(state, dict):
        return f'it contains a {type(state).__name__}, not a dict'
    if not isinstance(state.get('optimizer'), dict):
        return 'the optimizer state is missing'
    for key in ('epoch', 'best_epoch', 'stale_epochs'):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f'{key} is {value!r}, not a count'
    for key in ('best_score', 'train_seconds'):
        if not isinstance(state.get(key), (int, float)):
            return f'{key} is {state.get(key)!r}, not a number'
    # A run with ema_decay > 0 also saves the weights the optimizer moved.
    if 'training_weights' in state:
        weights = state['training_weights']
        if not isinstance(weights, dict) or not all(
                isinstance(name, str) and isinstance(value, torch.Tensor)
                for name, value in weights.items()):
            return 'training_weights is not a mapping of parameter names to tensors'
        updates = state.get('average_updates')
        if not isinstance(updates, int) or isinstance(updates, bool) or updates < 0:
            return f'average_updates is {updates!r}, not a count'
    return None


def _optimizer_value_problem(key: str, value, parameter: torch.Tensor) -> Optional[str]:
    """Return what is wrong with one entry of a parameter's optimizer state, or None.

    AdamW keeps the step count as a scalar tensor (a number in older torch versions) and
    the moment estimates as tensors of the parameter's shape.
    """
    if key == 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if not isinstance(value, torch.Tensor):
        return f'is a {type(value).__name__}, not a tensor'
    expected = () if key == 'step' else tuple(parameter.shape)
    if tuple(value.shape) != expected:
        return f'has shape {list(value.shape)}, but it needs {list(expected)}'
    if value.is_floating_point() and not torch.isfinite(value).all():
        return 'contains NaN or infinite values'
    return None


def _best_score_problem(state: dict, validation_fraction) -> Optional[str]:
    """Return why ``state['best_score']`` cannot come from the first run, or None.

    A run without validation (``validation_fraction`` 0) stores NaN. With validation the
    score is the best finite validation loss, or infinity while no epoch has had one
    (best epoch 0). Accepting NaN there would let any later epoch replace the best
    checkpoint.
    """
    score = float(state['best_score'])
    if validation_fraction == 0 or math.isfinite(score):
        return None
    if score == math.inf and state['best_epoch'] == 0:
        return None
    return (f'best_score is {score}, but the first run validated its epochs, so it must be '
            'a finite validation loss')


def train(config: TrainConfig, episodes: Sequence, out: Path, **options) -> TrainResult:
    """Train a policy on ``episodes`` and write its checkpoints next to ``out``.

    ``options`` go to ``Trainer``: ``sources``, ``resume``, ``progress``, ``context``.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    return Trainer(config, episodes, out, **options).run()
