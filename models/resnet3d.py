"""Shared 3D ResNet pieces: an inflatable bottleneck, its stage builder and the 1xkxk stem.

The I3D/"slow pathway" style used by ST-ABN (Mitsuhara et al.): a 2D ResNet whose 1x1 first
convolution of a bottleneck may be inflated to 3x1x1 (temporal kernel 3, padding 1), so a stage
mixes neighbouring frames without changing the temporal length. Strides are spatial only unless a
temporal stride is given. Layout (N, C, T, H, W). Parameter names follow torchvision's ResNet
(`conv1`, `bn1`, ..., `downsample.0/1`) so 2D ImageNet weights inflate onto them by name.
"""
from typing import Sequence

import torch
from torch import nn


class Bottleneck3d(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 -> 1x1 (x4 expansion) on (N, C, T, H, W).

    `inflate=True` makes the first convolution 3x1x1; the stride sits on the 3x3 (PyTorch style).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, spatial_stride: int = 1, temporal_stride: int = 1,
                 inflate: bool = False) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        kt = 3 if inflate else 1
        self.conv1 = nn.Conv3d(in_channels, planes, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(temporal_stride, spatial_stride, spatial_stride),
                               padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if spatial_stride != 1 or temporal_stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=(temporal_stride, spatial_stride, spatial_stride),
                          bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer3d(in_channels: int, planes: int, blocks: int, spatial_stride: int = 1, temporal_stride: int = 1,
                 inflate: bool = False) -> nn.Sequential:
    """A ResNet stage of `blocks` bottlenecks; only the first one strides (and projects)."""
    layers = [Bottleneck3d(in_channels, planes, spatial_stride, temporal_stride, inflate)]
    layers += [Bottleneck3d(planes * Bottleneck3d.expansion, planes, inflate=inflate) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Stem3d(nn.Module):
    """conv kt x7x7 (spatial stride 2) -> BN -> ReLU -> max-pool 1x3x3 (spatial stride 2): H, W / 4."""

    def __init__(self, in_channels: int = 3, width: int = 64, kernel_t: int = 1, stride_t: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, width, (kernel_t, 7, 7), stride=(stride_t, 2, 2),
                               padding=(kernel_t // 2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def init_resnet_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions, BN weight 1 and bias 0 (torchvision's ResNet init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_stages(widths: Sequence[int], layers: Sequence[int]) -> None:
    """Validate a (widths, layers) pair: four positive stages each."""
    if len(widths) != 4 or len(layers) != 4:
        raise ValueError(f"widths and layers need 4 stages each, got widths={tuple(widths)} layers={tuple(layers)}")
    if min(widths) < 1 or min(layers) < 1:
        raise ValueError(f"widths and layers must be positive, got widths={tuple(widths)} layers={tuple(layers)}")
