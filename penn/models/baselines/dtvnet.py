"""D-TVNet (Lyu et al. 2021): UNet + auxiliary contour branch + ASPP, as penn's spec of it.

Only the abstract is retrievable. penn's reading: a main UNet and a half-width auxiliary UNet see
the same slice; the auxiliary branch predicts the mask's contour; at every encoder level its map
is concatenated to the main one and a 1x1 conv fuses them back to the main width (the fused map
feeds the next level and the skip); an ASPP on concat(main, auxiliary bottleneck) closes the
main encoder. The mask comes from the main head alone.

Examples::

    >>> net = DTVNet(in_channels=1, n_outputs=1, base_channels=8, aux_channels=4, depth=4,
    ...              rates=[2, 4, 6], image_pooling=True)
    >>> mask_logits, contour_logits = net(torch.rand(2, 1, 37, 45))
    >>> mask_logits.shape, contour_logits.shape
    (torch.Size([2, 1, 37, 45]), torch.Size([2, 1, 37, 45]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from penn.models.baselines.padding import crop_to, pad_to_multiple
from penn.models.baselines.unet import DoubleConv

__all__ = ["ASPP", "DTVNet", "contour_target"]


def contour_target(mask: torch.Tensor) -> torch.Tensor:
    """Morphological gradient (3x3 dilation minus erosion) of a binary mask (B, 1, H, W)."""
    mask = mask.float()
    dilated = F.max_pool2d(mask, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-mask, 3, stride=1, padding=1)
    return dilated - eroded


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1):
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 conv, 3x3 atrous convs, optional image pooling."""

    def __init__(self, in_channels: int, out_channels: int, rates: list[int], image_pooling: bool):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, out_channels, 1)]
            + [_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates]
        )
        # no BN on the pooled branch: a 1x1 map of batch 1 has no batch statistics
        self.pooling = (
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(in_channels, out_channels, 1),
                nn.ReLU(inplace=True),
            )
            if image_pooling
            else None
        )
        n_branches = len(self.branches) + (1 if image_pooling else 0)
        self.project = _conv_bn_relu(n_branches * out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.pooling is not None:
            outs.append(self.pooling(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


def _encoder(in_channels: int, widths: list[int]) -> nn.ModuleList:
    ins = [in_channels, *widths[:-1]]
    return nn.ModuleList(
        DoubleConv(a, b) if level == 0 else nn.Sequential(nn.MaxPool2d(2), DoubleConv(a, b))
        for level, (a, b) in enumerate(zip(ins, widths, strict=True))
    )


def _decoder(widths: list[int]) -> tuple[nn.ModuleList, nn.ModuleList]:
    up = nn.ModuleList(
        nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:], strict=True)
    )
    return up, nn.ModuleList(DoubleConv(2 * a, a) for a in widths[:-1])


def _decode(h, skips, up, decode):
    for up_layer, decode_layer in zip(reversed(up), reversed(decode), strict=True):
        h = decode_layer(torch.cat([skips.pop(), up_layer(h)], dim=1))
    return h


class DTVNet(nn.Module):
    """Main UNet fused with an auxiliary contour UNet; returns (mask logits, contour logits).

    Args:
        in_channels: image channels (1 for MRI).
        n_outputs: mask logits (1 binary, or the class count).
        base_channels: main UNet width of level 1 (spec: 32).
        aux_channels: auxiliary UNet width of level 1 (spec: 16).
        depth: poolings (spec: 4).
        rates: ASPP atrous rates (spec: 2, 4, 6 on a 24^2 bottleneck).
        image_pooling: add ASPP's global-average-pooling branch.
    """

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        base_channels: int,
        aux_channels: int,
        depth: int,
        rates: list[int],
        image_pooling: bool,
    ):
        super().__init__()
        main = [base_channels * 2**level for level in range(depth + 1)]
        aux = [aux_channels * 2**level for level in range(depth + 1)]
        self.multiple = 2**depth
        self.main_encoder, self.aux_encoder = (
            _encoder(in_channels, main),
            _encoder(in_channels, aux),
        )
        self.fuse = nn.ModuleList(
            nn.Conv2d(m + a, m, 1) for m, a in zip(main[:-1], aux[:-1], strict=True)
        )
        self.aspp = ASPP(main[-1] + aux[-1], main[-1], rates, image_pooling)
        self.main_up, self.main_decoder = _decoder(main)
        self.aux_up, self.aux_decoder = _decoder(aux)
        self.head = nn.Conv2d(main[0], n_outputs, 1)
        self.contour_head = nn.Conv2d(aux[0], 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask logits (B, n_outputs, H, W), contour logits (B, 1, H, W)) of (B, C, H, W)."""
        x, size = pad_to_multiple(x, self.multiple)
        h, g, main_skips, aux_skips = x, x, [], []
        for level, (main_level, aux_level) in enumerate(
            zip(self.main_encoder, self.aux_encoder, strict=True)
        ):
            h, g = main_level(h), aux_level(g)
            if level < len(self.fuse):
                h = self.fuse[level](torch.cat([h, g], dim=1))
                main_skips.append(h)
                aux_skips.append(g)
        h = self.aspp(torch.cat([h, g], dim=1))
        mask = self.head(_decode(h, main_skips, self.main_up, self.main_decoder))
        contour = self.contour_head(_decode(g, aux_skips, self.aux_up, self.aux_decoder))
        return crop_to(mask, size), crop_to(contour, size)
