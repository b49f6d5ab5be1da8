"""Reader and importer for rosbag2 (sqlite3, MCAP) and ROS 1 bags, through ``rosbags``.

Import reads the IMU and command topics into arrays, then the stamps of the image topic to
find frames stamped out of order, then the image topic again, streaming each frame into an
episode with its synchronised labels. Frames and IMU samples keep their header stamps, or
the bag's receive time when a header stamp is zero. Header-less commands (Twist) use the
bag's receive time.
"""

import logging
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import Connection
from rosbags.typesys import Stores, get_typestore

from liquid_control.data.episodes import EncodedImage, raw_image_for_storage
from liquid_control.data.images import check_compressed
from liquid_control.data.importing import (EpisodeSequence, SkippedItems,
                                           check_mostly_in_order, format_stamp,
                                           increasing_subset, is_storable)
from liquid_control.data.sync import (LabelOptions, command_from_message, command_mapping,
                                      imu_from_message, label_frames)
from liquid_control.errors import DataError

IMAGE_TYPES = {'sensor_msgs/msg/Image': 'raw', 'sensor_msgs/msg/CompressedImage': 'compressed'}
IMU_TYPES = {'sensor_msgs/msg/Imu'}
COMMAND_TYPES = {'geometry_msgs/msg/Twist': 'twist',
                 'geometry_msgs/msg/TwistStamped': 'twist_stamped',
                 'sensor_msgs/msg/Joy': 'joy'}

# Errors that rosbags and its storage back-ends raise for damaged or truncated files.
# NOTE: collected by truncating and corrupting sqlite3, MCAP and ROS 1 files with rosbags
# 0.11; other damage may surface as another exception type.
_READ_ERRORS = (AnyReaderError, sqlite3.Error, struct.error, EOFError, ValueError, KeyError,
                IndexError, AssertionError, OSError)
# rosbags 0.11 wraps what goes wrong in deserialising one message in AnyReaderError; the
# others are listed in case a version does not.
_DESERIALIZE_ERRORS = (AnyReaderError, struct.error, ValueError, IndexError, KeyError,
                       UnicodeDecodeError)

# Frames labelled together during an import; raw 640x480 frames take about 1 MB each.
LABEL_CHUNK = 32

_logger = logging.getLogger(__name__)


def is_bag(path: Path) -> bool:
    """Return whether ``path`` looks like a bag: a rosbag2 folder or a .bag/.db3/.mcap file."""
    if path.is_dir():
        return (path / 'metadata.yaml').is_file()
    return path.suffix in ('.bag', '.db3', '.mcap')


def bag_kind(path: Path) -> str:
    """Return 'ros1_bag' or 'rosbag2'."""
    return 'ros1_bag' if path.suffix == '.bag' else 'rosbag2'


@dataclass
class TopicInfo:
    """A topic of a bag: name, message type and message count."""

    name: str
    msgtype: str
    count: int

    def describe(self) -> str:
        """Return 'name (type, N messages)'."""
        return f'{self.name} ({self.msgtype}, {self.count} messages)'


def _wrap_read_error(path: Path, error: BaseException) -> DataError:
    return DataError(f'cannot read bag {path}: {type(error).__name__}: {error}. The file is '
                     'truncated, corrupted or not a bag.')


class BagReader:
    """An open bag: its topics, and message streams with stamps in nanoseconds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f'bag {self.path} not found')
        if not (self.path.is_file() or self.path.is_dir()):
            raise DataError(f'bag {self.path} is not a regular file or a folder')
        self._reader: Optional[AnyReader] = None

    def __enter__(self) -> 'BagReader':
        try:
            self._reader = AnyReader([self.path],
                                     default_typestore=get_typestore(Stores.ROS2_KILTED))
            self._reader.open()
        except _READ_ERRORS as error:
            self._reader = None
            raise _wrap_read_error(self.path, error) from None
        return self

    def __exit__(self, *exc_info) -> None:
        if self._reader is not None and self._reader.stack is not None:
            self._reader.close()

    @property
    def topics(self) -> Dict[str, TopicInfo]:
        """Topics by name."""
        topics: Dict[str, TopicInfo] = {}
        for connection in self._reader.connections:
            info = topics.setdefault(connection.topic,
                                     TopicInfo(connection.topic, connection.msgtype, 0))
            info.count += connection.msgcount
        return topics

    def describe_topics(self) -> str:
        """Return every topic of the bag on one line, for error messages."""
        topics = self.topics
        if not topics:
            return 'no topics'
        return '; '.join(info.describe() for info in sorted(topics.values(), key=lambda t: t.name))

    def messages(self, topic: str) -> Iterator[Tuple[int, object]]:
        """Yield ``(receive_time_ns, message)`` for one topic in receive-time order.

        Raises ``DataError`` at the first message that cannot be deserialised.
        """
        for item in self.read_topic(topic):
            if item.message is None:
                raise DataError(f'bag {self.path}: {item.describe()} cannot be deserialised: '
                                f'{item.error}')
            yield item.receive_ns, item.message

    def read_topic(self, topic: str) -> Iterator['BagMessage']:
        """Yield every message of one topic in receive-time order, damaged ones included.

        A message that cannot be deserialised comes with ``message`` None and the reason
        in ``error``. Raises ``DataError`` when the storage itself cannot be read.
        """
        connections: List[Connection] = [c for c in self._reader.connections if c.topic == topic]
        index = 0
        try:
            for connection, receive_ns, raw in self._reader.messages(connections=connections):
                try:
                    item = BagMessage(topic, index, int(receive_ns),
                                      self._reader.deserialize(raw, connection.msgtype))
                except _DESERIALIZE_ERRORS as error:
                    item = BagMessage(topic, index, int(receive_ns), None,
                                      f'{type(error).__name__}: {error}')
                yield item
                index += 1
        except _READ_ERRORS as error:
            raise _wrap_read_error(self.path, error) from None


@dataclass
class BagMessage:
    """One message of a topic: its position on the topic from 0, receive time, content."""

    topic: str
    index: int
    receive_ns: int
    message: Optional[object]
    error: str = ''

    @property
    def stamp_ns(self) -> int:
        """Header stamp, or the receive time (see ``message_stamp_ns``)."""
        return message_stamp_ns(self.message, self.receive_ns)

    def describe(self) -> str:
        """Return 'message 50 on /topic (stamp 1669759744.666 s)' for messages."""
        stamp_ns = self.receive_ns if self.message is None else self.stamp_ns
        kind = 'stamp' if self.message is not None else 'received'
        return f'message {self.index} on {self.topic} ({kind} {format_stamp(stamp_ns)})'


def message_stamp_ns(message, receive_ns: int) -> int:
    """Return the header stamp of a message, or ``receive_ns`` without a non-zero one."""
    header = getattr(message, 'header', None)
    if header is not None:
        stamp = header.stamp
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        if stamp_ns > 0:
            return stamp_ns
    return int(receive_ns)


def _select_topic(bag: BagReader, requested: Optional[str], types: Sequence[str],
                  role: str, option: str) -> Optional[str]:
    topics = bag.topics
    if requested:
        if requested not in topics:
            raise DataError(f'topic {requested!r} not found in bag {bag.path}; it contains: '
                            f'{bag.describe_topics()}')
        if topics[requested].msgtype not in types:
            raise DataError(f'topic {requested!r} in bag {bag.path} has type '
                            f'{topics[requested].msgtype}, but a {role} topic must be one of '
                            f'{", ".join(sorted(types))}')
        return requested
    candidates = sorted(name for name, info in topics.items() if info.msgtype in types)
    if len(candidates) > 1:
        raise DataError(f'bag {bag.path} has several {role} topics ({", ".join(candidates)}); '
                        f'choose one with {option}')
    return candidates[0] if candidates else None


@dataclass
class BagTopics:
    """The topics an import uses; ``imu`` and ``command`` may be None."""

    image: str
    imu: Optional[str]
    command: Optional[str]


def select_topics(bag: BagReader, options: LabelOptions, image_topic: Optional[str] = None,
                  imu_topic: Optional[str] = None, command_topic: Optional[str] = None
                  ) -> BagTopics:
    """Choose the image, IMU and command topics, by name or by message type.

    Raises ``DataError`` naming the bag and listing its topics when a requested topic is
    absent, a type is ambiguous, there is no image topic, or there is no command topic
    while ``options.require_commands`` is set.
    """
    image = _select_topic(bag, image_topic, tuple(IMAGE_TYPES), 'camera', '--image-topic')
    if image is None:
        raise DataError(f'bag {bag.path} has no camera topic (sensor_msgs/msg/Image or '
                        f'CompressedImage); it contains: {bag.describe_topics()}')
    imu = _select_topic(bag, imu_topic, tuple(IMU_TYPES), 'IMU', '--imu-topic')
    command = _select_topic(bag, command_topic, tuple(COMMAND_TYPES), 'command',
                            '--command-topic')
    if command is None and options.require_commands:
        raise DataError(
            f'bag {bag.path} has no command topic (geometry_msgs/msg/Twist, TwistStamped or '
            f'sensor_msgs/msg/Joy); it contains: {bag.describe_topics()}. Name one with '
            '--command-topic, or import camera and IMU only with --no-commands.')
    return BagTopics(image, imu, command)


def _read_history(bag: BagReader, topic: str, convert, width: int, what: str
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Return the sorted stamps and values of an IMU or command topic.

    ``convert`` returns a message's values. Messages that cannot be deserialised, and
    values that are not finite float32 numbers, are left out with a counted warning:
    a frame then takes the nearest other message within the tolerance, or none.
    """
    stamps, values = [], []
    undecodable = SkippedItems(f'{what} message(s) left out because they cannot be '
                               'deserialised')
    unusable = SkippedItems(f'{what} message(s) left out because a value is not a finite '
                            'float32 number')
    for item in bag.read_topic(topic):
        if item.message is None:
            undecodable.add(f'{item.describe()}: {item.error}')
            continue
        converted = convert(item.message)
        if not all(is_storable(value) for value in converted):
            unusable.add(f'{item.describe()}: {np.asarray(converted, float).tolist()}')
            continue
        stamps.append(item.stamp_ns)
        values.append(converted)
    for items in (undecodable, unusable):
        items.warn(f'bag {bag.path}', _logger)
    return _sorted_arrays(stamps, values, width)


def _read_histories(bag: BagReader, topics: BagTopics, command_type: Optional[str],
                    mapping: dict) -> Tuple[np.ndarray, ...]:
    """Read the IMU and command topics into arrays sorted by stamp.

    Returns ``(imu_ns, imu_values, command_ns, command_values)``, empty for a topic the
    import does not use.
    """
    imu_ns, imu_values = np.zeros(0, np.int64), np.zeros((0, 6))
    if topics.imu:
        imu_ns, imu_values = _read_history(bag, topics.imu, imu_from_message, 6, 'IMU')
    command_ns, command_values = np.zeros(0, np.int64), np.zeros((0, 2))
    if topics.command:
        command_ns, command_values = _read_history(
            bag, topics.command,
            lambda message: command_from_message(message, command_type, mapping), 2,
            'command')
    return imu_ns, imu_values, command_ns, command_values


def _sorted_arrays(stamps: list, values: list, width: int) -> Tuple[np.ndarray, np.ndarray]:
    stamp_array = np.asarray(stamps, dtype=np.int64)
    value_array = np.asarray(values, dtype=np.float64).reshape(-1, width)
    order = np.argsort(stamp_array, kind='stable')
    return stamp_array[order], value_array[order]


def _frame_image(message, kind: str):
    """Return what the writer stores: compressed bytes as received, or an RGB or grey array.

    Raises ``DataError`` when the image is damaged: compressed data that does not decode
    or is truncated, or raw data that does not match its encoding, size and step.
    """
    if kind == 'compressed':
        data = bytes(message.data)
        return EncodedImage(data, check_compressed(data, message.format))
    return raw_image_for_storage(message.encoding, int(message.height), int(message.width),
                                 int(message.step), message.data, bool(message.is_bigendian))


@dataclass
class _FrameScan:
    """Result of the first pass over the camera topic: the frames selected for import."""

    total: int
    selected: np.ndarray
    undecodable: SkippedItems
    out_of_order: SkippedItems


def _scan_frames(bag: BagReader, topic: str) -> _FrameScan:
    """Read the camera topic's stamps and choose the frames whose stamps are in order.

    Raises ``DataError`` when the topic has no messages, or when fewer than half of the
    frames that deserialise have stamps in order.
    """
    indices, stamps = [], []
    undecodable = SkippedItems('frame(s) left out because they cannot be deserialised')
    total = 0
    for item in bag.read_topic(topic):
        total += 1
        if item.message is None:
            undecodable.add(f'{item.describe()}: {item.error}')
            continue
        indices.append(item.index)
        stamps.append(item.stamp_ns)
    if total == 0:
        listed = bag.topics[topic].count
        detail = (f', although its metadata lists {listed}; the bag is damaged or its '
                  'metadata does not match its data') if listed else ''
        raise DataError(f'bag {bag.path} has no messages on the camera topic {topic}{detail}')
    if not indices:
        raise DataError(f'bag {bag.path}: none of the {total} messages on {topic} can be '
                        f'deserialised ({undecodable.describe()}); the bag is damaged')

    keep = increasing_subset(stamps)
    check_mostly_in_order(int(keep.sum()), len(stamps), f'bag {bag.path} topic {topic}',
                          'frames')
    out_of_order = SkippedItems('frame(s) left out because their header stamp is out of '
                                'order with the frames around them')
    selected = np.zeros(total, dtype=bool)
    for index, stamp, kept in zip(indices, stamps, keep):
        selected[index] = kept
        if not kept:
            out_of_order.add(f'message {index} on {topic} (stamp {format_stamp(stamp)})')
    return _FrameScan(total, selected, undecodable, out_of_order)


def import_bag(path: Path, out_dir: Path, options: LabelOptions,
               image_topic: Optional[str] = None, imu_topic: Optional[str] = None,
               command_topic: Optional[str] = None) -> List[Path]:
    """Import a bag into episodes in ``out_dir``; return the episode folders.

    A gap longer than ``options.split_gap_s`` between frames starts a new episode; frames
    without a matched command are flagged invalid or skipped (``options.invalid_frames``).
    Frames that cannot be deserialised, whose image is damaged, or whose header stamp is
    out of order with the frames around them are left out, with one warning for each
    reason that counts them and names the first few. On any error the episodes of this
    import are deleted before the error is raised.
    """
    path = Path(path)
    source = f'bag {path}'
    with BagReader(path) as bag:
        topics = select_topics(bag, options, image_topic, imu_topic, command_topic)
        types = bag.topics
        image_kind = IMAGE_TYPES[types[topics.image].msgtype]

        command_type = COMMAND_TYPES[types[topics.command].msgtype] if topics.command else None
        mapping = command_mapping(command_type or 'twist', options)
        histories = _read_histories(bag, topics, command_type, mapping)
        scan = _scan_frames(bag, topics.image)
        bad_images = SkippedItems('frame(s) left out because their image is damaged')
        metadata = _bag_metadata(path, topics, types, mapping, options)
        sequence = EpisodeSequence(out_dir, metadata, options.split_gap_s,
                                   image_format=options.raw_image_format,
                                   jpeg_quality=options.jpeg_quality)
        skipped_invalid = 0
        with sequence:
            # Frames are labelled in chunks, because the matching is vectorised.
            chunk: List[Tuple[int, object]] = []
            for item in bag.read_topic(topics.image):
                if item.message is None or not scan.selected[item.index]:
                    continue
                try:
                    image = _frame_image(item.message, image_kind)
                except DataError as error:
                    bad_images.add(f'{item.describe()}: {error}')
                    continue
                chunk.append((item.stamp_ns, image))
                if len(chunk) == LABEL_CHUNK:
                    skipped_invalid += _write_chunk(sequence, chunk, histories, options)
                    chunk = []
            skipped_invalid += _write_chunk(sequence, chunk, histories, options)
            folders = sequence.finish('end of bag')
            for items in (scan.undecodable, scan.out_of_order, bad_images):
                items.warn(source, _logger)
            if skipped_invalid:
                _logger.warning('%s: skipped %d frame(s) without a command '
                                '(invalid_frames=skip)', source, skipped_invalid)

    if not folders:
        reasons = [items.describe() for items in (scan.undecodable, scan.out_of_order,
                                                  bad_images) if items.count]
        if skipped_invalid:
            reasons.append(f'{skipped_invalid} without a command (invalid_frames=skip)')
        raise DataError(f'{source} gave no frames: of {scan.total} messages on '
                        f'{topics.image}, {"; ".join(reasons)}')
    return folders


def _bag_metadata(path: Path, topics: BagTopics, types: Dict[str, TopicInfo], mapping: dict,
                  options: LabelOptions) -> dict:
    used = [name for name in (topics.image, topics.imu, topics.command) if name]
    return {
        'source': {'kind': bag_kind(path), 'path': str(path.resolve()),
                   'topics': {'image': topics.image, 'imu': topics.imu,
                              'command': topics.command},
                   'types': {name: types[name].msgtype for name in used}},
        'commands': mapping if topics.command else None,
        'imu': {'present': bool(topics.imu), 'units': ['rad/s'] * 3 + ['m/s^2'] * 3},
        'label_options': options.to_dict(),
    }


def _write_chunk(sequence: EpisodeSequence, chunk: List[Tuple[int, object]],
                 histories: Tuple[np.ndarray, ...], options: LabelOptions) -> int:
    """Label and write a chunk of ``(stamp_ns, image)``; return how many were skipped.

    ``histories`` are the sorted IMU stamps and values and command stamps and values.
    """
    if not chunk:
        return 0
    labels = label_frames([stamp for stamp, _ in chunk], *histories, options)
    skipped = 0
    for (stamp_ns, image), frame_labels in zip(chunk, labels):
        if not frame_labels.valid and options.invalid_frames == 'skip':
            skipped += 1
            continue
        sequence.add(stamp_ns, image, frame_labels)
    return skipped
