"""policy_node keeps running and stays safe on malformed camera and IMU messages.

Each case first drives the node with valid input, then sends only malformed messages of
one kind. The node must reject them with a warning, count them, and publish zero once the
last valid message is older than its timeout. Valid input afterwards makes it drive again.
"""

import time

import numpy as np
import pytest

from liquid_control.data.images import encode_jpeg
from node_harness import NodeProcess, Peer, is_zero, make_checkpoint, node_command, sample_frame

TIMEOUT = 0.5
BAD_SECONDS = 1.8
# Slack for a valid frame published just before the malformed ones but delivered late,
# because other jobs share this machine's cores.
DELIVERY_SLACK = 0.6
FRAME = sample_frame()


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('model') / 'imu.lcm', imu_enabled=True)


def _start(ros_env, tmp_path, model, compressed):
    params = {'input_timeout': TIMEOUT, 'imu_timeout': TIMEOUT, 'compressed': compressed,
              'max_stamp_offset': 5.0, 'diagnostics_period': 0.2}
    node = NodeProcess(node_command(model, params), ros_env, tmp_path / 'node.log')
    peer = Peer(ros_env, compressed=compressed)
    assert node.wait_for_output('ready:', timeout=60), node.output()
    peer.wait_connected()
    return node, peer


def _check_rejected(node, peer, counter, fragment, send_bad):
    """Drive, send only malformed messages, check the node's reaction, drive again."""
    peer.stream(0.6)
    assert any(not is_zero(c) for c in peer.command_list()[-5:]), node.output()
    before = int(peer.latest_diagnostics().get(counter, 0))

    started = time.monotonic()
    send_bad()
    during = [c for c in peer.command_list() if c[0] > started + TIMEOUT + DELIVERY_SLACK]
    assert node.alive(), node.output()
    assert during, 'no commands while malformed input arrived'
    assert all(is_zero(c) for c in during)
    assert all(np.isfinite(c[1]) and np.isfinite(c[2]) for c in peer.command_list())
    assert fragment in node.output()
    assert peer.wait_for(
        lambda: int(peer.latest_diagnostics().get(counter, 0)) > before, 2.0)

    peer.stream(1.0)
    assert any(not is_zero(c) for c in peer.command_list()[-5:]), node.output()


def _raw(peer, encoding='rgb8', data=None, width=160, height=120, step=480, offset=0.0):
    msg = peer.image_msg(FRAME, stamp_offset=offset)
    msg.encoding, msg.width, msg.height, msg.step = encoding, width, height, step
    if data is not None:
        msg.data = data
    return msg


RAW_CASES = {
    'short data': (lambda peer, i: _raw(peer, data=FRAME.tobytes()[:-480]),
                   'image data has'),
    'long data': (lambda peer, i: _raw(peer, data=FRAME.tobytes() + bytes(480)),
                  'image data has'),
    'size for other encoding': (lambda peer, i: _raw(peer, encoding='mono8', step=160),
                                'image data has'),
    'unknown encoding': (lambda peer, i: _raw(peer, encoding='yuv422'),
                         'unsupported image encoding'),
    'stamp far in future': (lambda peer, i: _raw(peer, offset=3600.0), 'header stamp'),
    'stamp far in past': (lambda peer, i: _raw(peer, offset=-3600.0), 'header stamp'),
}


def test_raw_malformed_frames_rejected(ros_env, tmp_path, model):
    node, peer = _start(ros_env, tmp_path, model, compressed=False)
    try:
        for name, (factory, fragment) in RAW_CASES.items():
            _check_rejected(node, peer, 'invalid_frames', fragment,
                            lambda: peer.stream(BAD_SECONDS, frame_factory=lambda i: factory(
                                peer, i)))
    finally:
        assert node.stop() == 0
        peer.close()


JPEG = encode_jpeg(FRAME, 80)
# A frame header that declares 16000x16000 pixels over the data of a small frame: OpenCV
# would decode it into a grey 768 MB image, taking seconds, if the size were not checked.
_FRAME_HEADER = JPEG.index(b'\xff\xc0')
HUGE_JPEG = (JPEG[:_FRAME_HEADER + 5] + (16000).to_bytes(2, 'big') * 2
             + JPEG[_FRAME_HEADER + 9:])
COMPRESSED_CASES = {
    'jpeg declaring 16000x16000 pixels': (HUGE_JPEG, 'declares 16000x16000 pixels'),
    'truncated jpeg': (JPEG[:len(JPEG) * 2 // 3], 'truncated'),
    'corrupt jpeg': (JPEG[:20] + bytes(len(JPEG) - 22) + JPEG[-2:], 'cannot decode'),
    'not an image': (b'hello world, not an image' * 10, 'neither JPEG nor PNG'),
    'empty': (b'', 'empty'),
}


def test_compressed_malformed_frames_rejected(ros_env, tmp_path, model):
    node, peer = _start(ros_env, tmp_path, model, compressed=True)
    try:
        for name, (data, fragment) in COMPRESSED_CASES.items():
            _check_rejected(node, peer, 'invalid_frames', fragment,
                            lambda: peer.stream(BAD_SECONDS, frame_factory=lambda i: (
                                peer.compressed_msg(data))))
    finally:
        assert node.stop() == 0
        peer.close()


IMU_CASES = {
    'nan': ((float('nan'), 0.0, 0.0, 0.0, 0.0, 9.81), 0.0),
    'inf': ((0.0, 0.0, 0.0, float('inf'), 0.0, 9.81), 0.0),
    'stamp far in future': ((0.0, 0.0, 0.0, 0.0, 0.0, 9.81), 3600.0),
}


def test_malformed_imu_rejected(ros_env, tmp_path, model):
    node, peer = _start(ros_env, tmp_path, model, compressed=False)

    def send_bad_imu(values, offset):
        start = time.monotonic()
        while time.monotonic() - start < BAD_SECONDS:
            peer.publish_frame(FRAME)
            for _ in range(5):
                peer.imu_pub.publish(peer.imu_msg(values, stamp_offset=offset))
            time.sleep(0.05)

    try:
        for name, (values, offset) in IMU_CASES.items():
            _check_rejected(node, peer, 'invalid_imu', 'IMU message rejected',
                            lambda: send_bad_imu(values, offset))
    finally:
        assert node.stop() == 0
        peer.close()
