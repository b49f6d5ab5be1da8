"""Benchmark policy_node end to end: 640x480 camera at 30 Hz and IMU at 200 Hz over DDS.

One run measures, on this machine and at the same time:
- the bare DDS delivery time of each camera frame, seen by a probe process that only
  subscribes to the camera topic (the reference);
- the latency from publishing a frame to receiving the first command computed from it.
  The node runs with TwistStamped and ``command_stamp: frame``, so a command names its
  frame. With a fixed-rate timer this includes waiting for the next tick;
- the node's own step latency (tick to publish: decode, preprocess, inference), its
  deadline misses and its CPU use, and the control-period jitter of arriving commands;
- the model step alone in this process, with one torch thread.

    .venv/bin/python benchmarks/bench_node.py --seconds 20 [--model M.lcm] [--json OUT]

The node is pinned to one core (``--cpu``) and uses one torch thread. Other processes on
the machine change the numbers, so the script prints the load average with them.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CAMERA_TOPIC = '/bench/image_raw'
IMU_TOPIC = '/bench/imu'
COMMAND_TOPIC = '/bench/cmd_vel'


def percentiles(values, qs=(50, 99)) -> dict:
    if len(values) == 0:
        return {f'p{q}': None for q in qs}
    return {f'p{q}': round(float(np.percentile(values, q)), 3) for q in qs}


def run_probe(output: Path, seconds: float) -> None:
    """Subscribe to the camera only and write each frame's delivery time in ms."""
    import rclpy
    from sensor_msgs.msg import Image

    from liquid_control.nodes.dds import apply_large_frame_profile
    from liquid_control.nodes.qos import sensor_qos

    apply_large_frame_profile()
    rclpy.init()
    node = rclpy.create_node('bench_probe')
    delays = []

    def on_image(msg) -> None:
        received = time.time()
        delays.append((received - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))
                      * 1e3)

    node.create_subscription(Image, CAMERA_TOPIC, on_image, sensor_qos())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    output.write_text(json.dumps(delays))
    node.destroy_node()
    rclpy.shutdown()


def measure_model_step(model: Path, steps: int = 300) -> dict:
    """Return p50/p99 of PolicyRunner.step_preprocessed in ms with one torch thread."""
    import torch

    from liquid_control.inference import load_runner

    torch.set_num_threads(1)
    runner = load_runner(model)
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    frame = runner.preprocess(rgb)
    imu = np.zeros(6, np.float32)
    times = []
    for index in range(steps + 20):
        started = time.perf_counter()
        runner.step_preprocessed(frame, imu, 0.05)
        if index >= 20:
            times.append((time.perf_counter() - started) * 1e3)
    return percentiles(times)


def cpu_seconds(pid: int) -> float:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def make_model(folder: Path) -> Path:
    from liquid_control.model.checkpoint import save_checkpoint
    from liquid_control.model.policy import PolicyConfig, build_policy

    path = folder / 'bench.lcm'
    save_checkpoint(path, build_policy(PolicyConfig(imu_enabled=True)),
                    {'source': 'benchmark, untrained'})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=float, default=20.0, help='measured duration')
    parser.add_argument('--model', type=Path, help='checkpoint; default: an untrained NCP')
    parser.add_argument('--control-rate', type=float, default=20.0, help='control rate, Hz')
    parser.add_argument('--camera-rate', type=float, default=30.0, help='camera rate, Hz')
    parser.add_argument('--imu-rate', type=float, default=200.0, help='IMU rate, Hz')
    parser.add_argument('--cpu', type=int, default=0, help='core the node is pinned to')
    parser.add_argument('--json', type=Path, help='also write the results to this file')
    parser.add_argument('--probe', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        run_probe(args.probe, args.seconds)
        return 0

    import rclpy
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, Imu

    from liquid_control.nodes.dds import apply_large_frame_profile
    from liquid_control.nodes.qos import sensor_qos

    work = Path(tempfile.mkdtemp(prefix='bench_node_'))
    model = args.model or make_model(work)
    model_step = measure_model_step(model)

    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1')
    env.setdefault('ROS_DOMAIN_ID', '42')
    os.environ.update(env)
    apply_large_frame_profile()
    node_log = (work / 'policy_node.log').open('w')
    node = subprocess.Popen(
        [sys.executable, '-m', 'liquid_control.nodes.policy_node', '--ros-args',
         '--params-file', str(REPO_ROOT / 'config' / 'policy.yaml'),
         '-p', f'model_path:={model}', '-p', f'control_rate_hz:={args.control_rate}',
         '-p', 'twist_stamped:=true', '-p', 'command_stamp:=frame', '-p', 'num_threads:=1',
         '-p', 'diagnostics_period:=0.5',
         '-r', f'image_raw:={CAMERA_TOPIC}', '-r', f'imu/data:={IMU_TOPIC}',
         '-r', f'cmd_vel:={COMMAND_TOPIC}'], env=env, stdout=node_log, stderr=subprocess.STDOUT)
    os.sched_setaffinity(node.pid, {args.cpu})
    probe_file = work / 'probe.json'
    probe = subprocess.Popen([sys.executable, __file__, '--probe', str(probe_file),
                              '--seconds', str(args.seconds + 15)], env=env)

    rclpy.init()
    peer = rclpy.create_node('bench_driver')
    camera_pub = peer.create_publisher(Image, CAMERA_TOPIC, sensor_qos())
    imu_pub = peer.create_publisher(Imu, IMU_TOPIC, sensor_qos())
    published = {}  # (sec, nanosec) -> wall time of publication
    arrivals = []  # (wall time, stamp)
    diagnostics = {}

    def on_command(msg) -> None:
        arrivals.append((time.time(), (msg.header.stamp.sec, msg.header.stamp.nanosec)))

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name.startswith('policy_node'):
                diagnostics.update({kv.key: kv.value for kv in status.values})

    command_sub = peer.create_subscription(
        TwistStamped, COMMAND_TOPIC, on_command,
        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    peer.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            camera_pub.get_subscription_count() >= 2 and imu_pub.get_subscription_count() >= 1
            and command_sub.get_publisher_count() >= 1):
        time.sleep(0.1)

    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    image = Image(height=480, width=640, encoding='rgb8', step=640 * 3)
    image.data = rgb.tobytes()
    imu = Imu()
    imu.linear_acceleration.z = 9.81

    def stamp_now() -> Time:
        now = time.time_ns()
        return Time(sec=now // 10**9, nanosec=now % 10**9)

    def publish_loop(seconds: float, measured: bool) -> None:
        start = time.monotonic()
        next_frame, next_imu = start, start
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            if now >= next_imu:
                imu.header.stamp = stamp_now()
                imu_pub.publish(imu)
                next_imu += 1.0 / args.imu_rate
            if now >= next_frame:
                image.header.stamp = stamp_now()
                if measured:
                    published[(image.header.stamp.sec, image.header.stamp.nanosec)] = \
                        time.time()
                camera_pub.publish(image)
                next_frame += 1.0 / args.camera_rate
            time.sleep(max(0.0, min(next_frame, next_imu) - time.monotonic()))

    publish_loop(3.0, measured=False)  # warm-up: first steps, discovery, caches
    arrivals.clear()
    misses_before = int(diagnostics.get('deadline_misses', 0))
    dropped_before = int(diagnostics.get('dropped_frames', 0))
    cpu_before, wall_before = cpu_seconds(node.pid), time.monotonic()
    load_before = os.getloadavg()[0]
    publish_loop(args.seconds, measured=True)
    cpu_use = (cpu_seconds(node.pid) - cpu_before) / (time.monotonic() - wall_before)
    time.sleep(1.2)  # let the last commands and a diagnostics message arrive

    node.send_signal(signal.SIGINT)
    node.wait(timeout=15)
    probe.wait(timeout=30)
    executor.shutdown(timeout_sec=5.0)
    spinner.join(timeout=5.0)
    peer.destroy_node()
    rclpy.try_shutdown()

    delivery = [d for d in json.loads(probe_file.read_text())]
    first_use = {}
    for arrived, stamp in arrivals:
        if stamp in published and stamp not in first_use:
            first_use[stamp] = (arrived - published[stamp]) * 1e3
    latencies = list(first_use.values())
    times = np.array([arrived for arrived, _ in arrivals])
    period = 1.0 / args.control_rate
    jitter = np.abs(np.diff(times) - period) * 1e3 if len(times) > 1 else []
    results = {
        'load_average_1min': round(load_before, 2),
        'model_step_ms': model_step,
        'image_delivery_ms': percentiles(delivery),
        'frame_to_command_ms': percentiles(latencies),
        'node_step_ms': {'p50': float(diagnostics.get('step_latency_p50_ms', 'nan')),
                         'p99': float(diagnostics.get('step_latency_p99_ms', 'nan'))},
        'period_jitter_ms': percentiles(jitter),
        'period_jitter_p99_percent': (round(float(np.percentile(jitter, 99)) / period / 10, 2)
                                      if len(jitter) else None),
        'command_rate_hz': round((len(times) - 1) / (times[-1] - times[0]), 3)
        if len(times) > 1 else None,
        'deadline_misses': int(diagnostics.get('deadline_misses', 0)) - misses_before,
        'dropped_frames': int(diagnostics.get('dropped_frames', 0)) - dropped_before,
        'node_cpu_percent': round(cpu_use * 100, 1),
        'frames_published': len(published),
        'frames_used': len(first_use),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
