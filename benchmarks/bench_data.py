"""Data benchmarks: the recorder under a sustained camera + IMU load, and import speed.

Recorder: recorder_node runs as a child process pinned to one CPU. This process, on the
other CPU when there is one, publishes a 640x480 camera at 30 Hz, IMU at 200 Hz and a
Twist per frame over real DDS on loopback for ``--seconds``. It then stops the node with
SIGTERM and counts what reached the disk. Frames lost in DDS (never received) and frames
dropped by the recorder (received but not written) are reported apart, and so is the
recorder's CPU time per written frame, which estimates the rate one dedicated core
sustains when the core is shared with other work.

    .venv/bin/python benchmarks/bench_data.py recorder --seconds 60 --input raw \\
        --raw-format png --png-compression 0
    .venv/bin/python benchmarks/bench_data.py import --repeat 3

Import: frames per second for each source format (donkeycar tub, rosbag2 sqlite3 with
JPEG frames, rosbag2 MCAP with raw mono frames, ROS 1 bag written from the sqlite3 bag).
Two references are measured in the same run: reading the same frames from the source
without writing episodes, and, right after each import, writing its stored frame files
alone (one new file a frame), which bounds the import on a busy file system. CPU time
per frame is reported too, because file creation time varied tenfold on the shared test
machine. ``--json FILE`` stores every
number.
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
from typing import Dict, List

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'


# ------------------------------------------------------------------------ recorder

def _cpus() -> List[int]:
    return sorted(os.sched_getaffinity(0))


def _start_recorder(output_dir: Path, args, env: dict, cpu: int, log_path: Path):
    command = [sys.executable, '-m', 'liquid_control.nodes.recorder_node', '--ros-args',
               '--params-file', str(REPO_ROOT / 'config' / 'recorder.yaml'),
               '-p', f'output_dir:={output_dir}', '-p', 'autostart:=true',
               '-p', f'compressed:={str(args.input == "compressed").lower()}',
               '-p', f'raw_image_format:={args.raw_format}',
               '-p', f'png_compression:={args.png_compression}',
               '-p', f'sensor_reliability:={args.reliability}',
               '-p', 'min_free_disk_mb:=100.0']
    log = open(log_path, 'w')
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    return process, log


def _camera_frames(width: int, height: int, count: int = 8) -> List[np.ndarray]:
    """Return textured frames (smooth gradients plus sensor-like noise) to cycle through."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        base = np.stack([(x + 7 * i) % 256, (y + 3 * i) % 256, (x + y) // 4 % 256], axis=2)
        noise = rng.integers(-4, 5, base.shape)
        frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return frames


def run_recorder_benchmark(args) -> dict:
    import rclpy
    from geometry_msgs.msg import Twist
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, Image, Imu

    from liquid_control.data.episodes import find_episodes
    from liquid_control.data.images import encode_jpeg
    from liquid_control.nodes.dds import apply_large_frame_profile
    from liquid_control.nodes.qos import command_qos, sensor_qos

    cpus = _cpus()
    recorder_cpu = cpus[0]
    publisher_cpus = set(cpus[1:]) or {cpus[0]}
    env = dict(os.environ, ROS_DOMAIN_ID=str(args.domain_id),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1')
    os.environ.update(ROS_DOMAIN_ID=env['ROS_DOMAIN_ID'],
                      ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    apply_large_frame_profile()
    os.sched_setaffinity(0, publisher_cpus)

    work = Path(tempfile.mkdtemp(prefix='bench_recorder_', dir=args.work_dir))
    output_dir = work / 'data'
    process, log = _start_recorder(output_dir, args, env, recorder_cpu, work / 'recorder.log')

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=args.domain_id)
    node = rclpy.create_node('bench_teacher', context=context)
    sensor = sensor_qos(args.reliability)
    if args.input == 'compressed':
        image_pub = node.create_publisher(CompressedImage, 'image_raw/compressed', sensor)
    else:
        image_pub = node.create_publisher(Image, 'image_raw', sensor)
    imu_pub = node.create_publisher(Imu, 'imu/data', sensor)
    command_pub = node.create_publisher(Twist, 'cmd_vel', command_qos())
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            image_pub.get_subscription_count() and imu_pub.get_subscription_count()
            and command_pub.get_subscription_count()):
        time.sleep(0.05)
    time.sleep(0.5)

    frames = _camera_frames(args.width, args.height)
    messages = []
    for rgb in frames:
        if args.input == 'compressed':
            message = CompressedImage(format='jpeg')
            message.data = encode_jpeg(rgb, 90)
        else:
            message = Image(height=args.height, width=args.width, encoding='rgb8',
                            step=args.width * 3)
            message.data = rgb.tobytes()
        messages.append(message)

    def stamp(nanoseconds):
        from builtin_interfaces.msg import Time
        return Time(sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9)

    imu_message = Imu()
    imu_message.linear_acceleration.z = 9.81
    twist = Twist()
    twist.linear.x = 0.5
    frame_period = 1.0 / args.fps
    imu_period = 1.0 / args.imu_hz
    start = time.monotonic()
    next_frame, next_imu = start, start
    published = 0
    late_frames = 0
    while True:
        now = time.monotonic()
        if now - start >= args.seconds:
            break
        if now >= next_imu:
            imu_message.header.stamp = stamp(node.get_clock().now().nanoseconds)
            imu_pub.publish(imu_message)
            next_imu += imu_period
        if now >= next_frame:
            if now - next_frame > frame_period:
                late_frames += 1
            message = messages[published % len(messages)]
            message.header.stamp = stamp(node.get_clock().now().nanoseconds)
            image_pub.publish(message)
            command_pub.publish(twist)
            published += 1
            next_frame += frame_period
        time.sleep(max(0.0, min(next_frame, next_imu) - time.monotonic()))
    elapsed = time.monotonic() - start

    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    executor.shutdown(timeout_sec=2.0)
    node.destroy_node()
    context.try_shutdown()

    output = (work / 'recorder.log').read_text()
    stopped = [line for line in output.splitlines() if 'stopped:' in line]
    dropped = None
    if stopped:
        # "stopped: N frames written, M dropped, K episode(s) finished"
        dropped = int(stopped[-1].split('written, ')[1].split(' dropped')[0])
    episodes = find_episodes(output_dir)
    written = sum(len(e) for e in episodes)
    valid = sum(int(e.valid.sum()) for e in episodes)
    with_imu = sum(int((e.imu_status != 'missing').sum()) for e in episodes)
    cpu_s = usage.ru_utime + usage.ru_stime
    disk_bytes = sum(f.stat().st_size for f in output_dir.rglob('*') if f.is_file())
    result = {
        'input': args.input, 'raw_format': args.raw_format,
        'png_compression': args.png_compression, 'reliability': args.reliability,
        'size': f'{args.width}x{args.height}', 'fps': args.fps, 'imu_hz': args.imu_hz,
        'seconds': round(elapsed, 2), 'published': published,
        'publisher_late_frames': late_frames, 'written': written,
        'recorder_dropped': dropped, 'lost_in_dds': published - written - (dropped or 0),
        'valid_rows': valid, 'rows_with_imu': with_imu, 'episodes': len(episodes),
        'recorder_cpu_s': round(cpu_s, 2),
        'recorder_cpu_fraction': round(cpu_s / elapsed, 3),
        # An estimate for a dedicated core: frames per CPU second the recorder used,
        # start-up and shutdown included.
        'recorder_cpu_ms_per_frame': round(1000 * cpu_s / max(written, 1), 2),
        'estimated_max_fps_one_core': round(written / cpu_s, 1) if cpu_s else None,
        'disk_mib_per_s': round(disk_bytes / 2**20 / elapsed, 2),
        'exit_code': process.returncode, 'recorder_cpu': recorder_cpu,
        'load_average_1min': os.getloadavg()[0],
    }
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    else:
        result['work_dir'] = str(work)
    return result


# -------------------------------------------------------------------------- import

def _best_rate(function, frames: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return frames / min(times)


def _write_ros1_copy(source: Path, target: Path) -> None:
    """Write the frames and commands of a rosbag2 into a ROS 1 bag with rosbags."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ros1 = get_typestore(Stores.ROS1_NOETIC)
    with AnyReader([source], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader, \
            Writer(target) as writer:
        connections = {}
        for connection, timestamp, raw in reader.messages():
            message = reader.deserialize(raw, connection.msgtype)
            if connection.msgtype == 'sensor_msgs/msg/CompressedImage':
                header = ros1.types['std_msgs/msg/Header'](
                    seq=0, stamp=message.header.stamp, frame_id=message.header.frame_id)
                message = ros1.types[connection.msgtype](header=header, format=message.format,
                                                         data=message.data)
            if connection.topic not in connections:
                connections[connection.topic] = writer.add_connection(
                    connection.topic, connection.msgtype, typestore=ros1)
            writer.write(connections[connection.topic], timestamp,
                         ros1.serialize_ros1(message, connection.msgtype))


def _time_file_writes(contents: List[bytes], folder: Path) -> float:
    """Return the seconds taken to write each content into a new file of ``folder``."""
    import shutil
    folder.mkdir(parents=True)
    started = time.perf_counter()
    for index, data in enumerate(contents):
        with open(folder / f'{index:06d}', 'wb') as stream:
            stream.write(data)
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder)
    return elapsed


def run_import_benchmark(args) -> dict:
    import shutil

    from liquid_control.data.bags import BagReader
    from liquid_control.data.episodes import find_episodes
    from liquid_control.data.sources import import_source
    from liquid_control.data.sync import LabelOptions
    from liquid_control.data.tub import read_tub

    if not SHARED_DATA.is_dir():
        raise SystemExit(f'sample data not found at {SHARED_DATA}')
    work = Path(tempfile.mkdtemp(prefix='bench_import_', dir=args.work_dir))
    tub = SHARED_DATA / 'donkey_indoor_train_tub'
    sqlite_bag = SHARED_DATA / 'donkey_indoor_train_bag'
    mcap_bag = SHARED_DATA / 'euroc_v101_micro'
    ros1_bag = work / 'donkey.bag'
    _write_ros1_copy(sqlite_bag, ros1_bag)

    def read_bag(path, topic):
        def read():
            with BagReader(path) as bag:
                for _ in bag.messages(topic):
                    pass
        return read

    def read_tub_images():
        for record in read_tub(tub):
            record.image_path.read_bytes()

    cases = [
        ('donkeycar_tub', tub, LabelOptions(), read_tub_images),
        ('rosbag2_sqlite3_jpeg', sqlite_bag, LabelOptions(),
         read_bag(sqlite_bag, '/camera/image_raw/compressed')),
        ('ros1_bag_jpeg', ros1_bag, LabelOptions(),
         read_bag(ros1_bag, '/camera/image_raw/compressed')),
        ('rosbag2_mcap_raw_mono_png', mcap_bag, LabelOptions(require_commands=False),
         read_bag(mcap_bag, '/cam0/image_raw')),
        ('rosbag2_mcap_raw_mono_jpeg', mcap_bag,
         LabelOptions(require_commands=False, raw_image_format='jpeg'),
         read_bag(mcap_bag, '/cam0/image_raw')),
    ]
    results: Dict[str, dict] = {}
    for name, source, options, reference in cases:
        import_times, cpu_times, ratios = [], [], []
        frames = 0
        for attempt in range(args.repeat):
            out = work / f'{name}_{attempt}'
            started, started_cpu = time.perf_counter(), time.process_time()
            import_source(source, out, options)
            import_times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - started_cpu)
            stored = [path.read_bytes() for path in sorted(out.glob('*/frames/*'))]
            frames = len(stored)
            # Timed right after the import, so both see the same file-system load.
            write_time = _time_file_writes(stored, work / f'{name}_copy_{attempt}')
            ratios.append(write_time / import_times[-1])
            shutil.rmtree(out)
        import_rate = frames / min(import_times)
        cpu_rate = frames / min(cpu_times)
        ratio = float(np.median(ratios))
        read_rate = _best_rate(reference, frames, args.repeat)
        results[name] = {'frames': frames, 'import_frames_per_s': round(import_rate, 1),
                         'import_frames_per_cpu_s': round(cpu_rate, 1),
                         'read_only_frames_per_s': round(read_rate, 1),
                         'import_over_file_writes_median': round(ratio, 3)}
        print(f'{name}: {frames} frames, import {import_rate:.0f} frames/s '
              f'({cpu_rate:.0f} per CPU second); reading the source alone {read_rate:.0f} '
              f'frames/s; import speed / writing the frame files alone: {ratio:.2f} '
              '(median of the runs)', flush=True)

    # Training reads: random 16-frame windows from the imported tub, decoded with OpenCV.
    out = work / 'windows'
    import_source(tub, out, LabelOptions())
    episodes = find_episodes(out)
    windows = [(e, w) for e in episodes for w in e.windows(16, stride=4)]
    rng = np.random.default_rng(0)
    picks = [windows[i] for i in rng.choice(len(windows), size=min(200, len(windows)),
                                            replace=False)]
    started = time.perf_counter()
    for episode, window in picks:
        episode.load_frames(window)
    window_rate = len(picks) / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(5):
        find_episodes(out)
    reopen_s = (time.perf_counter() - started) / 5
    results['training_windows'] = {'windows_per_s': round(window_rate, 1),
                                   'frames_per_s': round(window_rate * 16, 1),
                                   'reopen_dataset_ms': round(reopen_s * 1000, 2)}
    print(f'training windows (16 frames, 160x120 JPEG): {window_rate:.0f} windows/s; '
          f'reopening the 3-episode dataset (cached tables): {reopen_s * 1000:.1f} ms',
          flush=True)
    shutil.rmtree(work, ignore_errors=True)
    results['load_average_1min'] = os.getloadavg()[0]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--json', type=Path, help='write the results to this JSON file')
    parser.add_argument('--work-dir', default=None, help='folder for temporary output '
                        '(default: the system temporary folder)')
    actions = parser.add_subparsers(dest='benchmark', required=True)
    recorder = actions.add_parser('recorder', help='sustained camera + IMU into the recorder')
    recorder.add_argument('--seconds', type=float, default=60.0)
    recorder.add_argument('--fps', type=float, default=30.0, help='camera rate (Hz)')
    recorder.add_argument('--imu-hz', type=float, default=200.0, help='IMU rate (Hz)')
    recorder.add_argument('--width', type=int, default=640)
    recorder.add_argument('--height', type=int, default=480)
    recorder.add_argument('--input', choices=('raw', 'compressed'), default='raw',
                          help='sensor_msgs/Image (rgb8) or CompressedImage (JPEG q90)')
    recorder.add_argument('--raw-format', choices=('png', 'jpeg'), default='png')
    recorder.add_argument('--png-compression', type=int, default=1)
    recorder.add_argument('--reliability', choices=('best_effort', 'reliable'),
                          default='best_effort')
    recorder.add_argument('--domain-id', type=int, default=90)
    recorder.add_argument('--keep', action='store_true', help='keep the recorded episodes')
    importer = actions.add_parser('import', help='import throughput per source format')
    importer.add_argument('--repeat', type=int, default=3,
                          help='runs per case; the fastest counts')
    args = parser.parse_args()

    if args.benchmark == 'recorder':
        result = run_recorder_benchmark(args)
        print(json.dumps(result, indent=2))
    else:
        result = run_import_benchmark(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
