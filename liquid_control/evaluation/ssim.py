"""Structural similarity (SSIM) of two single-channel images.

This follows Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from error
visibility to structural similarity", IEEE Transactions on Image Processing 13(4), 2004:
local statistics under an 11x11 Gaussian window of standard deviation 1.5, constants
K1 = 0.01 and K2 = 0.03, and the mean of the SSIM map as the score.
"""

import cv2
import numpy as np

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1 = 0.01
K2 = 0.03


def _local_mean(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (WINDOW_SIZE, WINDOW_SIZE), WINDOW_SIGMA,
                            borderType=cv2.BORDER_REFLECT_101)


def ssim(first: np.ndarray, second: np.ndarray, data_range: float = 1.0) -> float:
    """Return the mean SSIM of two ``(H, W)`` images with values spanning ``data_range``.

    The score is 1.0 for identical images and falls towards 0 (it can be negative) as their
    structure differs.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(f'SSIM needs two 2-D images of one shape, got {first.shape} and '
                         f'{second.shape}')
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2

    mean_first = _local_mean(first)
    mean_second = _local_mean(second)
    variance_first = _local_mean(first * first) - mean_first ** 2
    variance_second = _local_mean(second * second) - mean_second ** 2
    covariance = _local_mean(first * second) - mean_first * mean_second

    numerator = (2 * mean_first * mean_second + c1) * (2 * covariance + c2)
    denominator = ((mean_first ** 2 + mean_second ** 2 + c1) *
                   (variance_first + variance_second + c2))
    return float(np.mean(numerator / denominator))


def mean_ssim(first_maps: np.ndarray, second_maps: np.ndarray,
              data_range: float = 1.0) -> float:
    """Return the mean SSIM over pairs of ``(N, H, W)`` maps."""
    if len(first_maps) != len(second_maps) or len(first_maps) == 0:
        raise ValueError(f'need two equal, non-empty sets of maps, got {len(first_maps)} and '
                         f'{len(second_maps)}')
    return float(np.mean([ssim(a, b, data_range) for a, b in zip(first_maps, second_maps)]))
