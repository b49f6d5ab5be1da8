"""Expert driver for the simulator: pure pursuit on the track centre line.

Steering: the rear axle aims at the centre line point one look-ahead distance ahead, which
gives the arc curvature ``2 sin(alpha) / lookahead`` (alpha is the angle between the heading
and that point). Speed: the highest speed from which the car can still brake down to the
speed allowed by the curvature of every point in the preview distance, with the allowed
speed ``sqrt(max_lateral_accel / |curvature|)``.

The command is a Twist (``linear_x`` in m/s, ``angular_z = linear_x * curvature`` in rad/s),
which ``liquid_control.sim.commands`` maps back to the wheel angle ``atan(wheelbase *
curvature)``.
"""

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from liquid_control.sim.track import Track


@dataclass(frozen=True)
class ExpertConfig:
    """Pure pursuit and speed profile settings (metres, seconds)."""

    lookahead_min: float = 6.0         # m, look-ahead distance at standstill
    lookahead_gain: float = 0.25       # s, look-ahead grows by this times the speed
    lookahead_max: float = 20.0        # m
    max_speed: float = 60.0            # m/s
    min_speed: float = 8.0             # m/s, lowest target speed in the sharpest corner
    max_lateral_accel: float = 60.0    # m/s^2 allowed in corners
    max_braking: float = 40.0          # m/s^2 assumed when planning to slow down
    preview_distance: float = 60.0     # m of track checked for corners ahead
    curvature_smoothing: int = 2       # points on each side averaged into the curvature

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if name != 'curvature_smoothing' and not value > 0.0:
                raise ValueError(f'expert setting {name} must be positive, got {value}')
        if self.curvature_smoothing < 0:
            raise ValueError(f'curvature_smoothing must be >= 0, got {self.curvature_smoothing}')
        if self.min_speed > self.max_speed:
            raise ValueError(f'min_speed ({self.min_speed}) exceeds max_speed ({self.max_speed})')
        if self.lookahead_min > self.lookahead_max:
            raise ValueError(f'lookahead_min ({self.lookahead_min}) exceeds lookahead_max '
                             f'({self.lookahead_max})')


class PurePursuitExpert:
    """Pure pursuit controller for one track; keeps the last matched track index."""

    def __init__(self, track: Track, config: ExpertConfig = ExpertConfig()) -> None:
        self.track = track
        self.config = config
        self._curvature = _smooth_circular(np.abs(track.curvature), config.curvature_smoothing)
        self._allowed_speed = np.clip(
            np.sqrt(config.max_lateral_accel / np.maximum(self._curvature, 1e-6)),
            config.min_speed, config.max_speed)
        self._index = -1

    def reset(self) -> None:
        """Forget the matched track position (call after the car was moved)."""
        self._index = -1

    @property
    def track_index(self) -> int:
        """Index of the centre line point last matched to the car (-1 before the first)."""
        return self._index

    def command(self, x: float, y: float, yaw: float, speed: float) -> Tuple[float, float]:
        """Return the Twist ``(linear_x m/s, angular_z rad/s)`` for a rear axle pose.

        ``x``, ``y`` in metres and ``yaw`` in rad are in the track's world frame;
        ``speed`` is the measured forward speed in m/s.
        """
        position = np.array([x, y], dtype=np.float64)
        self._index = self.track.nearest_index(position, hint=self._index)
        config = self.config

        lookahead = float(np.clip(config.lookahead_min + config.lookahead_gain * max(speed, 0.0),
                                  config.lookahead_min, config.lookahead_max))
        target = self.track.point_ahead(self._index, lookahead)
        offset = target - position
        alpha = math.atan2(offset[1], offset[0]) - yaw
        distance = max(float(np.linalg.norm(offset)), 1e-6)
        curvature = 2.0 * math.sin(alpha) / distance

        linear_x = self.target_speed()
        return linear_x, linear_x * curvature

    def target_speed(self) -> float:
        """Return the speed in m/s from which every corner in the preview is reachable."""
        if self._index < 0:
            return self.config.min_speed
        indices = self.track.indices_ahead(self._index, self.config.preview_distance)
        distances = np.array([self.track.distance_along(self._index, i) for i in indices])
        # Braking at max_braking from speed v over distance d reaches sqrt(v^2 - 2 a d).
        reachable = np.sqrt(self._allowed_speed[indices] ** 2
                            + 2.0 * self.config.max_braking * distances)
        return float(min(reachable.min(), self.config.max_speed))


def _smooth_circular(values: np.ndarray, half_width: int) -> np.ndarray:
    if half_width == 0:
        return values
    kernel = np.ones(2 * half_width + 1) / (2 * half_width + 1)
    padded = np.concatenate([values[-half_width:], values, values[:half_width]])
    return np.convolve(padded, kernel, mode='valid')


class SteeringNoise:
    """Ornstein-Uhlenbeck steering noise, specified as a lateral acceleration (m/s^2).

    Driving with this noise while recording the noise-free command shows a learner how
    the expert recovers from deviations it would otherwise never see. A lateral
    acceleration keeps the disturbance equally strong at every speed: the curvature added
    is ``noise / speed^2``, with the speed floored at ``MIN_NOISE_SPEED``.
    """

    MIN_NOISE_SPEED = 10.0  # m/s

    def __init__(self, std: float, time_constant: float, seed: int = 0) -> None:
        if std < 0.0:
            raise ValueError(f'noise std must be >= 0, got {std}')
        if time_constant <= 0.0:
            raise ValueError(f'noise time constant must be positive, got {time_constant}')
        self.std = std
        self.time_constant = time_constant
        self._rng = np.random.default_rng(seed)
        self._value = 0.0
        self._last_time = None

    def reset(self) -> None:
        """Restart the process at 0."""
        self._value = 0.0
        self._last_time = None

    def sample(self, time_s: float) -> float:
        """Advance the process to ``time_s`` (seconds) and return it in m/s^2.

        Steps longer than one second, and steps back in time, are clamped.
        """
        if self.std == 0.0:
            return 0.0
        dt = 0.0 if self._last_time is None else min(max(time_s - self._last_time, 0.0), 1.0)
        self._last_time = time_s
        decay = math.exp(-dt / self.time_constant)
        self._value = (decay * self._value
                       + self.std * math.sqrt(1.0 - decay ** 2) * self._rng.normal())
        return self._value

    def curvature(self, time_s: float, speed: float) -> float:
        """Advance to ``time_s`` and return the noise as a curvature in 1/m at ``speed``."""
        return self.sample(time_s) / max(abs(speed), self.MIN_NOISE_SPEED) ** 2
