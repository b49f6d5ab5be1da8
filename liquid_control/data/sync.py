"""Per-frame synchronisation of IMU readings and teacher commands, and command mapping.

The recorder node and the bag importers share ``LabelOptions`` and the matching functions
here, so a live recording and an imported bag label frames the same way.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import List, Optional, Sequence, Tuple

import numpy as np

from liquid_control.data.episodes import FrameLabels
from liquid_control.errors import ConfigError

COMMAND_MATCHES = ('nearest', 'latest')
IMU_MODES = ('interpolate', 'nearest')
INVALID_FRAME_POLICIES = ('flag', 'skip')
RAW_IMAGE_FORMATS = ('png', 'jpeg')
COMMAND_TYPES = ('twist', 'twist_stamped', 'joy')


@dataclass
class LabelOptions:
    """How frames are labelled, shared by the recorder node and the importers.

    ``command_match='nearest'`` takes the command closest in time to the frame, before or
    after it. Teleoperation loggers often publish the command a few milliseconds after the
    frame it belongs to, and 'latest' (only commands stamped at or before the frame) would
    then label every frame with the previous command. Scales of None take the source's
    default: 1 for ROS messages, and for donkeycar tubs ``angular_z = -angle`` (donkeycar
    steers right for positive angles, REP 103 turns left for positive angular_z) and
    ``linear_x = throttle``.
    """

    command_match: str = 'nearest'
    command_tolerance_s: float = 0.1
    imu_mode: str = 'interpolate'
    imu_tolerance_s: float = 0.02
    invalid_frames: str = 'flag'
    split_gap_s: float = 1.0
    linear_scale: Optional[float] = None
    angular_scale: Optional[float] = None
    linear_unit: Optional[str] = None
    angular_unit: Optional[str] = None
    joy_linear_axis: int = 1
    joy_angular_axis: int = 0
    raw_image_format: str = 'png'
    jpeg_quality: int = 90
    require_commands: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid option."""
        choices = {'command_match': COMMAND_MATCHES, 'imu_mode': IMU_MODES,
                   'invalid_frames': INVALID_FRAME_POLICIES,
                   'raw_image_format': RAW_IMAGE_FORMATS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f'invalid {name} {getattr(self, name)!r}: use one of '
                                  f'{", ".join(allowed)}')
        for name in ('command_tolerance_s', 'imu_tolerance_s', 'split_gap_s'):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f'invalid {name} {value!r}: expected seconds >= 0')
        for name in ('linear_scale', 'angular_scale'):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f'invalid {name} {value!r}: expected a finite number')
        for name in ('linear_unit', 'angular_unit'):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise ConfigError(f'invalid {name} {value!r}: expected a unit name such as '
                                  "'normalised (-1..1)'")
        for name in ('joy_linear_axis', 'joy_angular_axis'):
            if getattr(self, name) < 0:
                raise ConfigError(f'invalid {name} {getattr(self, name)}: expected an axis '
                                  'index >= 0')
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f'invalid jpeg_quality {self.jpeg_quality}: expected 1..100')

    def to_dict(self) -> dict:
        """Return the options as a JSON-able dict (stored in episode metadata)."""
        return asdict(self)

    @classmethod
    def from_kwargs(cls, **options) -> 'LabelOptions':
        """Build options from keyword arguments, rejecting unknown names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f'unknown label option(s) {", ".join(unknown)}; known: '
                              f'{", ".join(sorted(known))}')
        return cls(**options)


def command_mapping(source_kind: str, options: LabelOptions) -> dict:
    """Return how ``linear_x`` and ``angular_z`` are computed from a source's fields.

    ``source_kind`` is 'twist', 'twist_stamped', 'joy' or 'donkeycar'. The result is
    stored in episode metadata and used by ``map_command``.
    """
    if source_kind == 'donkeycar':
        linear_source, angular_source = 'user/throttle', 'user/angle'
        default_linear, default_angular = 1.0, -1.0
        units = 'normalised (-1..1)'
    elif source_kind == 'joy':
        linear_source = f'axes[{options.joy_linear_axis}]'
        angular_source = f'axes[{options.joy_angular_axis}]'
        default_linear, default_angular = 1.0, 1.0
        units = 'joystick axis (-1..1) times scale'
    elif source_kind == 'twist_stamped':
        linear_source, angular_source = 'twist.linear.x', 'twist.angular.z'
        default_linear, default_angular = 1.0, 1.0
        units = None
    elif source_kind == 'twist':
        linear_source, angular_source = 'linear.x', 'angular.z'
        default_linear, default_angular = 1.0, 1.0
        units = None
    else:
        raise ConfigError(f'unknown command source {source_kind!r}; expected one of '
                          f'{", ".join(COMMAND_TYPES + ("donkeycar",))}')
    linear_scale = default_linear if options.linear_scale is None else options.linear_scale
    angular_scale = (default_angular if options.angular_scale is None
                     else options.angular_scale)
    linear_unit = options.linear_unit or units or (
        'm/s' if linear_scale == 1.0 else 'm/s times linear_scale')
    angular_unit = options.angular_unit or units or (
        'rad/s' if angular_scale == 1.0 else 'rad/s times angular_scale')
    return {
        'linear_x': {'source': linear_source, 'scale': float(linear_scale),
                     'unit': linear_unit},
        'angular_z': {'source': angular_source, 'scale': float(angular_scale),
                      'unit': angular_unit},
        'convention': 'REP 103: linear_x forward, positive angular_z turns left',
    }


def command_from_message(message, command_type: str, mapping: dict) -> Tuple[float, float]:
    """Return ``(linear_x, angular_z)`` from a Twist, TwistStamped or Joy message.

    Works on rclpy messages and on messages deserialised by ``rosbags`` (same fields).
    A Joy message without the configured axis gives NaN for that field.
    """
    if command_type == 'twist':
        linear, angular = message.linear.x, message.angular.z
    elif command_type == 'twist_stamped':
        linear, angular = message.twist.linear.x, message.twist.angular.z
    elif command_type == 'joy':
        axes = message.axes
        linear = _axis(axes, mapping['linear_x']['source'])
        angular = _axis(axes, mapping['angular_z']['source'])
    else:
        raise ConfigError(f'unknown command type {command_type!r}; use one of '
                          f'{", ".join(COMMAND_TYPES)}')
    return (float(linear) * mapping['linear_x']['scale'],
            float(angular) * mapping['angular_z']['scale'])


def _axis(axes, source: str) -> float:
    index = int(source[len('axes['):-1])
    return float(axes[index]) if index < len(axes) else math.nan


def imu_from_message(message) -> np.ndarray:
    """Return an Imu message's angular velocity and linear acceleration, (6,) float64."""
    angular, linear = message.angular_velocity, message.linear_acceleration
    return np.array([angular.x, angular.y, angular.z, linear.x, linear.y, linear.z],
                    dtype=np.float64)


def match_commands(frame_ns: np.ndarray, command_ns: np.ndarray, command_values: np.ndarray,
                   match: str, tolerance_s: float
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match one command to each frame.

    ``frame_ns`` (N,) and ``command_ns`` (K,, sorted) are int64 nanoseconds and
    ``command_values`` is (K, 2) as (linear_x, angular_z). Returns ``values`` (N, 2) with
    NaN where unmatched, ``age_s`` (N,) frame time minus command time, and ``matched``
    (N,) bool. A command matches when ``|age| <= tolerance_s`` ('nearest') or
    ``0 <= age <= tolerance_s`` ('latest').
    """
    frame_ns = np.asarray(frame_ns, dtype=np.int64)
    count = frame_ns.size
    values = np.full((count, 2), np.nan)
    age_s = np.full(count, np.nan)
    matched = np.zeros(count, dtype=bool)
    command_ns = np.asarray(command_ns, dtype=np.int64)
    if command_ns.size == 0 or count == 0:
        return values, age_s, matched
    tolerance_ns = int(round(tolerance_s * 1e9))

    after = np.searchsorted(command_ns, frame_ns, side='right')
    before = after - 1
    has_before = before >= 0
    age_before = np.where(has_before, frame_ns - command_ns[np.maximum(before, 0)], np.iinfo(
        np.int64).max)
    chosen = before.copy()
    chosen_age = age_before.copy()
    if match == 'nearest':
        has_after = after < command_ns.size
        age_after = np.where(has_after, command_ns[np.minimum(after, command_ns.size - 1)]
                             - frame_ns, np.iinfo(np.int64).max)
        take_after = age_after < age_before
        chosen = np.where(take_after, after, before)
        chosen_age = np.where(take_after, -age_after, age_before)
    matched = (np.abs(chosen_age) <= tolerance_ns) & (chosen >= 0) & (chosen < command_ns.size)
    rows = np.clip(chosen, 0, command_ns.size - 1)
    values[matched] = np.asarray(command_values, dtype=np.float64)[rows[matched]]
    age_s[matched] = chosen_age[matched] * 1e-9
    return values, age_s, matched


def match_imu(frame_ns: np.ndarray, imu_ns: np.ndarray, imu_values: np.ndarray, mode: str,
              tolerance_s: float) -> Tuple[np.ndarray, np.ndarray]:
    """Attach an IMU reading to each frame.

    ``imu_ns`` (M,) is sorted and ``imu_values`` (M, 6). With 'interpolate', a frame
    between two readings that are both within ``tolerance_s`` of it gets their linear
    interpolation (status 'interpolated'). Other frames, and every frame in 'nearest'
    mode, get the nearest reading within the tolerance (status 'nearest'), or NaN (status
    'missing'). A reading at exactly the frame's stamp counts as 'nearest'.
    Returns ``imu`` (N, 6) float64 and ``status`` (N,) strings.
    """
    frame_ns = np.asarray(frame_ns, dtype=np.int64)
    count = frame_ns.size
    imu = np.full((count, 6), np.nan)
    status = np.full(count, 'missing', dtype=object)
    imu_ns = np.asarray(imu_ns, dtype=np.int64)
    if imu_ns.size == 0 or count == 0:
        return imu, status.astype(str)
    imu_values = np.asarray(imu_values, dtype=np.float64)
    tolerance_ns = int(round(tolerance_s * 1e9))
    big = np.iinfo(np.int64).max

    after = np.searchsorted(imu_ns, frame_ns, side='left')
    before = after - 1
    # An exact stamp match counts as 'after' with a distance of zero.
    has_before = before >= 0
    has_after = after < imu_ns.size
    before_rows = np.maximum(before, 0)
    after_rows = np.minimum(after, imu_ns.size - 1)
    distance_before = np.where(has_before, frame_ns - imu_ns[before_rows], big)
    distance_after = np.where(has_after, imu_ns[after_rows] - frame_ns, big)

    if mode == 'interpolate':
        both = (distance_before <= tolerance_ns) & (distance_after <= tolerance_ns) \
            & (distance_after > 0)
        span = (distance_before + distance_after).astype(np.float64)
        weight = np.where(both, distance_before / np.where(both, span, 1.0), 0.0)
        interpolated = (imu_values[before_rows] * (1.0 - weight)[:, None]
                        + imu_values[after_rows] * weight[:, None])
        imu[both] = interpolated[both]
        status[both] = 'interpolated'
    else:
        both = np.zeros(count, dtype=bool)

    take_after = distance_after <= distance_before
    nearest_rows = np.where(take_after, after_rows, before_rows)
    nearest_distance = np.minimum(distance_after, distance_before)
    nearest = ~both & (nearest_distance <= tolerance_ns)
    imu[nearest] = imu_values[nearest_rows[nearest]]
    status[nearest] = 'nearest'
    return imu, status.astype(str)


def label_frames(stamps_ns: Sequence[int], imu_ns: np.ndarray, imu_values: np.ndarray,
                 command_ns: np.ndarray, command_values: np.ndarray,
                 options: LabelOptions) -> List[FrameLabels]:
    """Return the labels of frames from sorted IMU and command histories."""
    frames = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    imu, imu_status = match_imu(frames, imu_ns, imu_values, options.imu_mode,
                                options.imu_tolerance_s)
    values, age_s, matched = match_commands(frames, command_ns, command_values,
                                            options.command_match, options.command_tolerance_s)
    labels = []
    for i in range(frames.size):
        labels.append(FrameLabels(
            imu=imu[i] if imu_status[i] != 'missing' else None, imu_status=str(imu_status[i]),
            linear_x=float(values[i, 0]), angular_z=float(values[i, 1]),
            command_status='ok' if matched[i] else 'missing', command_age_s=float(age_s[i])))
    return labels


def label_frame(stamp_ns: int, imu_ns: np.ndarray, imu_values: np.ndarray,
                command_ns: np.ndarray, command_values: np.ndarray,
                options: LabelOptions) -> FrameLabels:
    """Return the labels of one frame from sorted IMU and command histories."""
    return label_frames([stamp_ns], imu_ns, imu_values, command_ns, command_values,
                        options)[0]
