"""Headless wrapper around gymnasium's CarRacing-v3 with an IMU, pose and track geometry.

The physics runs at 50 Hz (one ``step`` advances the simulated clock by 20 ms). Each step
renders the 96x96 top-down camera frame that CarRacing observes: the car in the lower half,
pointing up, with an indicator bar (speed, wheel speeds, steering, yaw rate) in the bottom
12 rows.

World frame: x right, y up, metres (CarRacing's Box2D units). Body frame as in REP 103:
x forward, y left, z up.
"""

import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

# pygame reads these on import: no window, and no greeting printed on stdout.
os.environ.setdefault('SDL_VIDEODRIVER', 'dummy')
os.environ.setdefault('PYGAME_HIDE_SUPPORT_PROMPT', '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.envs.box2d import car_racing as gym_car_racing  # noqa: E402

from liquid_control.sim.commands import CommandMapping, stale_action, twist_to_action  # noqa: E402
from liquid_control.sim.perturbations import CameraPerturbation  # noqa: E402
from liquid_control.sim.track import Track  # noqa: E402

PHYSICS_RATE_HZ = gym_car_racing.FPS
STEP_SECONDS = 1.0 / PHYSICS_RATE_HZ
FRAME_SIZE = (gym_car_racing.STATE_H, gym_car_racing.STATE_W)
STANDARD_GRAVITY = 9.80665
# Rear axle position in the car body frame (m along the car's forward axis); pure pursuit
# steers the rear axle onto the path.
REAR_AXLE_OFFSET_M = -82 * 0.02


@dataclass(frozen=True)
class Pose:
    """Car pose in the world frame: rear axle position (m) and heading (rad, 0 along +x)."""

    x: float
    y: float
    yaw: float


@dataclass(frozen=True)
class EpisodeStatus:
    """Progress of the current episode."""

    seed: int
    steps: int
    sim_time: float          # seconds since reset
    score: float             # CarRacing's return: +1000/N per new tile, -0.1 a step
    tiles_visited: int
    tiles_total: int
    off_track: bool          # no wheel touches the road
    lap_finished: bool
    out_of_bounds: bool      # left the playfield (CarRacing ends the episode, -100)
    speed: float             # m/s

    @property
    def done(self) -> bool:
        """Whether the episode has ended (lap finished or car out of bounds)."""
        return self.lap_finished or self.out_of_bounds

    def to_dict(self) -> dict:
        """Return the status as a JSON-able dict, with ``done`` included."""
        return {
            'seed': self.seed, 'steps': self.steps, 'sim_time': round(self.sim_time, 4),
            'score': round(self.score, 3), 'tiles_visited': self.tiles_visited,
            'tiles_total': self.tiles_total, 'off_track': self.off_track,
            'lap_finished': self.lap_finished, 'out_of_bounds': self.out_of_bounds,
            'done': self.done, 'speed': round(self.speed, 3),
        }


class CarRacingSim:
    """CarRacing-v3 stepped by actions or Twist commands, with camera, IMU and pose.

    ``image_size`` is the published frame ``(height, width)``; frames other than 96x96
    are resized from the rendered 96x96 frame (bilinear), so they carry no extra detail.
    """

    def __init__(self, seed: int = 0, image_size: Tuple[int, int] = FRAME_SIZE,
                 perturbation: CameraPerturbation = CameraPerturbation(),
                 mapping: CommandMapping = CommandMapping(),
                 lap_complete_fraction: float = 0.95) -> None:
        if len(image_size) != 2 or min(image_size) < 8:
            raise ValueError(f'image_size must be (height, width) of at least 8 pixels, '
                             f'got {image_size}')
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.perturbation = perturbation
        self.mapping = mapping
        self._env = gym_car_racing.CarRacing(
            render_mode='rgb_array', lap_complete_percent=lap_complete_fraction)
        self._noise_rng = np.random.default_rng(seed)
        self.reset(seed)

    # Episode control

    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        """Start a new episode on the track of ``seed`` (the current seed when None).

        Returns the first camera frame.
        """
        if seed is not None:
            self.seed = int(seed)
            self._noise_rng = np.random.default_rng(self.seed)
        observation, _ = self._env.reset(seed=self.seed)
        self.track = Track(np.array([(point[2], point[3]) for point in self._env.track]))
        self.steps = 0
        self.score = 0.0
        self.lap_finished = False
        self.out_of_bounds = False
        self._previous_velocity = np.array(self._env.car.hull.linearVelocity, dtype=np.float64)
        self._acceleration_world = np.zeros(2)
        self._frame = self._camera_frame(observation)
        return self._frame

    def step(self, action: np.ndarray) -> np.ndarray:
        """Advance the physics by one step with ``[steer, gas, brake]``; return the frame.

        After the episode has ended the car only brakes, and the score no longer changes.
        """
        if self.done:
            action = stale_action(self.mapping)
        action = np.asarray(action, dtype=np.float64).reshape(3)
        observation, reward, terminated, _, info = self._env.step(action)
        if not (self.lap_finished or self.out_of_bounds):
            self.score += float(reward)
            self.steps += 1
            if terminated:
                self.lap_finished = bool(info.get('lap_finished', False))
                self.out_of_bounds = not self.lap_finished

        velocity = np.array(self._env.car.hull.linearVelocity, dtype=np.float64)
        self._acceleration_world = (velocity - self._previous_velocity) / STEP_SECONDS
        self._previous_velocity = velocity
        self._frame = self._camera_frame(observation)
        return self._frame

    def step_twist(self, linear_x: float, angular_z: float) -> np.ndarray:
        """Advance one step following a Twist (see ``commands``); return the frame."""
        return self.step(twist_to_action(linear_x, angular_z, self.forward_speed, self.mapping))

    def step_stale(self) -> np.ndarray:
        """Advance one step without a command: wheels straight, braking."""
        return self.step(stale_action(self.mapping))

    def close(self) -> None:
        """Release the environment."""
        self._env.close()

    # Sensors

    @property
    def frame(self) -> np.ndarray:
        """Latest camera frame, uint8 RGB ``(height, width, 3)``, perturbations applied."""
        return self._frame

    @property
    def sim_time(self) -> float:
        """Simulated seconds since reset."""
        return self.steps * STEP_SECONDS

    @property
    def done(self) -> bool:
        """Whether the episode has ended (lap finished or car out of bounds)."""
        return self.lap_finished or self.out_of_bounds

    @property
    def forward_speed(self) -> float:
        """Speed along the car's heading in m/s (negative when rolling backwards)."""
        return float(np.dot(self._previous_velocity, self._forward_axis()))

    @property
    def yaw_rate(self) -> float:
        """Yaw rate in rad/s, positive counter-clockwise (turning left)."""
        return float(self._env.car.hull.angularVelocity)

    def imu(self) -> np.ndarray:
        """Return the IMU reading as float32 ``(6,)`` in the body frame.

        Order: angular velocity x, y, z (rad/s), then linear acceleration x, y, z (m/s^2).
        The world is flat, so roll and pitch rates are 0, and the accelerometer reads the
        change of velocity over the last step plus +g on z, as a real accelerometer at rest
        does.
        """
        forward = self._forward_axis()
        left = np.array([-forward[1], forward[0]])
        return np.array([
            0.0, 0.0, self.yaw_rate,
            float(np.dot(self._acceleration_world, forward)),
            float(np.dot(self._acceleration_world, left)),
            STANDARD_GRAVITY,
        ], dtype=np.float32)

    def pose(self) -> Pose:
        """Return the rear axle pose in the world frame."""
        hull = self._env.car.hull
        x, y = hull.GetWorldPoint((0.0, REAR_AXLE_OFFSET_M))
        return Pose(float(x), float(y), _wrap_angle(float(hull.angle) + math.pi / 2.0))

    def velocity(self) -> np.ndarray:
        """Return the car's velocity in the world frame, m/s ``(2,)``."""
        return self._previous_velocity.copy()

    @property
    def off_track(self) -> bool:
        """Whether no wheel touches a road tile."""
        return all(len(wheel.tiles) == 0 for wheel in self._env.car.wheels)

    @property
    def tiles_visited(self) -> int:
        """Number of road tiles the car has touched in this episode."""
        return int(self._env.tile_visited_count)

    def status(self) -> EpisodeStatus:
        """Return the progress of the current episode."""
        return EpisodeStatus(
            seed=self.seed, steps=self.steps, sim_time=self.sim_time, score=self.score,
            tiles_visited=self.tiles_visited, tiles_total=len(self.track),
            off_track=self.off_track, lap_finished=self.lap_finished,
            out_of_bounds=self.out_of_bounds, speed=float(np.linalg.norm(self._previous_velocity)))

    # Internals

    def _forward_axis(self) -> np.ndarray:
        # CarRacing's car points along its body +y axis.
        angle = float(self._env.car.hull.angle)
        return np.array([-math.sin(angle), math.cos(angle)])

    def _camera_frame(self, observation: np.ndarray) -> np.ndarray:
        frame = np.ascontiguousarray(observation, dtype=np.uint8)
        if frame.shape[:2] != self.image_size:
            frame = cv2.resize(frame, (self.image_size[1], self.image_size[0]),
                               interpolation=cv2.INTER_LINEAR)
        return self.perturbation.apply(frame, self._noise_rng)


def _wrap_angle(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi
