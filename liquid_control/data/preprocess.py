"""Crop, resize and scale camera frames into network input, the same everywhere.

The settings live in every checkpoint (``Preprocessing.to_dict()``), so training, offline
evaluation and the policy node turn a frame into exactly the same tensor.
"""

from dataclasses import asdict, dataclass
from typing import Any, Dict

import cv2
import numpy as np

from liquid_control.errors import ConfigError, reject_unknown_keys


@dataclass(frozen=True)
class Preprocessing:
    """Crop fractions of the source frame and the network's input size in pixels.

    A crop fraction removes that share of the frame's height (top, bottom) or width (left,
    right) before resizing, so one setting suits any camera resolution.
    """

    crop_top: float = 0.0
    crop_bottom: float = 0.0
    crop_left: float = 0.0
    crop_right: float = 0.0
    height: int = 66
    width: int = 200

    def __post_init__(self) -> None:
        for name in ('crop_top', 'crop_bottom', 'crop_left', 'crop_right'):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f'preprocessing {name}={value} is invalid: use 0 <= x < 1')
        if self.crop_top + self.crop_bottom >= 1.0:
            raise ConfigError(
                f'preprocessing crop_top + crop_bottom = {self.crop_top + self.crop_bottom} '
                'leaves no rows: keep the sum below 1')
        if self.crop_left + self.crop_right >= 1.0:
            raise ConfigError(
                f'preprocessing crop_left + crop_right = {self.crop_left + self.crop_right} '
                'leaves no columns: keep the sum below 1')
        for name in ('height', 'width'):
            value = getattr(self, name)
            if not (isinstance(value, int) and 8 <= value <= 4096):
                raise ConfigError(f'preprocessing {name}={value!r} is invalid: use 8..4096')

    def to_dict(self) -> Dict[str, Any]:
        """Return the settings as a JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'Preprocessing':
        """Build from ``to_dict()`` output, rejecting unknown keys."""
        reject_unknown_keys(values, cls, 'preprocessing')
        return cls(**values)

    def crop_box(self, height: int, width: int) -> tuple:
        """Return the (top, bottom, left, right) pixel bounds kept from a frame."""
        top = int(round(self.crop_top * height))
        bottom = height - int(round(self.crop_bottom * height))
        left = int(round(self.crop_left * width))
        right = width - int(round(self.crop_right * width))
        return top, max(bottom, top + 1), left, max(right, left + 1)

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """Crop and resize an ``(H, W, 3)`` uint8 RGB frame to ``(height, width, 3)`` uint8."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f'expected an (H, W, 3) uint8 RGB frame, got shape {rgb.shape} '
                             f'and dtype {rgb.dtype}')
        top, bottom, left, right = self.crop_box(rgb.shape[0], rgb.shape[1])
        cropped = rgb[top:bottom, left:right]
        if cropped.shape[0] == self.height and cropped.shape[1] == self.width:
            return np.ascontiguousarray(cropped)
        # INTER_AREA averages when shrinking, so fine texture does not alias.
        shrinking = cropped.shape[0] > self.height or cropped.shape[1] > self.width
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return cv2.resize(cropped, (self.width, self.height), interpolation=interpolation)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Turn an (H, W, 3) uint8 RGB frame into a (3, height, width) float32 in [0, 1]."""
        resized = self.resize(rgb)
        return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0

    def apply_batch(self, frames: np.ndarray) -> np.ndarray:
        """Turn ``(N, H, W, 3)`` uint8 frames into ``(N, 3, height, width)`` float32."""
        output = np.empty((len(frames), 3, self.height, self.width), np.float32)
        for index, frame in enumerate(frames):
            output[index] = self.apply(frame)
        return output
