"""Convolutional head that turns a camera frame into a few features for the recurrent cell.

The layout follows the conv head of the NCP lane-keeping network (Lechner et al.,
Nature Machine Intelligence 2, 2020): five convolutions with 24, 36, 48, 64 and 8
filters, kernels 5, 5, 3, 3, 3 and strides 2, 2, 2, 1, 1 ("same" padding), then one
small dense layer per output channel of the last convolution, 8 x 4 = 32 features.
At a 78 x 200 input the last feature map is 10 x 25 and the head has 79,420 parameters.

Two changes keep the features usable by an LTC cell, whose sigmoid synapses saturate on
large inputs:

- the last convolution and the per-channel dense layers have no ReLU, so no channel can
  die and feed constant zeros;
- the 32 features end in a layer normalisation without learned scale, so they enter the
  cell with zero mean and unit variance per frame whatever the encoder weights are.

With ``frames=2`` the encoder takes two frames stacked on the channel axis, (B, 6, H, W):
the current frame, then an earlier one. The first convolution takes the current frame and
its change since the earlier one (current minus earlier), six channels, so motion in the
picture is visible to the first layer.
"""

from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from liquid_control.errors import ConfigError

DEFAULT_CHANNELS = (24, 36, 48, 64, 8)
DEFAULT_KERNEL_SIZES = (5, 5, 3, 3, 3)
DEFAULT_STRIDES = (2, 2, 2, 1, 1)

# Frames arrive in [0, 1]. This centre and scale give roughly zero mean and unit spread
# for camera images, whose channel means are often 0.3-0.5. This is an estimate, not
# measured per data set, and the layer norm at the end fixes the features' scale anyway.
PIXEL_CENTER = 0.5
PIXEL_SCALE = 0.25


def conv_output_size(size: int, kernel_size: int, stride: int) -> int:
    """Return the output length of a 'same'-padded convolution: ceil(size / stride)."""
    padding = kernel_size // 2
    return (size + 2 * padding - kernel_size) // stride + 1


class PerChannelDense(nn.Module):
    """One dense layer per channel: (B, C, H, W) -> (B, C * features_per_channel).

    Channel c's H x W map is flattened and multiplied by its own (H W, k) weight, as a
    batched matrix product, so the C layers cost one operation.
    """

    def __init__(self, channels: int, map_size: int, features_per_channel: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, map_size, features_per_channel))
        self.bias = nn.Parameter(torch.zeros(channels, features_per_channel))
        bound = 1.0 / map_size ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        batch, channels = maps.shape[:2]
        flat = maps.reshape(batch, channels, 1, -1).transpose(0, 1)  # (C, B, 1, HW)
        features = torch.matmul(flat.squeeze(2), self.weight)  # (C, B, k)
        features = features.transpose(0, 1) + self.bias  # (B, C, k)
        return features.reshape(batch, -1)


class ConvHead(nn.Module):
    """Five convolutions and per-channel dense layers: (B, C0, H, W) -> (B, C5 * k)."""

    def __init__(self, height: int, width: int,
                 channels: Sequence[int] = DEFAULT_CHANNELS,
                 kernel_sizes: Sequence[int] = DEFAULT_KERNEL_SIZES,
                 strides: Sequence[int] = DEFAULT_STRIDES,
                 features_per_channel: int = 4, in_channels: int = 3):
        super().__init__()
        if not len(channels) == len(kernel_sizes) == len(strides) >= 1:
            raise ConfigError(f'encoder channels {list(channels)}, kernel_sizes '
                              f'{list(kernel_sizes)} and strides {list(strides)} must have '
                              'the same, non-zero length')
        layers = []
        map_height, map_width = height, width
        for out_channels, kernel_size, stride in zip(channels, kernel_sizes, strides):
            if kernel_size % 2 != 1:
                raise ConfigError(f'encoder kernel size {kernel_size} must be odd')
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                    padding=kernel_size // 2))
            in_channels = out_channels
            map_height = conv_output_size(map_height, kernel_size, stride)
            map_width = conv_output_size(map_width, kernel_size, stride)
        self.convolutions = nn.ModuleList(layers)
        self.map_shape: Tuple[int, int] = (map_height, map_width)
        self.dense = PerChannelDense(in_channels, map_height * map_width, features_per_channel)
        self.feature_count = in_channels * features_per_channel

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames
        last = len(self.convolutions) - 1
        for index, convolution in enumerate(self.convolutions):
            x = convolution(x)
            # No ReLU after the last convolution: a dead channel would feed the cell zeros.
            if index < last:
                x = F.relu(x)
        return self.dense(x)


class Encoder(nn.Module):
    """Frame encoder: (B, 3 * frames, H, W) in [0, 1] -> (B, F) layer-normalised features.

    ``frames`` is 1 (one RGB frame) or 2 (the current frame, then an earlier one).
    """

    def __init__(self, height: int, width: int,
                 channels: Sequence[int] = DEFAULT_CHANNELS,
                 kernel_sizes: Sequence[int] = DEFAULT_KERNEL_SIZES,
                 strides: Sequence[int] = DEFAULT_STRIDES,
                 features_per_channel: int = 4, dropout: float = 0.0, frames: int = 1):
        super().__init__()
        for name, value in (('height', height), ('width', width)):
            if value < 8:
                raise ConfigError(f'encoder input {name}={value} is too small: use >= 8')
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f'encoder dropout={dropout} is invalid: use 0 <= p < 1')
        if frames not in (1, 2):
            raise ConfigError(f'encoder frames={frames!r} is invalid: use 1 or 2')
        self.height = int(height)
        self.width = int(width)
        self.frames = frames
        self.head = ConvHead(height, width, channels, kernel_sizes, strides,
                             features_per_channel, in_channels=3 * frames)
        self.feature_count = self.head.feature_count
        self.dropout = nn.Dropout(dropout)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        channels = 3 * self.frames
        if frames.shape[-3:] != (channels, self.height, self.width):
            raise ValueError(f'encoder expects frames of shape (B, {channels}, {self.height}, '
                             f'{self.width}), got {tuple(frames.shape)}; preprocess them '
                             'with the checkpoint\'s preprocessing settings')
        x = (frames[:, :3] - PIXEL_CENTER) * (1.0 / PIXEL_SCALE)
        if self.frames == 2:
            change = (frames[:, :3] - frames[:, 3:]) * (1.0 / PIXEL_SCALE)
            x = torch.cat([x, change], dim=1)
        features = self.head(x)  # (B, F)
        features = F.layer_norm(features, (self.feature_count,))
        return self.dropout(features)
