"""Image perturbations for robustness tests, applied to network input in [0, 1].

A perturbation acts on preprocessed frames, after crop and resize, so its strength is in the
units of the network input: intensity on [0, 1] and blur sigma in input pixels. Results are
clipped back to [0, 1].

Names have the form ``KIND:VALUE``:

- ``noise:V``: zero-mean Gaussian noise of variance V (standard deviation sqrt(V));
- ``brightness:D``: add D to every channel (D may be negative);
- ``blur:S``: Gaussian blur with standard deviation S pixels.
"""

import math
from dataclasses import dataclass
from typing import List, Sequence

import cv2
import numpy as np

from liquid_control.errors import ConfigError

KINDS = ('noise', 'brightness', 'blur')

DEFAULT_PERTURBATIONS = (
    'noise:0.1', 'noise:0.2', 'noise:0.3',
    'brightness:+0.2', 'brightness:-0.2',
    'blur:1.5',
)


@dataclass(frozen=True)
class Perturbation:
    """One named image perturbation: its kind and strength."""

    kind: str
    value: float

    @property
    def name(self) -> str:
        """Return the canonical ``KIND:VALUE`` name, e.g. ``noise:0.1``."""
        if self.kind == 'brightness':
            return f'brightness:{self.value:+g}'
        return f'{self.kind}:{self.value:g}'

    def describe(self) -> str:
        """Return what the perturbation does, in the units of the network input."""
        if self.kind == 'noise':
            return (f'Gaussian noise of variance {self.value:g}, standard deviation '
                    f'{math.sqrt(self.value):.2f}, on [0, 1] images')
        if self.kind == 'brightness':
            return f'{self.value:+g} added to every pixel of [0, 1] images'
        return f'Gaussian blur of standard deviation {self.value:g} input pixels'

    def apply(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return a perturbed copy of float32 images ``(..., 3, H, W)`` in [0, 1].

        ``rng`` draws the noise, so a seeded generator gives the same result every run.
        """
        images = np.asarray(images, dtype=np.float32)
        if self.kind == 'noise':
            std = math.sqrt(self.value)
            noisy = images + rng.normal(0.0, std, size=images.shape).astype(np.float32)
            return np.clip(noisy, 0.0, 1.0)
        if self.kind == 'brightness':
            return np.clip(images + np.float32(self.value), 0.0, 1.0)
        return _gaussian_blur(images, self.value)


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0.0:
        return images.copy()
    height, width = images.shape[-2:]
    planes = images.reshape(-1, height, width)
    blurred = np.empty_like(planes)
    # Kernel size from sigma (0 lets OpenCV pick about 6 sigma); borders are reflected.
    for index, plane in enumerate(planes):
        blurred[index] = cv2.GaussianBlur(plane, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                          borderType=cv2.BORDER_REFLECT_101)
    return np.clip(blurred.reshape(images.shape), 0.0, 1.0)


def parse_perturbation(name: str) -> Perturbation:
    """Parse a ``KIND:VALUE`` name into a Perturbation, raising ConfigError if invalid."""
    kind, separator, text = name.strip().partition(':')
    if not separator or kind not in KINDS:
        raise ConfigError(f'invalid perturbation {name!r}: use KIND:VALUE with KIND one of '
                          f'{", ".join(KINDS)}, e.g. noise:0.1, brightness:-0.2, blur:1.5')
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f'invalid perturbation {name!r}: {text!r} is not a number') from None
    if not math.isfinite(value):
        raise ConfigError(f'invalid perturbation {name!r}: the value must be finite')
    if kind == 'noise' and not 0.0 < value <= 10.0:
        raise ConfigError(f'invalid perturbation {name!r}: the noise variance must be in '
                          '(0, 10] on [0, 1] images')
    if kind == 'brightness' and not -1.0 <= value <= 1.0:
        raise ConfigError(f'invalid perturbation {name!r}: the brightness shift must be in '
                          '[-1, 1] on [0, 1] images')
    if kind == 'blur' and not 0.0 < value <= 50.0:
        raise ConfigError(f'invalid perturbation {name!r}: the blur sigma must be in '
                          '(0, 50] pixels')
    return Perturbation(kind, value)


def parse_perturbations(names: Sequence[str]) -> List[Perturbation]:
    """Parse several names, rejecting duplicates."""
    perturbations = [parse_perturbation(name) for name in names]
    canonical = [perturbation.name for perturbation in perturbations]
    duplicates = sorted({name for name in canonical if canonical.count(name) > 1})
    if duplicates:
        raise ConfigError(f'perturbations listed more than once: {", ".join(duplicates)}')
    return perturbations
