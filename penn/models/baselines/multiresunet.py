"""MultiResUNet (Ibtehaz & Rahman 2020), after the official Keras code.

Keras rules kept: convs without bias, BN after convs without scale (``scale=False``: shift
only), MultiRes block order sum -> ReLU -> BN, Res path width F = U. The head is 1x1 conv-BN
and returns logits (the Keras sigmoid is applied by the loss / at inference).

Examples::

    >>> net = MultiResUNet(in_channels=1, n_outputs=1, base_channels=32, alpha=1.67)
    >>> net.block_widths
    [51, 105, 212, 426, 853]
"""

from __future__ import annotations

import torch
from torch import nn

from penn.models.baselines.padding import crop_to, pad_to_multiple

__all__ = ["MultiResBlock", "MultiResUNet", "ResPath", "multires_widths"]

DEPTH = 4  # the architecture: five levels, four poolings, Res path lengths 4..1


class ShiftBatchNorm(nn.Module):
    """Keras ``BatchNormalization(scale=False)``: normalise, then add a learned shift."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) + self.shift[:, None, None]


def conv_bn(in_channels: int, out_channels: int, kernel: int, relu: bool) -> nn.Sequential:
    """Keras ``conv2d_bn``: bias-free 'same' conv, shift-only BN, optional ReLU."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        ShiftBatchNorm(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def multires_widths(units: int, alpha: float) -> tuple[int, int, int]:
    """Filters of the three chained 3x3 convs of a MultiRes block with U = ``units``."""
    width = alpha * units
    return int(width * 0.167), int(width * 0.333), int(width * 0.5)


class MultiResBlock(nn.Module):
    """Three chained 3x3 convs (3x3, 5x5, 7x7 fields), concatenated, plus a 1x1 shortcut."""

    def __init__(self, in_channels: int, units: int, alpha: float):
        super().__init__()
        widths = multires_widths(units, alpha)
        self.out_channels = sum(widths)
        self.shortcut = conv_bn(in_channels, self.out_channels, 1, relu=False)
        ins = [in_channels, *widths[:-1]]
        self.convs = nn.ModuleList(
            conv_bn(a, b, 3, relu=True) for a, b in zip(ins, widths, strict=True)
        )
        self.norm_cat = nn.BatchNorm2d(self.out_channels)
        self.norm_out = nn.BatchNorm2d(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, h = [], x
        for conv in self.convs:
            h = conv(h)
            outs.append(h)
        h = self.norm_cat(torch.cat(outs, dim=1)) + self.shortcut(x)
        return self.norm_out(torch.relu(h))  # Keras order: sum -> ReLU -> BN


class ResPath(nn.Sequential):
    """``length`` residual units [3x3 conv-BN-ReLU + 1x1 conv-BN -> sum -> ReLU -> BN]."""

    def __init__(self, in_channels: int, filters: int, length: int):
        super().__init__(
            *(_ResUnit(in_channels if i == 0 else filters, filters) for i in range(length))
        )


class _ResUnit(nn.Module):
    def __init__(self, in_channels: int, filters: int):
        super().__init__()
        self.conv = conv_bn(in_channels, filters, 3, relu=True)
        self.shortcut = conv_bn(in_channels, filters, 1, relu=False)
        self.norm = nn.BatchNorm2d(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.conv(x) + self.shortcut(x)))


class MultiResUNet(nn.Module):
    """MultiRes blocks with U = base * 2**level, Res paths of length 4..1, transposed-conv decoder.

    Args:
        in_channels: image channels (1 for MRI).
        n_outputs: 1 (sigmoid, binary) or the number of classes (softmax).
        base_channels: U of level 1 (Keras: 32).
        alpha: width multiplier W = alpha * U (Keras: 1.67).
    """

    def __init__(self, in_channels: int, n_outputs: int, base_channels: int, alpha: float):
        super().__init__()
        units = [base_channels * 2**level for level in range(DEPTH + 1)]
        self.multiple = 2**DEPTH
        self.encoder, self.res_paths = nn.ModuleList(), nn.ModuleList()
        channels = in_channels
        for level, unit in enumerate(units):
            block = MultiResBlock(channels, unit, alpha)
            self.encoder.append(block)
            channels = block.out_channels
            if level < DEPTH:
                self.res_paths.append(ResPath(channels, unit, DEPTH - level))
        self.block_widths = [block.out_channels for block in self.encoder]
        self.up, self.decoder = nn.ModuleList(), nn.ModuleList()
        for unit in reversed(units[:-1]):
            self.up.append(nn.ConvTranspose2d(channels, unit, 2, stride=2))
            block = MultiResBlock(2 * unit, unit, alpha)
            self.decoder.append(block)
            channels = block.out_channels
        self.head = conv_bn(channels, n_outputs, 1, relu=False)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_outputs, H, W) of images (B, in_channels, H, W), any H, W."""
        h, size = pad_to_multiple(x, self.multiple)
        skips = []
        for level, block in enumerate(self.encoder):
            h = block(h if level == 0 else self.pool(h))
            if level < DEPTH:
                skips.append(self.res_paths[level](h))
        for up, block in zip(self.up, self.decoder, strict=True):
            h = block(torch.cat([up(h), skips.pop()], dim=1))
        return crop_to(self.head(h), size)
