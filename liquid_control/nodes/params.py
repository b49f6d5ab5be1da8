"""Parameters of the policy node: declarations, a typed snapshot and validation.

No rclpy import, so the rules are unit-tested without ROS. The node turns each
``ParameterSpec`` into a ``ParameterDescriptor`` and validates every change through
``check_value`` and ``PolicyNodeParams.validate``, which return the reason for a rejection.
"""

from dataclasses import dataclass, fields, replace
from typing import Dict, Mapping, Optional, Tuple, Union

from liquid_control.errors import ConfigError

Value = Union[bool, int, float, str]


@dataclass(frozen=True)
class ParameterSpec:
    """Declaration of one node parameter: default, description, unit and allowed values."""

    name: str
    default: Value
    description: str
    unit: str = ''
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Tuple[str, ...] = ()
    read_only: bool = False

    def full_description(self) -> str:
        """Return the description with the unit, range or choices appended."""
        text = self.description
        if self.unit:
            text += f' Unit: {self.unit}.'
        if self.choices:
            text += f' One of: {", ".join(self.choices)}.'
        if self.read_only:
            text += ' Read-only: restart the node to change it.'
        return text


SPECS: Tuple[ParameterSpec, ...] = (
    ParameterSpec('model_path', '', 'Policy checkpoint (.lcm) to run; required. The CarRacing '
                  'model shipped with the package is models/carracing_ncp.lcm in its share '
                  'folder, for the simulator only.', read_only=True),
    ParameterSpec('compressed', False, 'Subscribe to sensor_msgs/CompressedImage (JPEG or PNG) '
                  "on 'image_raw/compressed' instead of sensor_msgs/Image on 'image_raw'.",
                  read_only=True),
    ParameterSpec('use_imu', True, "Subscribe to sensor_msgs/Imu on 'imu/data' and feed it to "
                  'the policy. Ignored for models trained without IMU input.', read_only=True),
    ParameterSpec('imu_stale_action', 'stop', "What to do when the IMU is older than "
                  "imu_timeout: 'stop' publishes zero commands, 'continue' runs the policy "
                  'without IMU input.', choices=('stop', 'continue')),
    ParameterSpec('imu_timeout', 0.1, 'Maximum age of the newest IMU message before the IMU '
                  'counts as stale.', unit='s', minimum=0.001, maximum=60.0),
    ParameterSpec('input_timeout', 0.25, 'Maximum age of the newest valid camera frame; an '
                  'older frame gives a zero command and resets the policy state.',
                  unit='s', minimum=0.001, maximum=60.0),
    ParameterSpec('control_rate_hz', 20.0, 'Rate of the control timer that steps the policy '
                  'and publishes a command.', unit='Hz', minimum=0.1, maximum=1000.0),
    ParameterSpec('max_linear_x', 0.5, 'Limit of the absolute linear velocity command.',
                  unit='m/s', minimum=0.0, maximum=100.0),
    ParameterSpec('max_angular_z', 1.0, 'Limit of the absolute angular velocity command.',
                  unit='rad/s', minimum=0.0, maximum=100.0),
    ParameterSpec('max_linear_accel', 0.0, 'Slew-rate limit of the linear command; 0 disables '
                  'it. Fail-safe zero commands and the drop to a lowered max_linear_x are not '
                  'slew-limited.', unit='m/s^2',
                  minimum=0.0, maximum=1000.0),
    ParameterSpec('max_angular_accel', 0.0, 'Slew-rate limit of the angular command; 0 '
                  'disables it. Fail-safe zero commands and the drop to a lowered '
                  'max_angular_z are not slew-limited.',
                  unit='rad/s^2', minimum=0.0, maximum=1000.0),
    ParameterSpec('linear_scale', 1.0, "Factor applied to the model's linear_x output before "
                  'the limits, for models trained on normalised commands.',
                  minimum=-100.0, maximum=100.0),
    ParameterSpec('angular_scale', 1.0, "Factor applied to the model's angular_z output before "
                  'the limits, for models trained on normalised commands.',
                  minimum=-100.0, maximum=100.0),
    ParameterSpec('constant_linear_x', 0.0, 'Linear velocity sent while running when the model '
                  'has no linear_x output (steering-only models).', unit='m/s',
                  minimum=-100.0, maximum=100.0),
    ParameterSpec('twist_stamped', False, "Publish geometry_msgs/TwistStamped instead of "
                  "geometry_msgs/Twist on 'cmd_vel'.", read_only=True),
    ParameterSpec('frame_id', 'base_link', 'header.frame_id of TwistStamped commands.'),
    ParameterSpec('command_stamp', 'now', "header.stamp of TwistStamped commands: 'now' is the "
                  "time of publication, 'frame' the header stamp of the camera frame the "
                  'command was computed from (fail-safe zero commands always use now).',
                  choices=('now', 'frame')),
    ParameterSpec('sensor_reliability', 'best_effort', 'Reliability of the camera and IMU '
                  'subscriptions (sensor-data QoS otherwise).',
                  choices=('best_effort', 'reliable'), read_only=True),
    ParameterSpec('max_stamp_offset', 1.0, 'Frames and IMU messages whose header stamp is '
                  'farther than this from the node clock are rejected; 0 disables the check.',
                  unit='s', minimum=0.0, maximum=1.0e6),
    ParameterSpec('enabled_on_start', True, 'Whether the node publishes policy commands from '
                  'the start; otherwise it publishes zero until ~/enable is called.',
                  read_only=True),
    ParameterSpec('publish_neurons', False, "Publish the recurrent neuron states on "
                  "'~/neurons' (std_msgs/Float32MultiArray) after every step."),
    ParameterSpec('diagnostics_period', 1.0, "Period of the DiagnosticArray on '/diagnostics'.",
                  unit='s', minimum=0.05, maximum=60.0, read_only=True),
    ParameterSpec('num_threads', 1, 'Number of CPU threads torch may use for inference.',
                  minimum=1, maximum=256, read_only=True),
)

SPECS_BY_NAME: Dict[str, ParameterSpec] = {spec.name: spec for spec in SPECS}


def check_value(name: str, value: Value) -> Optional[str]:
    """Return why ``value`` is invalid for parameter ``name``, or None when it is valid."""
    spec = SPECS_BY_NAME.get(name)
    if spec is None:
        return f'unknown parameter {name!r}'
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        return (f'parameter {name!r} must be of type {expected.__name__}, '
                f'got {type(value).__name__} {value!r}')
    if spec.choices and value not in spec.choices:
        return f'parameter {name!r} must be one of {", ".join(spec.choices)}; got {value!r}'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:
            return f'parameter {name!r} must be a number; got NaN'
        if spec.minimum is not None and value < spec.minimum:
            return f'parameter {name!r} must be at least {spec.minimum:g}; got {value!r}'
        if spec.maximum is not None and value > spec.maximum:
            return f'parameter {name!r} must be at most {spec.maximum:g}; got {value!r}'
    return None


@dataclass(frozen=True)
class PolicyNodeParams:
    """Validated snapshot of every policy-node parameter (units as in ``SPECS``)."""

    model_path: str
    compressed: bool
    use_imu: bool
    imu_stale_action: str
    imu_timeout: float
    input_timeout: float
    control_rate_hz: float
    max_linear_x: float
    max_angular_z: float
    max_linear_accel: float
    max_angular_accel: float
    linear_scale: float
    angular_scale: float
    constant_linear_x: float
    twist_stamped: bool
    frame_id: str
    command_stamp: str
    sensor_reliability: str
    max_stamp_offset: float
    enabled_on_start: bool
    publish_neurons: bool
    diagnostics_period: float
    num_threads: int

    @property
    def control_period(self) -> float:
        """Control timer period in seconds."""
        return 1.0 / self.control_rate_hz

    @classmethod
    def defaults(cls) -> 'PolicyNodeParams':
        """Return the parameters with every default value."""
        return cls(**{spec.name: spec.default for spec in SPECS})

    @classmethod
    def from_values(cls, values: Mapping[str, Value]) -> 'PolicyNodeParams':
        """Build and validate a snapshot; missing names take their default.

        Raises ConfigError naming the first invalid parameter.
        """
        merged = {spec.name: spec.default for spec in SPECS}
        for name, value in values.items():
            reason = check_value(name, value)
            if reason is not None:
                raise ConfigError(reason)
            if isinstance(SPECS_BY_NAME[name].default, float):
                value = float(value)
            merged[name] = value
        params = cls(**merged)
        reason = params.validate()
        if reason is not None:
            raise ConfigError(reason)
        return params

    def with_changes(self, changes: Mapping[str, Value]) -> Tuple[
            Optional['PolicyNodeParams'], Optional[str]]:
        """Return (new snapshot, None) or (None, reason) for a set of runtime changes."""
        converted = {}
        for name, value in changes.items():
            reason = check_value(name, value)
            if reason is not None:
                return None, reason
            if SPECS_BY_NAME[name].read_only and value != getattr(self, name):
                return None, f'parameter {name!r} is read-only: restart the node to change it'
            converted[name] = float(value) if isinstance(
                SPECS_BY_NAME[name].default, float) else value
        params = replace(self, **converted)
        reason = params.validate()
        if reason is not None:
            return None, reason
        return params, None

    def validate(self) -> Optional[str]:
        """Return why the combination of values is invalid, or None."""
        for field in fields(self):
            reason = check_value(field.name, getattr(self, field.name))
            if reason is not None:
                return reason
        if self.twist_stamped and not self.frame_id.strip():
            return "parameter 'frame_id' must not be empty when twist_stamped is true"
        return None
