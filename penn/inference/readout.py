"""Patch logits on the grid to pixel maps: the paper's mean over covering patches or the centre
rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "grid_padding",
]


def pad_amount(length: int, patch_size: int, stride: int) -> int:
    """Pixels to add so that the stride grid reaches the last pixel."""
    padded = max(length, patch_size)
    return (padded - length) + (-(padded - patch_size)) % stride


def spread_axis(values: torch.Tensor, dim: int, patch_size: int, stride: int) -> torch.Tensor:
    """Along ``dim``, sums the values of the patches that cover each pixel.

    ``values`` has one entry per patch along ``dim`` (L of them, corners at ``i * stride``); the
    result has one per pixel, (L - 1) * stride + patch_size. Differences of a cumulative sum (the
    1D summed-area table) in float64 replace a box filter. When the stride divides the patch
    size, every pixel of a stride-wide block is covered by the same patches: the sums are taken
    per block and the caller repeats them (see :func:`spread_mean`).
    """
    length = values.shape[dim]
    table = torch.cat([torch.zeros_like(values.narrow(dim, 0, 1)), values.cumsum(dim)], dim)
    if patch_size % stride == 0:
        pos = torch.arange(length + patch_size // stride - 1, device=values.device)
        lo = (pos - patch_size // stride + 1).clamp(min=0)
    else:
        pos = torch.arange((length - 1) * stride + patch_size, device=values.device) // stride
        lo = (torch.arange(pos.numel(), device=values.device) - patch_size) // stride + 1
        lo = lo.clamp(min=0)
    hi = pos.clamp(max=length - 1) + 1
    return table.index_select(dim, hi) - table.index_select(dim, lo)


def spread_mean(
    patch_values: torch.Tensor, patch_size: int, stride: int, height: int, width: int
) -> torch.Tensor:
    """Mean value of the patches covering each pixel: (B, K, ny, nx) -> (B, K, height, width).

    Separable sums from summed-area tables (:func:`spread_axis`) divided by the number of
    covering patches; when the stride divides the patch size, the block means are repeated
    ``stride`` times along each axis.
    """
    ny, nx = patch_values.shape[2:]
    v = patch_values.double()
    sums = spread_axis(spread_axis(v, 2, patch_size, stride), 3, patch_size, stride)
    count_y = spread_axis(v.new_ones(ny), 0, patch_size, stride)
    count_x = spread_axis(v.new_ones(nx), 0, patch_size, stride)
    mean = (sums / (count_y[:, None] * count_x[None, :])).float()
    if patch_size % stride == 0 and stride > 1:  # each block mean over its stride x stride pixels
        b, k, by, bx = mean.shape
        mean = mean[:, :, :, None, :, None].expand(b, k, by, stride, bx, stride)
        mean = mean.reshape(b, k, by * stride, bx * stride)
    return mean[:, :, :height, :width]


def centre_readout(grid: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """Pixel values from grid values at pixels (i * stride, j * stride), bilinear in between."""
    if stride > 1:
        size = ((grid.shape[2] - 1) * stride + 1, (grid.shape[3] - 1) * stride + 1)
        grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=True)
    return grid[:, :, :height, :width]


def grid_padding(
    height: int, width: int, n: int, stride: int, aggregate: str
) -> tuple[int, int, tuple[int, int, int, int]]:
    """The patch grid (ny, nx) over a padded slice and the padding (left, right, top, bottom).

    ``center``: the slice is padded by n // 2 before, so that corner i * stride of the padded
    slice is the patch centred on pixel i * stride (``stride`` must divide n // 2); ``mean``:
    padded after only, until the grid covers the slice.
    """
    if aggregate == "center":
        head = n // 2
        if head % stride:
            raise ValueError(f"aggregate='center' needs a stride that divides {head}, got {stride}")
        ny, nx = -(-(height - 1) // stride) + 1, -(-(width - 1) // stride) + 1
        right, bottom = (nx - 1) * stride + n - width - head, (ny - 1) * stride + n - height - head
        return ny, nx, (head, right, head, bottom)
    pad_y, pad_x = pad_amount(height, n, stride), pad_amount(width, n, stride)
    ny, nx = (height + pad_y - n) // stride + 1, (width + pad_x - n) // stride + 1
    return ny, nx, (0, pad_x, 0, pad_y)
