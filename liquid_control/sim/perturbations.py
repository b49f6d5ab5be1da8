"""Camera perturbations applied by the simulator, for tests out of distribution.

They act on the rendered uint8 RGB frame before it is published, so every subscriber (the
policy node, the recorder) receives the same perturbed frames. Strengths are fractions of
full scale: 0.1 means 10 % of 255 intensity levels.
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class CameraPerturbation:
    """Gaussian pixel noise and a constant per-channel colour shift."""

    noise_std: float = 0.0                               # standard deviation, fraction of 255
    color_shift: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # R, G, B offsets, fraction

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_std <= 1.0:
            raise ValueError(f'noise_std must be in [0, 1], got {self.noise_std}')
        if len(self.color_shift) != 3:
            raise ValueError(f'color_shift needs 3 values (R, G, B), got {self.color_shift}')
        if any(not -1.0 <= value <= 1.0 for value in self.color_shift):
            raise ValueError(f'color_shift values must be in [-1, 1], got {self.color_shift}')

    @classmethod
    def from_values(cls, noise_std: float, color_shift: Sequence[float]) -> 'CameraPerturbation':
        """Build from plain numbers, e.g. ROS parameters."""
        return cls(float(noise_std), tuple(float(value) for value in color_shift))

    @property
    def active(self) -> bool:
        """Whether the perturbation changes a frame at all."""
        return self.noise_std > 0.0 or any(value != 0.0 for value in self.color_shift)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return a perturbed copy of a uint8 RGB frame ``(H, W, 3)``.

        ``rng`` draws the noise, so a seeded generator repeats the same frames.
        """
        if not self.active:
            return rgb
        image = rgb.astype(np.float32)
        image += np.asarray(self.color_shift, dtype=np.float32) * 255.0
        if self.noise_std > 0.0:
            image += rng.normal(0.0, self.noise_std * 255.0, size=image.shape).astype(np.float32)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)
