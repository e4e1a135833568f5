"""Pad slices to a multiple of the nets' pooling factor and crop them back (every baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["crop_to", "pad_to_multiple"]


def pad_to_multiple(
    x: torch.Tensor, multiple: int, minimum: int = 0
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the bottom and right edges so H and W are multiples of ``multiple``.

    Args:
        x: (B, C, H, W) images.
        multiple: 2**(number of poolings), e.g. 16 for four.
        minimum: least padded H and W (a multiple of ``multiple``), e.g. so that instance
            normalisation at the coarsest level sees more than one pixel.

    Returns:
        The padded (B, C, H', W') batch and the original (H, W) for :func:`crop_to`.
    """
    height, width = x.shape[-2:]
    pad_h = max(-height % multiple, minimum - height)
    pad_w = max(-width % multiple, minimum - width)
    if pad_h or pad_w:
        # reflect needs pad < size; tiny inputs (< multiple / 2) fall back to replicate
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (height, width)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop (B, C, H', W') back to the top-left (H, W) = ``size``."""
    return x[..., : size[0], : size[1]]
