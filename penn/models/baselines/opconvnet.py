"""OP-convNet (Qadri et al. 2021): a 2D CNN that classifies overlapping patches.

The layer list is not published; this is penn's spec: [3x3 conv-BN-ReLU x2, 2x2 max-pool] with
32, 64, 128 channels, flatten, FC 256, dropout, FC n_outputs (about 0.8 M parameters).

Examples::

    >>> net = OPConvNet(patch_size=32, n_outputs=1, channels=(32, 64, 128), hidden=256, dropout=0.5)
    >>> net(torch.rand(8, 1, 32, 32)).shape
    torch.Size([8, 1])
"""

from __future__ import annotations

import torch
from torch import nn

from penn.models.baselines.unet import DoubleConv

__all__ = ["OPConvNet"]


class OPConvNet(nn.Module):
    """Patch classifier: (B, 1, n, n) patches -> (B, n_outputs) logits.

    Args:
        patch_size: patch side n, divisible by 2**len(channels).
        n_outputs: 1 (sigmoid, binary target) or the number of classes (softmax).
        channels: widths of the conv blocks, one max-pool after each.
        hidden: units of the fully connected layer.
        dropout: dropout probability before the last layer.

    Raises:
        ValueError: if ``patch_size`` is not divisible by ``2**len(channels)``.
    """

    def __init__(
        self,
        patch_size: int,
        n_outputs: int,
        channels: tuple[int, ...] | list[int],
        hidden: int,
        dropout: float,
    ):
        super().__init__()
        if patch_size % 2 ** len(channels):
            raise ValueError(f"patch_size {patch_size} not divisible by 2**{len(channels)}")
        self.patch_size = patch_size
        widths = [1, *channels]
        self.features = nn.Sequential(
            *(
                nn.Sequential(DoubleConv(a, b), nn.MaxPool2d(2))
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        side = patch_size // 2 ** len(channels)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_outputs) of patches (B, 1, n, n) or flattened (B, n*n)."""
        x = x.reshape(-1, 1, self.patch_size, self.patch_size)
        return self.classifier(self.features(x))
