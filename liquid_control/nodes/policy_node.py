"""ROS 2 node that drives a robot with a liquid policy: camera and IMU in, cmd_vel out.

Threading: a SingleThreadedExecutor runs every callback. The camera and IMU callbacks only
store the newest message. The control timer only hands its tick to a worker thread
(``StepWorker``), which decodes the newest frame, steps the policy over the elapsed time on
the ROS clock and publishes the command. So a running step never holds back the sensor
callbacks (they share only the GIL with its Python parts), and a tick that arrives while
the previous step still runs is skipped and counted, never queued. A
MultiThreadedExecutor with callback groups would do the same, but its Python overhead cost
two to three times the CPU with a 200 Hz IMU (measured on a shared 2-core machine).

Fail-safe: the node publishes a zero command every tick while it is disabled, while the
camera (or, with ``imu_stale_action: stop``, the IMU) is stale, after a non-finite policy
output and once on shutdown (SIGINT or SIGTERM).
"""

import sys
import threading
import time
import traceback
from typing import List, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.timer import TimerInfo
from sensor_msgs.msg import CompressedImage, Image, Imu
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import SetBool, Trigger

from liquid_control.errors import ConfigError, DataError, LiquidControlError
from liquid_control.nodes.control import (ControlCounters, ElapsedTime, InputWatchdog, Mode,
                                          OutputLimiter, StepWorker, WarningThrottle,
                                          missed_periods)
from liquid_control.nodes.messages import (compressed_msg_to_rgb, image_msg_to_rgb,
                                           imu_msg_to_array, stamp_to_seconds)
from liquid_control.nodes.params import SPECS, SPECS_BY_NAME, PolicyNodeParams
from liquid_control.nodes.process import (Spinner, create_node, init_ros, limit_teardown,
                                          stop_and_destroy)
from liquid_control.nodes.qos import command_qos, sensor_qos

NODE_NAME = 'policy_node'
WARN_THROTTLE_S = 2.0
SHUTDOWN_ACK_TIMEOUT_S = 1.0
# Seconds of steady time without a control tick, beyond one control period, after which
# the node warns and publishes a zero command. The control timer runs on the ROS clock, so
# with use_sim_time it stops when /clock stops.
TICK_STALL_S = 1.0
TICK_STALL_CHECK_PERIOD_S = 0.25


def _descriptor(spec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.full_description(),
                                     read_only=spec.read_only)
    if spec.minimum is not None and isinstance(spec.default, float):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=spec.minimum, to_value=spec.maximum, step=0.0)]
    elif spec.minimum is not None and isinstance(spec.default, int):
        descriptor.integer_range = [IntegerRange(
            from_value=int(spec.minimum), to_value=int(spec.maximum), step=1)]
    if spec.choices:
        descriptor.additional_constraints = f'one of: {", ".join(spec.choices)}'
    return descriptor


class PolicyNode(Node):
    """Steps a liquid policy at ``control_rate_hz`` and publishes ``cmd_vel``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for spec in SPECS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self.params = PolicyNodeParams.from_values(
            {spec.name: self.get_parameter(spec.name).value for spec in SPECS})
        self._load_model()

        self.counters = ControlCounters()
        self._throttle = WarningThrottle(WARN_THROTTLE_S)
        self._throttle_lock = threading.Lock()
        self._lock = threading.Lock()  # policy state, limiter, frame in use, mode
        self._sensor_lock = threading.Lock()  # newest messages from the callbacks
        self._enabled = self.params.enabled_on_start
        self._shutting_down = False
        self._pending_frame: Optional[Tuple[object, float]] = None
        self._frame: Optional[np.ndarray] = None
        self._frame_received: Optional[float] = None
        self._frame_stamp = None
        self._imu: Optional[np.ndarray] = None
        self._imu_received: Optional[float] = None
        self._last_expected_tick: Optional[float] = None
        self._ticked = False  # whether the control timer has fired since start-up
        self._last_tick_steady = time.monotonic()
        self._tick_stall_reported = False
        self._step_clock = ElapsedTime()  # every control step, to detect a clock jump back
        self._elapsed = ElapsedTime()  # policy steps only: the time step of the network
        self._limiter = OutputLimiter(*self._limits(self.params))
        self._watchdog = InputWatchdog(
            self.params.input_timeout, self.params.imu_timeout, self._imu_required,
            self.params.imu_stale_action == 'continue')

        self._worker = StepWorker(self._run_tick)
        self._create_interfaces()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._log_ready()

    # Start-up

    def _load_model(self) -> None:
        import torch

        from liquid_control.inference import load_runner
        from liquid_control.paths import bundled_model

        torch.set_num_threads(self.params.num_threads)
        if not self.params.model_path:
            # A robot must never drive with the simulator's model by accident.
            raise ConfigError("parameter 'model_path' is empty: set it to your trained policy "
                              '(-p model_path:=policy.lcm, or model:=policy.lcm with '
                              'drive.launch.py). The CarRacing model for the simulator is '
                              f'{bundled_model()}')
        self.model_path = self.params.model_path
        self.runner = load_runner(self.model_path)
        names = self.runner.output_names
        if 'linear_x' not in names and 'angular_z' not in names:
            raise ConfigError(f'model {self.model_path} outputs {list(names)}, but the policy '
                              'node needs linear_x, angular_z or both')
        if self.runner.uses_imu and not self.params.use_imu:
            raise ConfigError(f"parameter 'use_imu' is false, but model {self.model_path} was "
                              'trained with IMU input: set use_imu to true')
        self._linear_index = names.index('linear_x') if 'linear_x' in names else None
        self._angular_index = names.index('angular_z') if 'angular_z' in names else None
        self._imu_required = self.runner.uses_imu and self.params.use_imu

    def _create_interfaces(self) -> None:
        qos = sensor_qos(self.params.sensor_reliability)
        if self.params.compressed:
            self._image_sub = self.create_subscription(
                CompressedImage, 'image_raw/compressed', self._on_image, qos)
        else:
            self._image_sub = self.create_subscription(Image, 'image_raw', self._on_image, qos)
        self._imu_sub = None
        if self._imu_required:
            self._imu_sub = self.create_subscription(Imu, 'imu/data', self._on_imu, qos)

        command_type = TwistStamped if self.params.twist_stamped else Twist
        self._command_pub = self.create_publisher(command_type, 'cmd_vel', command_qos())
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._neurons_pub = self.create_publisher(Float32MultiArray, '~/neurons', 10)

        self.create_service(SetBool, '~/enable', self._on_enable)
        self.create_service(Trigger, '~/reset', self._on_reset)
        self._timer = self.create_timer(self.params.control_period, self._on_control_tick)
        self.create_timer(self.params.diagnostics_period, self._publish_diagnostics)
        self.create_timer(TICK_STALL_CHECK_PERIOD_S, self._check_tick_stall,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _log_ready(self) -> None:
        topic = self._image_sub.topic_name
        kind = 'CompressedImage' if self.params.compressed else 'Image'
        imu = self._imu_sub.topic_name if self._imu_sub is not None else 'not used'
        self.get_logger().info(
            f'ready: model {self.model_path}, outputs {list(self.runner.output_names)} '
            f'({list(self.runner.output_units)}), camera {topic} ({kind}), IMU {imu}, '
            f'{self.params.control_rate_hz:g} Hz on {self._command_pub.topic_name} '
            f'({"TwistStamped" if self.params.twist_stamped else "Twist"}), '
            f'{"enabled" if self._enabled else "disabled"}')
        if self._linear_index is None:
            self.get_logger().warning(
                f'the model has no linear_x output: linear_x is constant_linear_x = '
                f'{self.params.constant_linear_x:g} m/s while the policy runs'
                + (' (the robot will not move forward)'
                   if self.params.constant_linear_x == 0.0 else ''))

    @staticmethod
    def _limits(params: PolicyNodeParams) -> Tuple[List[float], List[float]]:
        """Return (max_abs, max_rate) for the command vector (linear_x, angular_z)."""
        return ([params.max_linear_x, params.max_angular_z],
                [params.max_linear_accel, params.max_angular_accel])

    # Sensor callbacks: store the newest message only

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, msg) -> None:
        received = self._now()
        with self._sensor_lock:
            if self._pending_frame is not None:
                self.counters.dropped_frames += 1
            self._pending_frame = (msg, received)
            self.counters.frames_received += 1

    def _on_imu(self, msg: Imu) -> None:
        received = self._now()
        self.counters.imu_received += 1
        try:
            self._check_stamp(msg.header.stamp, received, 'IMU message')
            values = imu_msg_to_array(msg)
        except DataError as error:
            self.counters.invalid_imu += 1
            self._warn_throttled(f'IMU message rejected: {error}')
            return
        with self._sensor_lock:
            self._imu = values
            self._imu_received = received

    def _warn_throttled(self, message: str) -> None:
        with self._throttle_lock:
            suppressed = self._throttle.check(message, time.monotonic())
        if suppressed is None:
            return
        if suppressed:
            message += f' ({suppressed} similar warnings suppressed)'
        self.get_logger().warning(message)

    def _check_stamp(self, stamp, received: float, source: str) -> None:
        limit = self.params.max_stamp_offset
        if limit <= 0:
            return
        offset = stamp_to_seconds(stamp) - received
        if abs(offset) > limit:
            raise DataError(
                f'{source} header stamp {stamp_to_seconds(stamp):.3f} s is {offset:+.3f} s from '
                f'the node clock (max_stamp_offset {limit:g} s): check the sensor clock, or '
                'set use_sim_time when playing a bag with a /clock publisher')

    # Control loop

    def _on_control_tick(self, info: TimerInfo) -> None:
        started = time.perf_counter()
        self._last_tick_steady = time.monotonic()
        if self._tick_stall_reported:
            self._tick_stall_reported = False
            self.get_logger().info('control ticks resumed')
        expected = info.expected_call_time.nanoseconds * 1e-9
        if self._shutting_down:
            return
        if not self._ticked:
            self._ticked = True
            ahead = self._now() - expected
            if ahead > self.params.control_period:
                # With use_sim_time the clock reads 0 until the first /clock message, so the
                # first tick can be due long before the clock's new time. That is start-up,
                # not a deadline miss: the loop starts at the next tick.
                self.get_logger().info(f'the clock is {ahead:.3f} s past the first control '
                                       'tick (start-up, or the first /clock message); '
                                       'starting at the next tick')
                return
        self._count_skipped_ticks(expected, self.params.control_period)
        if not self._worker.offer((expected, started)):
            self.counters.deadline_misses += 1
            self._warn_throttled('control tick skipped: the previous step is still running')

    def _run_tick(self, tick: Tuple[float, float]) -> None:
        with self._lock:
            if not self._shutting_down:
                self._step(*tick)

    def worker_error(self) -> Optional[BaseException]:
        """Return the exception that stopped the control worker, or None while it runs."""
        return self._worker.error if not self._worker.alive() else None

    def _step(self, expected: float, started: float) -> None:
        now = self._now()
        period = self.params.control_period
        deadline = expected + period
        _, clock_went_back = self._step_clock.update(now)
        if clock_went_back:
            self._last_expected_tick = None
            self._reset_state('the clock jumped back')
        if now > deadline:
            self.counters.deadline_misses += 1
            self._warn_throttled(f'control tick started {(now - expected) * 1e3:.1f} ms late, '
                                 'after the next tick was due: skipped')
            return
        self._take_newest_frame()

        mode = self._update_mode()
        if not mode.runs_policy:
            self._publish_zero()
            return
        imu = self._imu if mode is Mode.RUNNING and self._imu_required else None
        # The network integrates the time since its previous step, skipped ticks included.
        # After a state reset it starts a new sequence with one control period.
        dt, _ = self._elapsed.update(now)
        dt = dt if dt is not None and dt > 0 else period
        try:
            outputs = self.runner.step_preprocessed(self._frame, imu, dt)
        except (ValueError, RuntimeError) as error:
            self.get_logger().error(f'policy step failed: {error}; zero command and state '
                                    'reset', throttle_duration_sec=WARN_THROTTLE_S)
            self._stop_with_reset('policy step failed')
            return
        if self._now() > deadline:
            # The command belongs to a period that has ended: never publish it late.
            self.counters.deadline_misses += 1
            self._warn_throttled(f'control step took {(time.perf_counter() - started) * 1e3:.1f} '
                                 'ms, past the next tick: command dropped')
            return
        if not np.all(np.isfinite(outputs)):
            self.counters.invalid_outputs += 1
            self.get_logger().error(f'policy output is not finite: {outputs.tolist()}; zero '
                                    'command and state reset',
                                    throttle_duration_sec=WARN_THROTTLE_S)
            self._stop_with_reset('non-finite output')
            return

        command = self._limiter.apply(self._command_from_outputs(outputs), dt)
        use_frame_stamp = self.params.command_stamp == 'frame'
        self._publish_command(command, self._frame_stamp if use_frame_stamp else None)
        self.counters.step_seconds.add(time.perf_counter() - started)
        self.counters.command_rate.add(now)
        if self.params.publish_neurons:
            self._neurons_pub.publish(
                Float32MultiArray(data=self.runner.neuron_states().tolist()))

    def _count_skipped_ticks(self, expected: float, period: float) -> None:
        previous, self._last_expected_tick = self._last_expected_tick, expected
        if previous is None or expected <= previous:
            return
        skipped = missed_periods(expected - previous, period)
        if skipped:
            self.counters.deadline_misses += skipped
            self._warn_throttled(f'{skipped} control tick(s) skipped: the executor was late')

    def _take_newest_frame(self) -> None:
        with self._sensor_lock:
            pending, self._pending_frame = self._pending_frame, None
        if pending is None:
            return
        msg, received = pending
        try:
            self._check_stamp(msg.header.stamp, received, 'camera frame')
            if self.params.compressed:
                rgb = compressed_msg_to_rgb(msg)
            else:
                rgb = image_msg_to_rgb(msg)
            frame = self.runner.preprocess(rgb)
        except (DataError, ValueError) as error:
            self.counters.invalid_frames += 1
            self._warn_throttled(f'camera frame rejected: {error}')
            return
        self._frame = frame
        self._frame_received = received
        self._frame_stamp = msg.header.stamp

    def _update_mode(self) -> Mode:
        with self._sensor_lock:
            imu_received = self._imu_received
        # Read the clock after the receipt times: the sensor callbacks run during the step,
        # and a message received after an earlier clock reading would have a negative age,
        # which the watchdog takes for a clock that jumped back.
        now = self._now()
        mode = self._watchdog.evaluate(now, self._enabled, self._frame_received, imu_received)
        first = self._watchdog.mode is None
        previous = self._watchdog.update(mode)
        if first:
            self.get_logger().info(f'mode: {mode.value}')
        elif previous is not None and mode.runs_policy:
            self.get_logger().info(f'mode: {previous.value} -> {mode.value}: publishing '
                                   'policy commands')
        elif previous is not None:
            self.get_logger().warning(f'mode: {previous.value} -> {mode.value}: publishing '
                                      'zero commands')
            if previous.runs_policy:
                self._reset_state(mode.value)
        return mode

    def _command_from_outputs(self, outputs: np.ndarray) -> np.ndarray:
        if self._linear_index is None:
            linear = self.params.constant_linear_x
        else:
            linear = float(outputs[self._linear_index]) * self.params.linear_scale
        angular = 0.0
        if self._angular_index is not None:
            angular = float(outputs[self._angular_index]) * self.params.angular_scale
        return np.array([linear, angular])

    def _reset_state(self, reason: str, log: bool = True) -> None:
        self.runner.reset()
        self._elapsed.reset()
        self.counters.state_resets += 1
        if log:
            self.get_logger().info(f'policy state reset: {reason}')

    def _stop_with_reset(self, reason: str) -> None:
        # The caller's throttled error message already reports the state reset.
        self._publish_zero()
        self._reset_state(reason, log=False)

    def _publish_zero(self) -> None:
        self._limiter.reset()
        self._publish_command(np.zeros(2), None)
        self.counters.zero_commands += 1

    def _publish_command(self, command: np.ndarray, stamp) -> None:
        twist = Twist()
        twist.linear.x = float(command[0])
        twist.angular.z = float(command[1])
        if self.params.twist_stamped:
            message = TwistStamped()
            message.header.stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
            message.header.frame_id = self.params.frame_id
            message.twist = twist
        else:
            message = twist
        self._command_pub.publish(message)
        self.counters.commands_published += 1

    # Services, parameters, diagnostics

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):
        with self._lock:
            changed = self._enabled != request.data
            self._enabled = request.data
        response.success = True
        response.message = 'enabled' if request.data else 'disabled'
        if changed:
            self.get_logger().info(f'~/enable: {response.message}')
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        with self._lock:
            self._reset_state('~/reset service')
        response.success = True
        response.message = 'policy state reset'
        return response

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters if p.name in SPECS_BY_NAME}
        if not changes:
            return SetParametersResult(successful=True)
        params, reason = self.params.with_changes(changes)
        if params is None:
            self.get_logger().warning(f'parameter change rejected: {reason}')
            return SetParametersResult(successful=False, reason=reason)
        with self._lock:
            self._limiter.set_limits(*self._limits(params))
            self._watchdog.input_timeout = params.input_timeout
            self._watchdog.imu_timeout = params.imu_timeout
            self._watchdog.continue_without_imu = params.imu_stale_action == 'continue'
            if params.control_rate_hz != self.params.control_rate_hz:
                self._timer.timer_period_ns = int(round(params.control_period * 1e9))
                # The timer keeps the next call time of the old period (seen with rclpy
                # Kilted), which is up to 10 s away at 0.1 Hz.
                self._timer.reset()
                self._last_expected_tick = None
            self.params = params
        self.get_logger().info(
            'parameters set: ' + ', '.join(f'{name}={value!r}' for name, value in changes.items()))
        return SetParametersResult(successful=True)

    def _check_tick_stall(self) -> None:
        """Warn and publish one zero command when the control timer stops firing."""
        silent = time.monotonic() - self._last_tick_steady
        if (self._shutting_down or self._tick_stall_reported
                or silent <= self.params.control_period + TICK_STALL_S):
            return
        self._tick_stall_reported = True
        if self.get_clock().ros_time_is_active:
            cause = ('the ROS clock has not advanced (use_sim_time is true): check that '
                     '/clock is published')
        else:
            # NOTE: not tested. Without use_sim_time the ticks follow the system clock, so
            # setting that clock back may hold them until it catches up.
            cause = 'the clock did not reach the next tick: was the system clock set back?'
        self.get_logger().warning(f'no control tick for {silent:.1f} s: {cause}. Zero command '
                                  'published; policy commands resume with the control ticks')
        with self._lock:
            if not self._shutting_down:
                self._publish_zero()

    def _publish_diagnostics(self) -> None:
        now = self._now()
        with self._sensor_lock:
            imu_received = self._imu_received
        mode = self._watchdog.mode
        status = DiagnosticStatus(name=f'{self.get_name()}: control',
                                  hardware_id=self.get_fully_qualified_name())
        if mode is None:
            status.level, status.message = DiagnosticStatus.WARN, 'starting'
        elif mode.runs_policy or mode is Mode.DISABLED:
            status.level, status.message = DiagnosticStatus.OK, mode.value
        else:
            status.level, status.message = DiagnosticStatus.WARN, mode.value
        if self.counters.invalid_outputs:
            status.level = DiagnosticStatus.ERROR
            status.message += f'; {self.counters.invalid_outputs} non-finite outputs'

        def age(received: Optional[float]) -> str:
            return 'none' if received is None else f'{now - received:.3f}'

        values = [('mode', mode.value if mode else 'starting'),
                  ('enabled', str(self._enabled).lower()),
                  ('camera_age_s', age(self._frame_received)),
                  ('imu_age_s', age(imu_received) if self._imu_required else 'not used')]
        values += self.counters.key_values()
        status.values = [KeyValue(key=key, value=value) for key, value in values]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def shutdown(self) -> None:
        """Stop the control loop and publish one zero command, waiting for its delivery."""
        with self._lock:
            self._shutting_down = True
            self._publish_zero()
        self._worker.stop()
        delivered = self._command_pub.wait_for_all_acked(Duration(seconds=SHUTDOWN_ACK_TIMEOUT_S))
        self.get_logger().info('shutdown: zero command published'
                               + ('' if delivered else ' (delivery not acknowledged)'))


def main(args=None) -> int:
    """Run the policy node until SIGINT or SIGTERM, then publish a zero command."""
    stop = init_ros(args if args is not None else sys.argv)
    node = create_node(NODE_NAME, PolicyNode,
                       (LiquidControlError, ParameterException, FileNotFoundError))
    if node is None:
        return 2

    spinner = Spinner(node)
    stopped = False
    try:
        while spinner.is_alive() and node.worker_error() is None and not stop.wait(0.1):
            pass
    finally:
        # The zero command goes out while the executor still runs.
        limit_teardown(node)
        node.shutdown()
        stopped = stop_and_destroy(node, spinner)
    if not stopped:
        return 1
    error = node.worker_error()
    if error is not None:
        trace = ''.join(traceback.format_exception(error))
        rclpy.logging.get_logger(NODE_NAME).fatal(f'control step failed: {error!r}\n{trace}')
        return 1
    if not stop.is_set():
        # The executor thread ended by itself: a callback raised (its traceback is above).
        rclpy.logging.get_logger(NODE_NAME).fatal('executor stopped unexpectedly')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
