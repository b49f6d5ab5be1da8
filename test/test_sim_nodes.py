"""sim_node and expert_node as real processes over real DDS."""

import json
import os
import sys
import threading
import time
from typing import Callable, List, Optional

import pytest

from node_harness import NodeProcess


class SimObserver:
    """An rclpy node in the test process that records what sim_node publishes."""

    def __init__(self, env: dict) -> None:
        import rclpy
        from geometry_msgs.msg import Twist, TwistStamped
        from nav_msgs.msg import Path
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,
                               qos_profile_sensor_data)
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, Imu
        from std_msgs.msg import String

        from liquid_control.nodes.dds import apply_large_frame_profile

        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        apply_large_frame_profile()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(env['ROS_DOMAIN_ID']))
        self.node = rclpy.create_node('sim_observer', context=self.context)
        self.statuses: List[dict] = []
        self.images: list = []
        self.imus: list = []
        self.clocks: List[float] = []
        self.tracks: list = []
        self._lock = threading.Lock()
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, 'status', self._on_status, latched)
        self.node.create_subscription(Path, 'track', self._append(self.tracks), latched)
        self.node.create_subscription(Image, 'image_raw', self._append(self.images),
                                      qos_profile_sensor_data)
        self.node.create_subscription(Imu, 'imu/data', self._append(self.imus),
                                      qos_profile_sensor_data)
        self.node.create_subscription(
            Clock, '/clock',
            lambda msg: self.clocks.append(msg.clock.sec + msg.clock.nanosec * 1e-9),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.labels: list = []
        self.node.create_subscription(TwistStamped, 'expert/cmd_vel', self._append(self.labels),
                                      10)
        self.command_pub = self.node.create_publisher(Twist, 'cmd_vel', 10)
        self._twist_type = Twist
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _append(self, target: list) -> Callable:
        def callback(msg) -> None:
            with self._lock:
                target.append(msg)
        return callback

    def _on_status(self, msg) -> None:
        with self._lock:
            self.statuses.append(json.loads(msg.data))

    def latest_status(self) -> Optional[dict]:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def drive(self, linear_x: float, angular_z: float, seconds: float) -> None:
        """Publish a Twist at 20 Hz for ``seconds``."""
        msg = self._twist_type()
        msg.linear.x = linear_x
        msg.angular.z = angular_z
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.command_pub.publish(msg)
            time.sleep(0.05)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def _node(executable: str, params: dict) -> List[str]:
    command = [os.path.join(os.path.dirname(sys.executable), executable), '--ros-args']
    for name, value in params.items():
        command += ['-p', f'{name}:={value}']
    return command


@pytest.fixture
def start(ros_env, tmp_path):
    """Start nodes and an observer on one DDS domain; stop them after the test."""
    processes = []
    observers = []

    def start_nodes(*nodes):
        for executable, params in nodes:
            process = NodeProcess(_node(executable, params), ros_env,
                                  tmp_path / f'{executable}.log')
            processes.append(process)
        for process in processes:
            assert process.wait_for_output('ready:', timeout=60), process.output()
        observer = SimObserver(ros_env)
        observers.append(observer)
        return observer, processes

    yield start_nodes
    for observer in observers:
        observer.close()
    for process in processes:
        process.stop()


def test_expert_drives_sim_over_dds(start):
    observer, processes = start(('sim_node', {'seed': 11}), ('expert_node', {}))
    assert observer.wait_for(lambda: (observer.latest_status() or {}).get('steps', 0) > 0,
                             timeout=20), processes[0].output()
    assert observer.wait_for(lambda: observer.latest_status()['tiles_visited'] >= 30,
                             timeout=30), processes[0].output() + processes[1].output()
    status = observer.latest_status()
    assert status['seed'] == 11
    assert status['score'] > 0.0
    assert not status['done']
    assert not any(s['off_track'] for s in observer.statuses)
    for process in processes:
        assert process.stop() == 0, process.output()


def test_expert_no_labels_after_episode(start):
    observer, processes = start(('sim_node', {'seed': 12, 'max_episode_steps': 60,
                                              'episode_end': 'hold'}),
                                ('expert_node', {'label_topic': 'expert/cmd_vel'}))
    assert observer.wait_for(lambda: (observer.latest_status() or {}).get('done', False),
                             timeout=30), processes[0].output() + processes[1].output()
    assert observer.wait_for(lambda: 'labels paused' in processes[1].output(), timeout=10)
    time.sleep(0.3)
    with observer._lock:
        before = len(observer.labels)
    # The car is held and frames keep coming, but no label arrives any more.
    time.sleep(1.5)
    assert len(observer.labels) == before
    assert before >= 20
    assert observer.latest_status()['done']


def test_sim_publishes_camera_imu_clock_track(start):
    observer, processes = start(('sim_node', {'seed': 2, 'image_width': 64,
                                              'image_height': 48}))
    assert observer.wait_for(lambda: len(observer.images) >= 10, timeout=20), \
        processes[0].output()
    assert observer.wait_for(lambda: len(observer.imus) >= 10, timeout=5)
    assert observer.wait_for(lambda: len(observer.clocks) >= 10, timeout=5)
    assert observer.wait_for(lambda: len(observer.tracks) == 1, timeout=5)
    image = observer.images[-1]
    assert (image.width, image.height, image.encoding) == (64, 48, 'rgb8')
    assert len(image.data) == 64 * 48 * 3
    imu = observer.imus[-1]
    assert imu.linear_acceleration.z == pytest.approx(9.80665)
    assert imu.orientation_covariance[0] == -1.0
    clocks = list(observer.clocks)
    assert all(later > earlier for earlier, later in zip(clocks, clocks[1:]))
    stamp = image.header.stamp.sec + image.header.stamp.nanosec * 1e-9
    assert stamp == pytest.approx(round(stamp / 0.02) * 0.02, abs=1e-6)
    assert len(observer.tracks[0].poses) > 100


def test_sim_brakes_when_cmd_vel_goes_stale(start):
    observer, processes = start(('sim_node', {'seed': 4, 'command_timeout': 0.3}))
    observer.wait_for(lambda: observer.latest_status() is not None, timeout=20)
    observer.drive(25.0, 0.0, seconds=2.0)
    moving = observer.latest_status()['speed']
    assert moving > 10.0, processes[0].output()
    assert observer.wait_for(lambda: observer.latest_status()['speed'] < 0.5, timeout=10)
    assert processes[0].wait_for_output('cmd_vel stale', timeout=5)


def test_expert_label_carries_odometry_stamp(start):
    observer, processes = start(('sim_node', {'seed': 6}),
                                ('expert_node', {'label_topic': 'expert/cmd_vel',
                                                 'lateral_noise_std': 8.0}))
    assert observer.wait_for(lambda: len(observer.labels) >= 30, timeout=30), \
        processes[1].output()
    stamps = [label.header.stamp.sec + label.header.stamp.nanosec * 1e-9
              for label in list(observer.labels)]
    assert all(later > earlier for earlier, later in zip(stamps, stamps[1:]))
    assert all(abs(stamp / 0.02 - round(stamp / 0.02)) < 1e-6 for stamp in stamps)
    assert observer.labels[-1].header.frame_id == 'base_link'
    assert observer.labels[-1].twist.linear.x > 0.0


def test_sim_waits_for_first_command(start):
    observer, processes = start(('sim_node', {'seed': 8, 'wait_for_command': True}))
    assert observer.wait_for(lambda: len(observer.clocks) >= 20, timeout=20), \
        processes[0].output()
    assert observer.latest_status()['steps'] == 0
    observer.drive(20.0, 0.0, seconds=1.0)
    assert observer.wait_for(lambda: observer.latest_status()['steps'] > 10, timeout=10)


def test_sim_pauses_at_step_limit(start):
    observer, processes = start(('sim_node', {'seed': 9, 'max_episode_steps': 40,
                                              'episode_end': 'pause'}))
    # The status is latched, so it arrives once discovery has matched the observer.
    assert observer.wait_for(lambda: observer.latest_status() is not None, timeout=60), \
        processes[0].output()
    observer.drive(20.0, 0.0, seconds=2.5)
    assert observer.wait_for(lambda: observer.latest_status()['steps'] == 40, timeout=20), \
        (observer.latest_status(), processes[0].output())
    images = len(observer.images)
    time.sleep(1.0)
    assert len(observer.images) == images
    assert observer.latest_status()['steps'] == 40
    assert processes[0].wait_for_output('step limit 40 reached', timeout=5)


def test_sim_reset_stamps_increase(start):
    observer, processes = start(('sim_node', {'seed': 10, 'max_episode_steps': 20,
                                              'episode_end': 'reset'}))
    assert observer.wait_for(lambda: observer.latest_status() is not None, timeout=60), \
        processes[0].output()
    observer.drive(20.0, 0.0, seconds=3.0)
    assert observer.wait_for(lambda: observer.latest_status()['episode'] >= 3, timeout=20), \
        (observer.latest_status(), processes[0].output())
    with observer._lock:
        stamps = [image.header.stamp.sec + image.header.stamp.nanosec * 1e-9
                  for image in observer.images]
    # A new track's first frame must not repeat the stamp of the old track's last one,
    # which a recorder drops as out of order.
    assert len(stamps) > 40
    assert all(later > earlier for earlier, later in zip(stamps, stamps[1:]))


def test_sim_rejects_out_of_range_noise(ros_env, tmp_path):
    process = NodeProcess(_node('sim_node', {'noise_std': 2.0}), ros_env,
                          tmp_path / 'sim_node.log')
    process.process.wait(timeout=60)
    assert process.stop() != 0
    assert 'noise_std' in process.output()
