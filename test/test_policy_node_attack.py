"""policy_node as a real process under runtime changes and timing faults.

Covers limits lowered while the robot moves, control-rate changes, a simulated clock that
stops, and a process that is paused (CPU starvation) while it drives.
"""

import re
import signal
import sys
import time

import pytest
import test_policy_node
from node_harness import is_zero, node_command, sample_frame

# The fixtures of the policy node tests: a node and peer launcher, and a model with IMU.
launch = test_policy_node.launch
model = test_policy_node.model

RELAXED = {'input_timeout': 1.0, 'imu_timeout': 1.0}

# Runs policy_node with PolicyRunner.step_preprocessed wrapped to print the dt that each
# policy step gets and the wall time since the previous policy step.
DT_LOGGING_NODE = '''
import sys
import time

from liquid_control import inference
from liquid_control.nodes.policy_node import main

step = inference.PolicyRunner.step_preprocessed
previous = []


def logged_step(self, frame, imu, dt):
    now = time.monotonic()
    if previous:
        print(f'policy step: dt {dt:.4f} s, wall {now - previous[-1]:.4f} s', flush=True)
    previous.append(now)
    return step(self, frame, imu, dt)


inference.PolicyRunner.step_preprocessed = logged_step
sys.exit(main())
'''


def _set_doubles(peer, values):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    parameters = [Parameter(name=name, value=ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE, double_value=value))
        for name, value in values.items()]
    client = peer.node.create_client(SetParameters, '/policy_node/set_parameters')
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(SetParameters.Request(parameters=parameters))
    assert peer.wait_for(future.done, 10.0), 'set_parameters did not respond'
    return future.result().results


def test_lowered_limits_apply_at_once(launch, model):
    # Scaled outputs saturate at the limits, and the slew-rate limits need 5 s from there
    # to zero.
    params = dict(RELAXED, linear_scale=100.0, angular_scale=100.0, max_linear_x=0.5,
                  max_angular_z=1.0, max_linear_accel=0.1, max_angular_accel=0.2)
    node, peer = launch(model, params)
    peer.stream(6.0)
    last = peer.command_list()[-1]
    assert abs(last[1]) == pytest.approx(0.5), node.output()
    assert abs(last[2]) == pytest.approx(1.0), node.output()

    results = _set_doubles(peer, {'max_linear_x': 0.0, 'max_angular_z': 0.0})
    assert all(result.successful for result in results)
    changed = time.monotonic()
    peer.stream(1.0)
    # Commands published before the change may still arrive in the first 0.2 s.
    after = [c for c in peer.command_list() if c[0] > changed + 0.2]
    assert after, node.output()
    assert all(is_zero(c) for c in after), after[:3]


def test_control_rate_change_applies_at_once(launch, model):
    node, peer = launch(model, dict(RELAXED, control_rate_hz=0.1))
    peer.stream(1.0)
    results = _set_doubles(peer, {'control_rate_hz': 20.0})
    assert results[0].successful
    changed = time.monotonic()
    peer.stream(1.5)
    after = [c for c in peer.command_list() if c[0] > changed]
    # At 20 Hz about 30 commands; the old 10 s period would give none.
    assert len(after) >= 15, node.output()


def test_stopped_sim_clock_warns_and_stops(launch, model):
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    params = dict(RELAXED, use_sim_time=True, max_stamp_offset=0.0)
    node, peer = launch(model, params, wait=False)
    clock_pub = peer.node.create_publisher(Clock, '/clock', 10)
    assert node.wait_for_output('ready:', timeout=60), node.output()
    peer.wait_connected()

    begin = time.monotonic()
    while time.monotonic() - begin < 2.0:
        seconds = 100.0 + time.monotonic() - begin
        stamp = Time(sec=int(seconds), nanosec=int(seconds % 1 * 1e9))
        clock_pub.publish(Clock(clock=stamp))
        frame = peer.image_msg(sample_frame())
        frame.header.stamp = stamp
        peer.image_pub.publish(frame)
        imu = peer.imu_msg()
        imu.header.stamp = stamp
        peer.imu_pub.publish(imu)
        time.sleep(0.01)
    assert any(not is_zero(c) for c in peer.command_list()), node.output()

    stopped = time.monotonic()
    peer.stream(3.0)  # the camera and IMU go on, /clock does not
    assert 'no control tick for' in node.output()
    assert 'check that /clock is published' in node.output()
    after = [c for c in peer.command_list() if c[0] > stopped]
    assert after, node.output()
    assert is_zero(after[-1])


def test_paused_process_time_reaches_policy(launch, model, tmp_path):
    script = tmp_path / 'dt_logging_node.py'
    script.write_text(DT_LOGGING_NODE)
    command = node_command(model, RELAXED)
    command[1:3] = [str(script)]
    assert command[0] == sys.executable
    node, peer = launch(model, RELAXED, command=command)
    peer.stream(1.0)
    for _ in range(3):
        # A paused process stands for CPU starvation: the first tick after it is late.
        node.process.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        node.process.send_signal(signal.SIGCONT)
        peer.stream(0.6)

    steps = [(float(dt), float(wall)) for dt, wall in
             re.findall(r'policy step: dt ([\d.]+) s, wall ([\d.]+) s', node.output())]
    after_pause = [(dt, wall) for dt, wall in steps if wall > 0.2]
    assert len(after_pause) >= 3, node.output()
    for dt, wall in after_pause:
        assert dt > 0.8 * wall, (dt, wall)
