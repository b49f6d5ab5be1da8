"""Play camera and IMU topics of a bag into live ROS topics with their recorded timing.

Reads rosbag2 (sqlite3 or MCAP) and ROS 1 bags with ``rosbags``, so no rosbag2 install is
needed. Messages keep their recorded spacing (divided by ``rate``). By default each header
stamp is replaced with the player's clock at publication, so consumers that check stamps
against their own clock (the policy node does) accept old recordings. For latency
measurements, the player records the wall time at which each frame stamp was published.
"""

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from rclpy.node import Node
from rclpy.serialization import deserialize_message

from liquid_control.errors import DataError
from liquid_control.nodes.process import StopRequest
from liquid_control.nodes.qos import sensor_qos

_logger = logging.getLogger(__name__)

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
IMU_TYPE = 'sensor_msgs/msg/Imu'


def message_class(msgtype: str):
    """Return the rclpy message class for a type name such as 'sensor_msgs/msg/Image'."""
    package, _, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError) as error:
        raise DataError(f'message type {msgtype} is not installed for rclpy: {error}') from error


def open_reader(bag: Path):
    """Return an opened ``rosbags`` AnyReader for a rosbag2 folder or a ROS 1 bag file."""
    from rosbags.highlevel import AnyReader
    from rosbags.highlevel.anyreader import AnyReaderError

    if not Path(bag).exists():
        raise DataError(f'bag not found: {bag}')
    reader = AnyReader([Path(bag)])
    try:
        reader.open()
    except AnyReaderError as error:
        raise DataError(f'cannot read bag {bag}: {error}') from error
    return reader


def topic_types(reader) -> Dict[str, str]:
    """Return {topic: message type} of every topic in an opened reader."""
    return {connection.topic: connection.msgtype for connection in reader.connections}


def pick_topic(types: Dict[str, str], wanted: Optional[str], accepted: Sequence[str],
               role: str, option: str) -> Optional[str]:
    """Return the topic to use for a role: ``wanted`` if given, else the only candidate.

    Raises DataError when ``wanted`` is missing or of the wrong type, or when several
    topics qualify and none was named.
    """
    if wanted:
        if wanted not in types:
            raise DataError(f'{role} topic {wanted} not in the bag; topics: '
                            f'{", ".join(sorted(types))}')
        if types[wanted] not in accepted:
            raise DataError(f'{role} topic {wanted} has type {types[wanted]}, expected '
                            f'{" or ".join(accepted)}')
        return wanted
    candidates = sorted(topic for topic, kind in types.items() if kind in accepted)
    if len(candidates) > 1:
        raise DataError(f'the bag has several {role} topics ({", ".join(candidates)}): '
                        f'choose one with {option}')
    return candidates[0] if candidates else None


def copy_to_rclpy(source, message_type):
    """Return an rclpy message of ``message_type`` with the fields of a rosbags message.

    Fields that only the source has (such as a ROS 1 header's seq) are dropped. Sequences
    of nested messages are not supported; the sensor messages played here have none.
    """
    target = message_type()
    for name in target.get_fields_and_field_types():
        if not hasattr(source, name):
            continue
        value = getattr(source, name)
        current = getattr(target, name)
        if hasattr(current, 'get_fields_and_field_types'):
            value = copy_to_rclpy(value, type(current))
        elif isinstance(value, np.ndarray):
            value = value.tobytes() if value.dtype == np.uint8 else value.tolist()
        elif isinstance(value, list) and value and hasattr(value[0], '__msgtype__'):
            raise DataError(f'field {name} of {type(source).__name__} is a sequence of '
                            'messages, which bag playback does not support')
        setattr(target, name, value)
    return target


@dataclass
class PublishedFrame:
    """One camera frame as published: index, bag time, header stamp and wall time."""

    index: int
    bag_time: float
    stamp: Tuple[int, int]
    wall_time: float


@dataclass
class PlaybackRecord:
    """Frames and IMU message count of one playback, with its wall-clock start and end."""

    frames: List[PublishedFrame] = field(default_factory=list)
    imu_messages: int = 0
    started: float = 0.0
    finished: float = 0.0
    interrupted: bool = False


class BagPlayer:
    """Publish selected bag topics from a node, with the recorded timing.

    ``topics`` maps a bag topic to the live topic it is published on. ``camera_topic`` is
    the bag topic whose frames are recorded in ``PlaybackRecord.frames``.
    """

    def __init__(self, node: Node, reader, topics: Dict[str, str], camera_topic: Optional[str],
                 rate: float = 1.0, restamp: bool = True) -> None:
        if not rate > 0:
            raise ValueError(f'playback rate must be positive, got {rate}')
        self.node = node
        self.reader = reader
        self.rate = rate
        self.restamp = restamp
        self.camera_topic = camera_topic
        types = topic_types(reader)
        self._connections = [c for c in reader.connections if c.topic in topics]
        self._classes = {topic: message_class(types[topic]) for topic in topics}
        self._publishers = {
            topic: node.create_publisher(self._classes[topic], live, sensor_qos('best_effort'))
            for topic, live in topics.items()}

    def publishers(self):
        """Return the live publishers by bag topic, for example to wait for subscribers."""
        return dict(self._publishers)

    def _messages(self) -> Iterator[Tuple[str, int, object]]:
        for connection, timestamp, raw in self.reader.messages(connections=self._connections):
            message_type = self._classes[connection.topic]
            if self.reader.is2:
                message = deserialize_message(bytes(raw), message_type)
            else:
                # ROS 1 messages differ in layout (a Header has seq), so they are decoded
                # with the bag's own definitions and copied field by field.
                message = copy_to_rclpy(self.reader.deserialize(raw, connection.msgtype),
                                        message_type)
            yield connection.topic, timestamp, message

    def play(self, stop: Optional[StopRequest] = None,
             duration: Optional[float] = None) -> PlaybackRecord:
        """Publish the selected messages at their recorded times; return what was published.

        ``duration`` limits playback to that many seconds of bag time from the first
        message; ``stop`` ends it early.
        """
        record = PlaybackRecord(started=time.time())
        start_wall = time.monotonic()
        first_time: Optional[int] = None
        clock = self.node.get_clock()
        for topic, timestamp, message in self._messages():
            if first_time is None:
                first_time = timestamp
            if duration is not None and (timestamp - first_time) * 1e-9 > duration:
                break
            due = start_wall + (timestamp - first_time) * 1e-9 / self.rate
            if self._wait_until(due, stop):
                record.interrupted = True
                break
            if self.restamp and hasattr(message, 'header'):
                message.header.stamp = clock.now().to_msg()
            if topic == self.camera_topic:
                stamp = (message.header.stamp.sec, message.header.stamp.nanosec)
                record.frames.append(PublishedFrame(len(record.frames), timestamp * 1e-9,
                                                    stamp, time.time()))
            else:
                record.imu_messages += 1
            self._publishers[topic].publish(message)
        record.finished = time.time()
        return record

    @staticmethod
    def _wait_until(due: float, stop: Optional[StopRequest]) -> bool:
        """Sleep until monotonic time ``due``; return True when ``stop`` was set."""
        while True:
            remaining = due - time.monotonic()
            if stop is not None and stop.is_set():
                return True
            if remaining <= 0:
                return False
            # Short slices let a stop request end playback within 50 ms. The last slice
            # sleeps exactly the remaining time.
            time.sleep(min(remaining, 0.05) if remaining > 0.002 else remaining)
