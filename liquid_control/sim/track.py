"""Track centre line geometry: arc length, curvature, nearest point and look-ahead points."""

from dataclasses import dataclass

import numpy as np


@dataclass
class Track:
    """A closed track centre line with its points in driving order.

    ``points`` is ``(N, 2)`` in metres, in the simulator's world frame (x right, y up);
    the segment from the last point back to the first closes the loop.
    """

    points: np.ndarray

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64)
        if self.points.ndim != 2 or self.points.shape[1] != 2 or len(self.points) < 3:
            raise ValueError(f'track points must have shape (N >= 3, 2), got '
                             f'{self.points.shape}')
        segments = np.roll(self.points, -1, axis=0) - self.points
        self.segment_lengths = np.linalg.norm(segments, axis=1)      # (N,) point i -> i + 1
        self.length = float(self.segment_lengths.sum())
        self.arc_length = np.concatenate([[0.0], np.cumsum(self.segment_lengths)[:-1]])
        self.curvature = _signed_curvature(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def nearest_index(self, position: np.ndarray, hint: int = -1, window: int = 30) -> int:
        """Return the index of the centre line point nearest to ``position`` (x, y).

        With ``hint >= 0`` only points from ``hint - window // 3`` to ``hint + window`` are
        searched, which keeps the match on the right part of a track that passes close to
        itself. A negative hint searches every point.
        """
        if hint < 0:
            candidates = np.arange(len(self.points))
        else:
            candidates = np.arange(hint - window // 3, hint + window + 1) % len(self.points)
        distances = np.linalg.norm(self.points[candidates] - position, axis=1)
        return int(candidates[int(np.argmin(distances))])

    def point_ahead(self, index: int, distance: float) -> np.ndarray:
        """Return the centre line point ``distance`` metres ahead of point ``index``."""
        remaining = float(distance) % self.length
        i = index % len(self.points)
        while remaining > self.segment_lengths[i]:
            remaining -= self.segment_lengths[i]
            i = (i + 1) % len(self.points)
        fraction = remaining / max(self.segment_lengths[i], 1e-9)
        following = self.points[(i + 1) % len(self.points)]
        return self.points[i] + fraction * (following - self.points[i])

    def indices_ahead(self, index: int, distance: float) -> np.ndarray:
        """Return the indices of the points within ``distance`` metres ahead of ``index``."""
        count = int(np.ceil(distance / max(float(self.segment_lengths.mean()), 1e-9))) + 1
        return (index + np.arange(min(count, len(self.points)))) % len(self.points)

    def distance_along(self, start: int, end: int) -> float:
        """Return the arc length in metres from point ``start`` forward to point ``end``."""
        difference = self.arc_length[end % len(self)] - self.arc_length[start % len(self)]
        return float(difference % self.length)


def _signed_curvature(points: np.ndarray) -> np.ndarray:
    """Return the curvature (1/m, positive turning left) at each point of a closed polyline.

    Uses the circle through each point and its two neighbours (Menger curvature).
    """
    previous = np.roll(points, 1, axis=0)
    following = np.roll(points, -1, axis=0)
    first = points - previous
    second = following - points
    cross = first[:, 0] * second[:, 1] - first[:, 1] * second[:, 0]
    chord = following - previous
    denominator = (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
                   * np.linalg.norm(chord, axis=1))
    return 2.0 * cross / np.maximum(denominator, 1e-9)
