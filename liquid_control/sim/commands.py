"""Mapping from a ROS velocity command (``geometry_msgs/Twist``) to a CarRacing action.

CarRacing-v3 takes ``(steer, gas, brake)``: ``steer`` in [-1, 1] with -1 full left, ``gas``
and ``brake`` in [0, 1]. Internally ``steer`` is the negated target angle of the front
wheels in radians, and the wheel joints stop at +-0.4 rad, so only |steer| <= 0.4 is
proportional.

The mapping treats a Twist as an arc, as Ackermann converters for ``cmd_vel`` do:

- ``linear.x`` is the target forward speed in m/s. A proportional controller on the
  measured forward speed opens the throttle when the car is slower and brakes when it is
  faster by more than ``brake_deadband``. The car has no reverse gear, so a negative
  ``linear.x`` means a target speed of 0 (braking to a stop).
- ``angular.z`` is the yaw rate in rad/s (REP 103: positive turns left). The arc's
  curvature is ``angular.z / linear.x``, and the kinematic bicycle model gives the front
  wheel angle ``atan(wheelbase * curvature)``. Below ``min_speed`` the curvature is taken as
  ``angular.z / min_speed`` so the command stays finite when the target speed is 0.

The mapping depends only on the command and the measured forward speed, so a policy that
imitates the expert's Twist reproduces the expert's actions.
"""

import math
from dataclasses import dataclass

import numpy as np

# Distance between the front and rear axles of the CarRacing car in metres
# (gymnasium car_dynamics.py: wheels at y = +80 and -82 body units, 0.02 m per unit).
WHEELBASE_M = 3.24
# Limit of the front wheel joints in car_dynamics.py (lowerAngle/upperAngle).
MAX_WHEEL_ANGLE_RAD = 0.4


@dataclass(frozen=True)
class CommandMapping:
    """Gains and limits of the Twist -> (steer, gas, brake) mapping."""

    gas_gain: float = 0.1          # throttle per m/s of speed shortfall
    brake_gain: float = 0.05       # brake per m/s of excess speed beyond the deadband
    brake_deadband: float = 1.0    # m/s of excess speed tolerated before braking
    max_gas: float = 1.0
    max_brake: float = 0.8         # CarRacing locks the wheels at brake >= 0.9
    min_speed: float = 1.0         # m/s; curvature denominator floor
    wheelbase: float = WHEELBASE_M
    max_wheel_angle: float = MAX_WHEEL_ANGLE_RAD
    stale_brake: float = 0.8       # brake applied when no recent command is available

    def __post_init__(self) -> None:
        for name in ('gas_gain', 'brake_gain', 'min_speed', 'wheelbase', 'max_wheel_angle'):
            if not getattr(self, name) > 0.0:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
        if self.brake_deadband < 0.0:
            raise ValueError(f'brake_deadband must be >= 0, got {self.brake_deadband}')
        for name in ('max_gas', 'max_brake', 'stale_brake'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {getattr(self, name)}')


def wheel_angle_for_twist(linear_x: float, angular_z: float,
                          mapping: CommandMapping = CommandMapping()) -> float:
    """Return the front wheel angle in rad (positive left) that drives the Twist's arc."""
    speed = max(float(linear_x), mapping.min_speed)
    angle = math.atan(mapping.wheelbase * float(angular_z) / speed)
    return float(np.clip(angle, -mapping.max_wheel_angle, mapping.max_wheel_angle))


def twist_to_action(linear_x: float, angular_z: float, forward_speed: float,
                    mapping: CommandMapping = CommandMapping()) -> np.ndarray:
    """Convert a Twist to a CarRacing action ``[steer, gas, brake]`` (float32).

    ``forward_speed`` is the car's measured speed along its heading in m/s. Non-finite
    commands brake like a stale command.
    """
    if not (math.isfinite(linear_x) and math.isfinite(angular_z)):
        return stale_action(mapping)
    steer = -wheel_angle_for_twist(linear_x, angular_z, mapping)

    error = max(float(linear_x), 0.0) - float(forward_speed)
    gas = float(np.clip(mapping.gas_gain * error, 0.0, mapping.max_gas))
    excess = -error - mapping.brake_deadband
    brake = float(np.clip(mapping.brake_gain * excess, 0.0, mapping.max_brake))
    if linear_x <= 0.0 and forward_speed <= mapping.min_speed:
        # Hold the car still instead of letting the proportional brake fade out near 0.
        brake = mapping.max_brake
    return np.array([steer, gas, brake], dtype=np.float32)


def stale_action(mapping: CommandMapping = CommandMapping()) -> np.ndarray:
    """Return the action used without a recent command: wheels straight, full brake."""
    return np.array([0.0, 0.0, mapping.stale_brake], dtype=np.float32)
