"""penn's segmentation network: MONAI's ``BasicUNet`` in 2D, for slices of any size.

Instance normalisation (MONAI's default for it) normalises every slice's features by that slice's
own statistics rather than by batch statistics learnt on the training collection, and a slice's
output does not depend on the other slices of its batch.

Examples::

    >>> net = SegUNet(in_channels=1, n_outputs=1, features=[8, 8, 16, 16, 32, 8])
    >>> net(torch.rand(2, 1, 45, 37)).shape
    torch.Size([2, 1, 45, 37])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from penn.models.baselines.padding import crop_to, pad_to_multiple

__all__ = ["SegUNet"]

#: BasicUNet pools four times
_MULTIPLE = 16


class SegUNet(nn.Module):
    """A 2D MONAI ``BasicUNet``; logits at the input resolution.

    Args:
        in_channels: image channels (1; 3 for neighbour slices as channels).
        n_outputs: 1 (sigmoid, binary) or the number of classes (softmax).
        features: the six widths of BasicUNet (five levels and the last decoder).
        dropout: dropout probability inside the convolution blocks.
    """

    def __init__(
        self, in_channels: int, n_outputs: int, features: Sequence[int], dropout: float = 0.0
    ):
        super().__init__()
        self.unet = BasicUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=n_outputs,
            features=tuple(features),
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_outputs, H, W) of images (B, in_channels, H, W), any H, W."""
        # at least 2 x 2 pixels at the coarsest level: its instance norm needs more than one
        x, size = pad_to_multiple(x, _MULTIPLE, minimum=2 * _MULTIPLE)
        return crop_to(self.unet(x), size)
