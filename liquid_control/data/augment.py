"""Image augmentation of training sequences, in numpy on preprocessed float frames.

Every function takes a sequence ``(T, 3, H, W)`` float32 in [0, 1] (the output of
``Preprocessing.apply``) and returns a new array of the same shape, clipped to [0, 1].
Lighting, shadow and shift are drawn once per sequence, because a real camera sees the
same light over a second of driving; the sensor noise is drawn per frame.

Mirroring is drawn per sequence too, but it is not part of ``apply``: a mirrored frame
needs mirrored labels, so the caller draws it with ``draws_mirror`` and changes the signs
of the commands and IMU readings itself.
"""

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict

import numpy as np

from liquid_control.errors import ConfigError, reject_unknown_keys


@dataclass(frozen=True)
class Augmentation:
    """Probabilities and ranges of the random image changes applied during training.

    ``noise_variance_max`` is the largest variance of the zero-mean Gaussian noise added
    to [0, 1] images; each noisy sequence draws its variance uniformly up to it.
    ``shift_pixels`` is the largest translation in pixels of the network input.
    ``mirror_probability`` is the share of sequences flipped left to right, with the
    signs of their lateral commands changed by the caller. It shows each curve in
    both directions, and it is right only when the camera looks along the robot's
    centre line and the scene looks the same in a mirror.
    """

    probability: float = 0.8
    brightness: float = 0.2
    contrast: float = 0.25
    shadow_probability: float = 0.3
    shadow_darkness: float = 0.5
    noise_probability: float = 0.5
    noise_variance_max: float = 0.12
    shift_pixels: int = 4
    mirror_probability: float = 0.0

    def __post_init__(self) -> None:
        # Types first, so that the range checks below never compare a string with a number.
        for setting in fields(self):
            value = getattr(self, setting.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f'augmentation {setting.name}={value!r} is invalid: use a '
                                  'number')
        for name in ('probability', 'shadow_probability', 'noise_probability',
                     'mirror_probability'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f'augmentation {name}={value} is invalid: use 0..1')
        for name in ('brightness', 'contrast', 'shadow_darkness'):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f'augmentation {name}={value} is invalid: use 0 <= x < 1')
        if not 0.0 <= self.noise_variance_max <= 1.0:
            raise ConfigError(f'augmentation noise_variance_max={self.noise_variance_max} '
                              'is invalid: use 0..1')
        if not (isinstance(self.shift_pixels, int) and 0 <= self.shift_pixels <= 32):
            raise ConfigError(f'augmentation shift_pixels={self.shift_pixels!r} is invalid: '
                              'use an integer 0..32')

    def to_dict(self) -> Dict[str, Any]:
        """Return the settings as a JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'Augmentation':
        """Build from ``to_dict()`` output, rejecting unknown keys."""
        reject_unknown_keys(values, cls, 'augmentation')
        return cls(**values)

    def draws_mirror(self, rng: np.random.Generator) -> bool:
        """Return whether to mirror the next sequence; draws from ``rng`` only when enabled."""
        return self.mirror_probability > 0 and bool(rng.random() < self.mirror_probability)

    def apply(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one ``(T, 3, H, W)`` float32 sequence with random draws from ``rng``."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f'expected a (T, 3, H, W) sequence, got shape {frames.shape}')
        output = np.array(frames, dtype=np.float32, copy=True)
        if rng.random() >= self.probability:
            return output
        if self.shift_pixels > 0:
            dy, dx = rng.integers(-self.shift_pixels, self.shift_pixels + 1, size=2)
            output = shift(output, int(dy), int(dx))
        if self.brightness > 0 or self.contrast > 0:
            output = adjust_brightness_contrast(
                output,
                delta=rng.uniform(-self.brightness, self.brightness),
                factor=rng.uniform(1.0 - self.contrast, 1.0 + self.contrast))
        if rng.random() < self.shadow_probability:
            output = add_shadow(output, rng, darkness=rng.uniform(0.2, 0.2 + self.shadow_darkness))
        if rng.random() < self.noise_probability and self.noise_variance_max > 0:
            output = add_gaussian_noise(output, rng, rng.uniform(0.0, self.noise_variance_max))
        return output


def mirror(frames: np.ndarray) -> np.ndarray:
    """Flip frames ``(..., H, W)`` left to right."""
    return np.ascontiguousarray(frames[..., ::-1])


def shift(frames: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate frames by (dy, dx) pixels, repeating the edge rows and columns."""
    height, width = frames.shape[-2:]
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    columns = np.clip(np.arange(width) - dx, 0, width - 1)
    return np.ascontiguousarray(frames[..., rows[:, None], columns[None, :]])


def adjust_brightness_contrast(frames: np.ndarray, delta: float, factor: float) -> np.ndarray:
    """Scale contrast about each frame's mean by ``factor`` and add ``delta`` to every pixel."""
    mean = frames.mean(axis=(-3, -2, -1), keepdims=True)
    return np.clip((frames - mean) * factor + mean + delta, 0.0, 1.0).astype(np.float32)


def add_shadow(frames: np.ndarray, rng: np.random.Generator, darkness: float) -> np.ndarray:
    """Darken the part of the frames on one side of a random straight line.

    ``darkness`` is the fraction of brightness removed inside the shadow (0 keeps the image).
    """
    height, width = frames.shape[-2:]
    x_top, x_bottom = rng.uniform(0, width, size=2)
    rows = np.arange(height, dtype=np.float32)[:, None]
    columns = np.arange(width, dtype=np.float32)[None, :]
    boundary = x_top + (x_bottom - x_top) * rows / max(height - 1, 1)
    inside = columns < boundary if rng.random() < 0.5 else columns >= boundary
    scale = np.where(inside, 1.0 - darkness, 1.0).astype(np.float32)
    return (frames * scale).astype(np.float32)


def add_gaussian_noise(frames: np.ndarray, rng: np.random.Generator,
                       variance: float) -> np.ndarray:
    """Add zero-mean Gaussian noise of the given variance and clip to [0, 1]."""
    noise = rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(np.sqrt(variance))
    return np.clip(frames + noise, 0.0, 1.0)
