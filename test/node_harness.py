"""Helpers for tests that run policy_node as a real process and talk to it over DDS.

The test process joins the child's DDS domain through its own rclpy context, publishes
camera and IMU messages like a driver would and records what the node publishes.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY_YAML = REPO_ROOT / 'config' / 'policy.yaml'


def make_checkpoint(path: Path, imu_enabled: bool = True, **config) -> Path:
    """Save an untrained policy checkpoint (random weights, small input) to ``path``."""
    from liquid_control.model.checkpoint import save_checkpoint
    from liquid_control.model.policy import PolicyConfig, build_policy

    policy = build_policy(PolicyConfig(imu_enabled=imu_enabled, **config))
    save_checkpoint(path, policy, {'source': 'test fixture, untrained'})
    return path


def node_command(model: Path, params: Optional[Dict[str, object]] = None,
                 remaps: Sequence[str] = (), params_file: Path = POLICY_YAML,
                 extra: Sequence[str] = ()) -> List[str]:
    """Return the command line that starts policy_node with parameters and remappings."""
    command = [sys.executable, '-m', 'liquid_control.nodes.policy_node', '--ros-args',
               '--params-file', str(params_file), '-p', f'model_path:={model}']
    for name, value in (params or {}).items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        command += ['-p', f'{name}:={text}']
    for remap in remaps:
        command += ['-r', remap]
    return command + list(extra)


class NodeProcess:
    """policy_node running as a child process, with its output captured in a file."""

    def __init__(self, command: List[str], env: dict, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open('w')
        self.process = subprocess.Popen(command, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_for_output(self, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.process.poll() is not None:
                return text in self.output()
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class Peer:
    """An rclpy node in the test process on the child's domain: sensors in, commands out."""

    def __init__(self, env: dict, stamped: bool = False, compressed: bool = False,
                 namespace: str = '', image_topic: str = 'image_raw',
                 cmd_vel_topic: str = 'cmd_vel', imu_topic: str = 'imu/data',
                 sensor_reliable: bool = False) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Twist, TwistStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image, Imu

        from liquid_control.nodes.dds import apply_large_frame_profile
        from liquid_control.nodes.qos import sensor_qos

        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        apply_large_frame_profile()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(env['ROS_DOMAIN_ID']))
        self.node = rclpy.create_node('test_peer', namespace=namespace or None,
                                      context=self.context)
        self.compressed = compressed
        self.commands: List[tuple] = []  # (arrival monotonic, linear_x, angular_z, msg)
        self.diagnostics: List[dict] = []
        self._lock = threading.Lock()
        qos = sensor_qos('reliable' if sensor_reliable else 'best_effort')
        if compressed:
            self.image_pub = self.node.create_publisher(
                CompressedImage, image_topic + '/compressed', qos)
        else:
            self.image_pub = self.node.create_publisher(Image, image_topic, qos)
        self.imu_pub = self.node.create_publisher(Imu, imu_topic, qos)
        self.command_sub = self.node.create_subscription(
            TwistStamped if stamped else Twist, cmd_vel_topic, self._on_command,
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_command(self, msg) -> None:
        twist = getattr(msg, 'twist', msg)
        with self._lock:
            self.commands.append((time.monotonic(), twist.linear.x, twist.angular.z, msg))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith('policy_node'):
                values = {kv.key: kv.value for kv in status.values}
                values['_message'] = status.message
                with self._lock:
                    self.diagnostics.append(values)

    def command_list(self) -> List[tuple]:
        with self._lock:
            return list(self.commands)

    def latest_diagnostics(self) -> dict:
        with self._lock:
            return dict(self.diagnostics[-1]) if self.diagnostics else {}

    def wait_connected(self, timeout: float = 30.0, imu: bool = True) -> None:
        """Wait until the node subscribes to our sensors and publishes commands."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = (self.image_pub.get_subscription_count() > 0
                     and (not imu or self.imu_pub.get_subscription_count() > 0)
                     and self.command_sub.get_publisher_count() > 0)
            if ready:
                return
            time.sleep(0.05)
        pytest.fail(f'policy_node did not connect within {timeout} s')

    def now_stamp(self, offset: float = 0.0):
        from builtin_interfaces.msg import Time
        nanoseconds = self.node.get_clock().now().nanoseconds + int(offset * 1e9)
        return Time(sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9)

    def image_msg(self, rgb: np.ndarray, stamp_offset: float = 0.0):
        from sensor_msgs.msg import Image
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                    step=rgb.shape[1] * 3)
        msg.data = rgb.tobytes()
        msg.header.stamp = self.now_stamp(stamp_offset)
        msg.header.frame_id = 'camera'
        return msg

    def compressed_msg(self, data: bytes, stamp_offset: float = 0.0, format_name='jpeg'):
        from sensor_msgs.msg import CompressedImage
        msg = CompressedImage(format=format_name)
        msg.data = data
        msg.header.stamp = self.now_stamp(stamp_offset)
        return msg

    def publish_frame(self, rgb: np.ndarray) -> None:
        if self.compressed:
            from liquid_control.data.images import encode_jpeg
            self.image_pub.publish(self.compressed_msg(encode_jpeg(rgb, 80)))
        else:
            self.image_pub.publish(self.image_msg(rgb))

    def imu_msg(self, values=(0.0, 0.0, 0.1, 0.0, 0.0, 9.81), stamp_offset: float = 0.0):
        from sensor_msgs.msg import Imu
        msg = Imu()
        msg.header.stamp = self.now_stamp(stamp_offset)
        (msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z,
         msg.linear_acceleration.x, msg.linear_acceleration.y,
         msg.linear_acceleration.z) = [float(v) for v in values]
        return msg

    def stream(self, seconds: float, frame_rate: float = 20.0, imu_rate: float = 100.0,
               frame: Optional[np.ndarray] = None, imu: bool = True,
               frame_factory: Optional[Callable[[int], object]] = None) -> int:
        """Publish frames (and IMU) for ``seconds`` at the given rates; return frames sent."""
        frame = sample_frame() if frame is None else frame
        start = time.monotonic()
        next_frame, next_imu, sent = start, start, 0
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            if now >= next_frame:
                if frame_factory is not None:
                    self.image_pub.publish(frame_factory(sent))
                else:
                    self.publish_frame(frame)
                sent += 1
                next_frame += 1.0 / frame_rate
            if imu and now >= next_imu:
                self.imu_pub.publish(self.imu_msg())
                next_imu += 1.0 / imu_rate
            time.sleep(max(0.0, min(next_frame, next_imu if imu else next_frame)
                           - time.monotonic()))
        return sent

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def sample_frame(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """Return a reproducible RGB test frame with texture."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def is_zero(command: tuple) -> bool:
    return command[1] == 0.0 and command[2] == 0.0
