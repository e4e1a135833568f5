"""UNet (Ronneberger et al. 2015) with padded convolutions, as penn's spec of it.

"Same" 3x3 conv-BN-ReLU pairs (the milesial/Pytorch-UNet port), 2x2 max-pool down, 2x2
transposed-conv up, so the output has the input's size after the pad and crop every baseline gets.

Examples::

    >>> net = UNet(in_channels=1, n_outputs=1, base_channels=8, depth=4)
    >>> net(torch.rand(2, 1, 45, 37)).shape
    torch.Size([2, 1, 45, 37])
"""

from __future__ import annotations

import torch
from torch import nn

from penn.models.baselines.padding import crop_to, pad_to_multiple

__all__ = ["DoubleConv", "UNet"]


class DoubleConv(nn.Sequential):
    """Two padded 3x3 conv-BN-ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Encoder-decoder with skip concatenation; logits at the input resolution.

    Args:
        in_channels: image channels (1 for MRI).
        n_outputs: 1 (sigmoid, binary) or the number of classes (softmax).
        base_channels: width of the first level, doubled per level (paper: 64).
        depth: number of poolings (paper: 4).
    """

    def __init__(self, in_channels: int, n_outputs: int, base_channels: int, depth: int):
        super().__init__()
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.multiple = 2**depth
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(a, b))
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(b, a, 2, stride=2)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.decode = nn.ModuleList(DoubleConv(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], n_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_outputs, H, W) of images (B, in_channels, H, W), any H, W."""
        x, size = pad_to_multiple(x, self.multiple)
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        h = skips.pop()
        for up, decode in zip(reversed(self.up), reversed(self.decode), strict=True):
            h = decode(torch.cat([skips.pop(), up(h)], dim=1))
        return crop_to(self.head(h), size)
