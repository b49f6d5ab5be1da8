"""Training settings: one dataclass, loaded from YAML and overridden from the command line."""

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import yaml

from liquid_control.data.augment import Augmentation
from liquid_control.errors import ConfigError, reject_unknown_keys

FAMILIES = ('ncp_ltc', 'ncp_cfc', 'fc_ltc', 'lstm', 'gru', 'cnn')
SPLITS = ('time', 'episode_end', 'episode')
LOSSES = ('mse', 'huber', 'l1')
SCHEDULES = ('constant', 'cosine')


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoint's metadata.

    ``model`` contains extra ``PolicyConfig`` fields (for example ``units``) that pass
    through to the model unchanged; ``family_model`` adds fields for one family only, on
    top of ``model`` (``model_settings()`` merges them). Times are in seconds, learning
    rates per step.
    """

    family: str = 'ncp_ltc'
    model: Dict[str, Any] = field(default_factory=dict)
    family_model: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    preprocessing: Dict[str, Any] = field(default_factory=dict)
    outputs: Tuple[str, ...] = ('angular_z', 'linear_x')
    use_imu: str = 'auto'

    sequence_length: int = 16
    stride: int = 4
    max_gap_s: float = 0.5
    warmup_frames: int = 4
    burn_in_frames: int = 0
    split: str = 'time'
    validation_fraction: float = 0.2
    validation_blocks: int = 1
    test_fraction: float = 0.0

    batch_size: int = 16
    epochs: int = 30
    max_minutes: Optional[float] = None
    max_batches_per_epoch: Optional[int] = None
    init_encoder: Optional[str] = None
    pretrain_epochs: int = 0
    pretrain_lr_encoder: Optional[float] = None
    pretrain_minutes: float = 0.0
    pretrain_batch_size: int = 64
    pretrain_patience: int = 4
    pretrain_ema_decay: float = 0.998
    pretrain_horizons: Tuple[int, ...] = (0,)
    ema_decay: float = 0.0
    freeze_encoder: bool = False
    freeze_encoder_epochs: int = 0
    core_warmup_epochs: int = 0
    lr_encoder: float = 1e-3
    lr_recurrent: float = 5e-3
    lr_schedule: str = 'cosine'
    lr_min_fraction: float = 0.05
    weight_decay: float = 1e-4
    gradient_clip: float = 1.0
    loss: str = 'huber'
    huber_delta: float = 1.0
    correlation_weight: float = 0.0
    output_weights: Tuple[float, ...] = ()
    sharp_turn_weight: float = 0.0
    sharp_turn_output: str = 'angular_z'
    patience: int = 8
    seed: int = 0
    threads: Optional[int] = None
    augment: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # YAML reads yes and no as booleans, in a file and in --set use_imu=yes alike.
        if isinstance(self.use_imu, bool):
            object.__setattr__(self, 'use_imu', 'yes' if self.use_imu else 'no')
        if not isinstance(self.use_imu, str):
            raise ConfigError(f'use_imu={self.use_imu!r} is invalid; use auto, yes or no')
        # Types first, so that the range checks below never compare a string with a number.
        for setting in fields(self):
            _check_type(setting.name, getattr(self, setting.name), setting.type)
            # A whole number in a float setting becomes a float, so max_minutes 40 from
            # YAML and 40.0 from the command line make the same pretraining key.
            value = getattr(self, setting.name)
            if (setting.type in (float, Optional[float]) and isinstance(value, int)
                    and not isinstance(value, bool)):
                object.__setattr__(self, setting.name, float(value))
        if self.family not in FAMILIES:
            raise ConfigError(f'family {self.family!r} is unknown; use one of {FAMILIES}')
        if self.split not in SPLITS:
            raise ConfigError(f'split {self.split!r} is unknown; use one of {SPLITS}')
        if self.loss not in LOSSES:
            raise ConfigError(f'loss {self.loss!r} is unknown; use one of {LOSSES}')
        if not (math.isfinite(self.huber_delta) and self.huber_delta > 0):
            raise ConfigError(f'huber_delta={self.huber_delta} is invalid: use a positive '
                              'number of standard deviations, e.g. 1.0')
        if not 0.0 <= self.correlation_weight <= 10.0:
            raise ConfigError(f'correlation_weight={self.correlation_weight} is invalid: use '
                              '0 (off) to 10, e.g. 0.5')
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f'lr_schedule {self.lr_schedule!r} is unknown; use one of '
                              f'{SCHEDULES}')
        if not 0.0 <= self.lr_min_fraction <= 1.0:
            raise ConfigError(f'lr_min_fraction={self.lr_min_fraction} is invalid: use 0..1')
        if self.use_imu not in ('auto', 'yes', 'no'):
            raise ConfigError(f'use_imu={self.use_imu!r} is invalid; use auto, yes or no')
        if not self.outputs:
            raise ConfigError('outputs is empty; name at least one command, e.g. angular_z')
        for name in ('sequence_length', 'stride', 'batch_size', 'epochs', 'patience',
                     'pretrain_batch_size', 'pretrain_patience'):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f'{name}={value!r} is invalid: use an integer >= 1')
        for family, settings in self.family_model.items():
            if family not in FAMILIES:
                raise ConfigError(f'family_model has settings for {family!r}, which is not a '
                                  f'family; use keys from {FAMILIES}')
            if not isinstance(settings, dict):
                raise ConfigError(f'family_model.{family}={settings!r} is invalid: use a '
                                  'mapping of model settings, e.g. {units: 32}')
        frame_gap = self.model_settings().get('frame_gap', 0)
        if isinstance(frame_gap, int) and frame_gap >= self.sequence_length:
            raise ConfigError(f'model.frame_gap={frame_gap} is invalid with sequence_length='
                              f'{self.sequence_length}: no training frame would see the change '
                              'over that many steps; use a frame_gap below sequence_length')
        if not 0 <= self.warmup_frames < self.sequence_length:
            raise ConfigError(f'warmup_frames={self.warmup_frames} is invalid: use 0 <= '
                              f'warmup_frames < sequence_length ({self.sequence_length})')
        if (not isinstance(self.burn_in_frames, int) or isinstance(self.burn_in_frames, bool)
                or not 0 <= self.burn_in_frames <= self.sequence_length):
            raise ConfigError(f'burn_in_frames={self.burn_in_frames!r} is invalid: use a whole '
                              f'number from 0 to sequence_length ({self.sequence_length}); '
                              'a longer burn-in could reach into the validation frames')
        if not 0.0 <= self.validation_fraction < 0.9:
            raise ConfigError(f'validation_fraction={self.validation_fraction} is invalid: '
                              'use a value from 0 (no validation: train for a fixed number '
                              'of epochs) to below 0.9')
        if not (isinstance(self.validation_blocks, int) and 1 <= self.validation_blocks <= 100):
            raise ConfigError(f'validation_blocks={self.validation_blocks!r} is invalid: use an '
                              'integer from 1 (one validation stretch before the test part) '
                              'to 100')
        if self.validation_blocks > 1 and self.split == 'episode':
            raise ConfigError(f'validation_blocks={self.validation_blocks} needs split=time or '
                              'split=episode_end; split=episode holds out whole episodes')
        if not 0.0 <= self.test_fraction < 0.9 - self.validation_fraction:
            raise ConfigError(f'test_fraction={self.test_fraction} is invalid: use 0 <= '
                              'test_fraction and keep test_fraction + validation_fraction '
                              'below 0.9')
        for name in ('lr_encoder', 'lr_recurrent'):
            if not getattr(self, name) > 0:
                raise ConfigError(f'{name}={getattr(self, name)} is invalid: use a value > 0')
        if self.max_gap_s <= 0:
            raise ConfigError(f'max_gap_s={self.max_gap_s} is invalid: use seconds > 0')
        if not (isinstance(self.pretrain_epochs, int) and self.pretrain_epochs >= 0):
            raise ConfigError(f'pretrain_epochs={self.pretrain_epochs!r} is invalid: use an '
                              'integer >= 0 (0 with pretrain_minutes 0 skips pretraining)')
        if self.pretrain_lr_encoder is not None and not self.pretrain_lr_encoder > 0:
            raise ConfigError(f'pretrain_lr_encoder={self.pretrain_lr_encoder} is invalid: '
                              'use a value > 0, or null for lr_encoder')
        if self.pretrain_minutes < 0:
            raise ConfigError(f'pretrain_minutes={self.pretrain_minutes} is invalid: use '
                              'minutes >= 0 (0 skips encoder pretraining)')
        if not 0.0 <= self.pretrain_ema_decay < 1.0:
            raise ConfigError(f'pretrain_ema_decay={self.pretrain_ema_decay} is invalid: use '
                              '0 <= decay < 1 (0 keeps the latest weights)')
        horizons = list(self.pretrain_horizons)
        if 0 not in horizons or len(set(horizons)) != len(horizons):
            raise ConfigError(f'pretrain_horizons {horizons} is invalid: list distinct frame '
                              'offsets that include 0, e.g. [0] or [-4, 0, 4, 8]')
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f'ema_decay={self.ema_decay} is invalid: use 0 <= decay < 1 '
                              '(0 validates and saves the latest weights)')
        if not (isinstance(self.freeze_encoder_epochs, int) and self.freeze_encoder_epochs >= 0):
            raise ConfigError(f'freeze_encoder_epochs={self.freeze_encoder_epochs!r} is invalid: '
                              'use an integer >= 0 (0 trains the encoder from the first epoch)')
        if not (isinstance(self.core_warmup_epochs, int) and self.core_warmup_epochs >= 0):
            raise ConfigError(f'core_warmup_epochs={self.core_warmup_epochs!r} is invalid: use '
                              'an integer >= 0 (0 skips fitting the core alone first)')
        if not isinstance(self.freeze_encoder, bool):
            raise ConfigError(f'freeze_encoder={self.freeze_encoder!r} is invalid: use true '
                              'or false')
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f'max_minutes={self.max_minutes} is invalid: use minutes > 0')
        if self.max_batches_per_epoch is not None and self.max_batches_per_epoch < 1:
            raise ConfigError(f'max_batches_per_epoch={self.max_batches_per_epoch} is invalid: '
                              'use an integer >= 1, or null for every batch')
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f'threads={self.threads} is invalid: use an integer >= 1, or '
                              "null for torch's default")
        # numpy's generators take no negative seed, and the trainer's seed * 100003 + epoch
        # must stay within torch.manual_seed's 64 bits.
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f'seed={self.seed} is invalid: use an integer from 0 to 2**32 - 1')
        for name in ('weight_decay', 'gradient_clip'):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name}={getattr(self, name)} is invalid: use a value >= 0 '
                                  '(0 turns it off)')
        if any(weight < 0 for weight in self.output_weights):
            raise ConfigError(f'output_weights {list(self.output_weights)} is invalid: use '
                              'weights >= 0')
        if self.output_weights and len(self.output_weights) != len(self.outputs):
            raise ConfigError(f'output_weights {list(self.output_weights)} must have one '
                              f'weight for each output {list(self.outputs)}')
        if self.sharp_turn_weight < 0:
            raise ConfigError(f'sharp_turn_weight={self.sharp_turn_weight} is invalid: '
                              'use a value >= 0 (0 turns the weighting off)')
        if self.sharp_turn_weight > 0 and self.sharp_turn_output not in self.outputs:
            raise ConfigError(f'sharp_turn_output {self.sharp_turn_output!r} is not one of '
                              f'the outputs {list(self.outputs)}')
        self.augmentation()  # validates the augment dict early

    def model_settings(self) -> Dict[str, Any]:
        """Return the ``PolicyConfig`` fields of this run: ``model``, then ``family``'s own."""
        return {**self.model, **(self.family_model.get(self.family) or {})}

    def augmentation(self) -> Augmentation:
        """Return the augmentation settings as an ``Augmentation``."""
        return Augmentation.from_dict(self.augment)

    def to_dict(self) -> Dict[str, Any]:
        """Return the settings as a JSON-compatible dict."""
        values = asdict(self)
        values['outputs'] = list(self.outputs)
        values['output_weights'] = list(self.output_weights)
        values['pretrain_horizons'] = list(self.pretrain_horizons)
        return values

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'TrainConfig':
        """Build from a dict such as ``to_dict()`` output, rejecting unknown keys."""
        reject_unknown_keys(values, cls, 'training')
        values = dict(values)
        for name in ('outputs', 'output_weights', 'pretrain_horizons'):
            if name in values:
                if not isinstance(values[name], (list, tuple, type(None))):
                    raise ConfigError(f'{name}={values[name]!r} is invalid: use a list, e.g. '
                                      '[angular_z, linear_x] for outputs, [2.0, 1.0] for '
                                      'output_weights or [0, 4] for pretrain_horizons')
                values[name] = tuple(values[name] or ())
        for name in ('model', 'family_model', 'preprocessing', 'augment'):
            if name in values and values[name] is None:
                values[name] = {}
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f'invalid training settings: {error}') from error

    def with_overrides(self, overrides: Dict[str, Any]) -> 'TrainConfig':
        """Return a copy with dotted keys replaced, e.g. ``{'augment.shift_pixels': 2}``."""
        values = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(values, key, value)
        return TrainConfig.from_dict(values)


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """Raise ConfigError when ``value`` does not have the type of the field ``name``."""
    optional = False
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        if value is None:
            return
        optional = True
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    origin = typing.get_origin(annotation)
    if origin is tuple:
        element = typing.get_args(annotation)[0]
        valid = isinstance(value, (list, tuple)) and all(
            _has_type(item, element) for item in value)
        expected = {str: 'a list of strings', int: 'a list of integers'}.get(
            element, 'a list of finite numbers')
        if isinstance(value, tuple):
            value = list(value)  # reported as the list it was written as
    else:
        valid = _has_type(value, origin or annotation)
        expected = _describe(origin or annotation)
    if valid:
        return
    if optional:
        expected += ', or null'
    hint = ''
    if annotation is float and isinstance(value, str) and _parses_as_float(value):
        hint = f' (YAML reads {value} as text; write a decimal point, e.g. 1.0e-3)'
    raise ConfigError(f'{name}={value!r} is invalid: use {expected}{hint}')


def _has_type(value: Any, expected: Any) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        # NaN and infinity are rejected because the checkpoint's JSON header, which
        # stores these settings, cannot hold them.
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:  # an int beyond the float range
            return False
    if expected is Any:
        return True
    return isinstance(value, expected)


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe(expected: Any) -> str:
    return {bool: 'true or false', int: 'an integer', float: 'a finite number',
            str: 'a string', dict: 'a mapping of settings, e.g. {units: 19}'}.get(
                expected, getattr(expected, '__name__', str(expected)))


def _set_dotted(values: Dict[str, Any], key: str, value: Any) -> None:
    head, _, rest = key.partition('.')
    if not rest:
        values[head] = value
        return
    if head not in ('model', 'family_model', 'preprocessing', 'augment'):
        raise ConfigError(f'setting {key!r} is invalid: only model., family_model., '
                          'preprocessing. and augment. take dotted keys')
    if head == 'family_model' and '.' in rest:
        family, _, name = rest.partition('.')
        raise ConfigError(f'setting {key!r} is invalid: family_model takes one mapping per '
                          f'family; write family_model.{family}={{{name}: ...}}')
    nested = dict(values.get(head) or {})
    nested[rest] = value
    values[head] = nested


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; each value is read as YAML (numbers, lists, null)."""
    overrides = {}
    for item in items:
        key, separator, text = item.partition('=')
        if not separator or not key:
            raise ConfigError(f'override {item!r} is invalid: write KEY=VALUE, '
                              'e.g. lr_encoder=0.0005 or augment.shift_pixels=2')
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f'override {item!r} has an invalid value: {error}') from error
    return overrides


def load_train_config(path: Optional[Path] = None,
                      overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Read a training YAML file (or the defaults when ``path`` is None) and apply overrides."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        # Reading a FIFO or a device such as /dev/zero would block or never end.
        if path.exists() and not path.is_file():
            raise ConfigError(f'training config {path} is not a regular file; name a YAML '
                              'file')
        try:
            values = yaml.safe_load(path.read_text(encoding='utf-8')) or {}
        except UnicodeDecodeError as error:
            raise ConfigError(f'training config {path} is not UTF-8 text ({error}); name '
                              'a YAML file') from error
        except OSError as error:
            raise ConfigError(f'cannot read the training config {path}: {error}') from error
        except yaml.YAMLError as error:
            raise ConfigError(f'training config {path} is not valid YAML: {error}') from error
        if not isinstance(values, dict):
            raise ConfigError(f'training config {path} must be a mapping of settings, '
                              f'got {type(values).__name__}')
        config = TrainConfig.from_dict(values)
    if overrides:
        config = config.with_overrides(overrides)
    return config
