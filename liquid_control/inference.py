"""Step a trained policy one frame at a time, as a robot does, without ROS.

``PolicyRunner`` owns the recurrent state and the checkpoint's preprocessing, so the policy
node, offline evaluation and benchmarks turn frames into commands in exactly the same way.
"""

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import CheckpointError, ConfigError

_logger = logging.getLogger(__name__)

IMU_SIZE = 6


class PolicyRunner:
    """Run a ``Policy`` step by step on single frames, keeping its recurrent state.

    ``step`` takes an ``(H, W, 3)`` uint8 RGB frame of any size; ``preprocessing`` crops
    and resizes it to the policy's input. Outputs are in the policy's physical units, in
    the order of ``output_names``.
    """

    def __init__(self, policy: torch.nn.Module, preprocessing: Preprocessing) -> None:
        self.policy = policy.eval()
        self.preprocessing = preprocessing
        self.output_names = tuple(policy.output_names)
        self.output_units = tuple(policy.output_units)
        self.uses_imu = bool(getattr(policy.config, 'imu_enabled', False))
        self._state: Optional[torch.Tensor] = None
        self._dt = torch.zeros(1, dtype=torch.float32)

    def reset(self) -> None:
        """Forget the recurrent state, so the next step starts a new sequence."""
        self._state = None

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """Return the ``(3, height, width)`` float32 network input for an RGB frame."""
        return self.preprocessing.apply(rgb)

    def step(self, rgb: np.ndarray, imu: Optional[Sequence[float]], dt: float) -> np.ndarray:
        """Advance the policy by ``dt`` seconds on a frame and return its outputs ``(O,)``.

        ``imu`` is (gyro x, y, z in rad/s, acceleration x, y, z in m/s^2) or None; it is
        ignored for policies trained without IMU input. Raises ValueError for a frame of
        the wrong shape or type, a non-finite IMU vector or a non-positive ``dt``.
        """
        return self.step_preprocessed(self.preprocess(rgb), imu, dt)

    def step_preprocessed(self, frame: np.ndarray, imu: Optional[Sequence[float]],
                          dt: float) -> np.ndarray:
        """Like ``step`` for a frame that ``preprocess`` already converted."""
        expected = (3, self.preprocessing.height, self.preprocessing.width)
        if frame.shape != expected or frame.dtype != np.float32:
            raise ValueError(f'expected a float32 frame of shape {expected}, got '
                             f'{frame.dtype} {frame.shape}')
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f'dt must be a positive number of seconds, got {dt!r}')
        imu_tensor = None
        if self.uses_imu and imu is not None:
            imu_array = np.asarray(imu, np.float32).reshape(-1)
            if imu_array.size != IMU_SIZE or not np.all(np.isfinite(imu_array)):
                raise ValueError(f'expected {IMU_SIZE} finite IMU values, got {imu_array}')
            imu_tensor = torch.from_numpy(imu_array).unsqueeze(0)

        frame_tensor = torch.from_numpy(frame).unsqueeze(0)  # (1, 3, H, W)
        self._dt[0] = float(dt)
        with torch.no_grad():
            outputs, self._state = self.policy.step(frame_tensor, imu_tensor, self._dt,
                                                    self._state)
        return outputs[0].numpy().astype(np.float64)

    def neuron_states(self) -> np.ndarray:
        """Return the current neuron states ``(N,)``: LTC/CfC potentials or RNN hidden units."""
        with torch.no_grad():
            state = self._state if self._state is not None else self.policy.initial_state(1)
            return self.policy.neuron_states(state)[0].numpy().astype(np.float32)


def load_runner(path: Union[str, Path]) -> PolicyRunner:
    """Load a checkpoint into a ``PolicyRunner`` with the preprocessing it was trained with.

    Raises CheckpointError when the file is missing, unreadable or lacks preprocessing.
    """
    from liquid_control.model.checkpoint import load_checkpoint

    policy, metadata = load_checkpoint(path)
    settings = getattr(policy.config, 'preprocessing', None)
    if not settings:
        raise CheckpointError(f'checkpoint {path} stores no preprocessing settings; '
                              'retrain or re-export it with a current liquid-control')
    try:
        preprocessing = Preprocessing.from_dict(dict(settings))
    except ConfigError as error:
        raise CheckpointError(f'checkpoint {path} has invalid preprocessing settings: '
                              f'{error}') from error
    runner = PolicyRunner(policy, preprocessing)
    _logger.debug('loaded %s: outputs %s, IMU %s', path, runner.output_names, runner.uses_imu)
    return runner
