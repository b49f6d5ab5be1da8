"""Small synthetic bags (rosbag2 and ROS 1) written with rosbags, for import tests."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import cv2
import numpy as np
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin, Writer as Ros2Writer
from rosbags.typesys import Stores, get_typestore

START_NS = 1_700_000_000_000_000_000
FRAME_PERIOD_NS = 50_000_000
IMU_PERIOD_NS = 5_000_000
COMMAND_PERIOD_NS = 20_000_000


@dataclass
class SampleBag:
    """What a sample bag contains, for the checks of a test."""

    path: Path
    frame_ns: List[int] = field(default_factory=list)
    frames: List[bytes] = field(default_factory=list)
    command_ns: List[int] = field(default_factory=list)
    commands: List[tuple] = field(default_factory=list)
    imu_ns: List[int] = field(default_factory=list)


def _jpeg(i: int) -> bytes:
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, :, 0] = (7 * i) % 256
    image[i % 24, :, 1] = 255
    return cv2.imencode('.jpg', image)[1].tobytes()


def command_at(stamp_ns: int) -> tuple:
    """Return the (forward, turn) values the sample bags command at a time."""
    seconds = (stamp_ns - START_NS) * 1e-9
    return 0.5 + 0.1 * seconds, float(np.sin(2.0 * seconds))


def stamp_ns(message) -> int:
    """Return a message's header stamp in nanoseconds."""
    return message.header.stamp.sec * 10**9 + message.header.stamp.nanosec


def set_stamp(message, stamp: int) -> None:
    """Set a message's header stamp from nanoseconds."""
    message.header.stamp.sec = stamp // 10**9
    message.header.stamp.nanosec = stamp % 10**9


def write_sample_bag(path: Path, ros1: bool = False, command_type: str = 'twist',
                     frames: int = 20, storage: str = 'sqlite3', raw_images: bool = False,
                     imu: bool = True, edit: Optional[Callable] = None,
                     damage: Optional[Callable] = None) -> SampleBag:
    """Write a bag with camera frames at 20 Hz, Imu at 200 Hz (unless not ``imu``) and
    commands at 50 Hz.

    Frames are CompressedImage JPEGs, or rgb8 Images with ``raw_images``.
    ``command_type`` is 'twist', 'twist_stamped', 'joy' or 'none'. Joy axes are
    [turn, forward]. ``edit(topic, i, message)`` may change the i-th message of a topic
    before it is serialised, and ``damage(topic, i, data)`` returns the bytes to store
    in place of its serialised form. ``SampleBag`` lists the messages before either.
    """
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_KILTED)
    types = store.types
    Time = types['builtin_interfaces/msg/Time']
    Header = types['std_msgs/msg/Header']
    Vector3 = types['geometry_msgs/msg/Vector3']
    Quaternion = types['geometry_msgs/msg/Quaternion']
    serialize = store.serialize_ros1 if ros1 else store.serialize_cdr

    def header(stamp_ns):
        time = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        if ros1:
            return Header(seq=0, stamp=time, frame_id='camera')
        return Header(stamp=time, frame_id='camera')

    sample = SampleBag(path)
    messages = []
    for i in range(frames):
        stamp = START_NS + i * FRAME_PERIOD_NS
        data = _jpeg(i)
        if raw_images:
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB)
            message = types['sensor_msgs/msg/Image'](
                header=header(stamp), height=rgb.shape[0], width=rgb.shape[1],
                encoding='rgb8', is_bigendian=0, step=rgb.shape[1] * 3, data=rgb.reshape(-1))
            messages.append(('/camera/image_raw', 'sensor_msgs/msg/Image', stamp, message))
            data = rgb.tobytes()
        else:
            message = types['sensor_msgs/msg/CompressedImage'](
                header=header(stamp), format='jpeg', data=np.frombuffer(data, np.uint8))
            messages.append(('/camera/image_raw/compressed',
                             'sensor_msgs/msg/CompressedImage', stamp, message))
        sample.frame_ns.append(stamp)
        sample.frames.append(data)
    end_ns = START_NS + frames * FRAME_PERIOD_NS
    for stamp in range(START_NS, end_ns if imu else START_NS, IMU_PERIOD_NS):
        seconds = (stamp - START_NS) * 1e-9
        message = types['sensor_msgs/msg/Imu'](
            header=header(stamp), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0),
            orientation_covariance=np.zeros(9), angular_velocity=Vector3(
                x=0.0, y=0.0, z=seconds), angular_velocity_covariance=np.zeros(9),
            linear_acceleration=Vector3(x=1.0, y=0.0, z=9.8),
            linear_acceleration_covariance=np.zeros(9))
        messages.append(('/imu/data', 'sensor_msgs/msg/Imu', stamp, message))
        sample.imu_ns.append(stamp)
    if command_type != 'none':
        for stamp in range(START_NS + 3_000_000, end_ns, COMMAND_PERIOD_NS):
            forward, turn = command_at(stamp)
            twist = types['geometry_msgs/msg/Twist'](
                linear=Vector3(x=forward, y=0.0, z=0.0), angular=Vector3(x=0.0, y=0.0, z=turn))
            if command_type == 'twist':
                topic, msgtype, message = '/cmd_vel', 'geometry_msgs/msg/Twist', twist
            elif command_type == 'twist_stamped':
                topic, msgtype = '/cmd_vel', 'geometry_msgs/msg/TwistStamped'
                message = types[msgtype](header=header(stamp), twist=twist)
            else:
                topic, msgtype = '/joy', 'sensor_msgs/msg/Joy'
                message = types[msgtype](header=header(stamp),
                                         axes=np.array([turn, forward], np.float32),
                                         buttons=np.zeros(4, np.int32))
            messages.append((topic, msgtype, stamp, message))
            sample.command_ns.append(stamp)
            sample.commands.append((forward, turn))
    messages.sort(key=lambda item: item[2])

    if ros1:
        writer = Ros1Writer(path)
    else:
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        writer = Ros2Writer(path, version=8, storage_plugin=plugin)
    with writer:
        connections = {}
        counts = {}
        for topic, msgtype, stamp, message in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            i = counts[topic] = counts.get(topic, -1) + 1
            if edit is not None:
                edit(topic, i, message)
            data = serialize(message, msgtype)
            if damage is not None:
                data = damage(topic, i, data)
            writer.write(connections[topic], stamp, data)
    return sample
