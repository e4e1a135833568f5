"""The PE module: patch grids, patch labels from summed-area tables, and patch gathering."""

from __future__ import annotations

import numpy as np

__all__ = [
    "grid_starts",
    "window_sums",
    "label_patches",
    "gather_patches",
]


def grid_starts(length: int, patch_size: int, stride: int) -> np.ndarray:
    """Top-left corners of the patches that fit entirely inside ``length`` pixels at ``stride``."""
    if length < patch_size:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, length - patch_size + 1, stride, dtype=np.int64)


def window_sums(mask: np.ndarray, patch_size: int, stride: int) -> np.ndarray:
    """Sums of a mask over every patch of the grid, from a summed-area table (no patch loop).

    Args:
        mask: (S, H, W) array (bool or numbers).
        patch_size: patch side n.
        stride: grid step in pixels.

    Returns:
        (S, ny, nx) int64 (or float) sums over ``mask[s, y:y+n, x:x+n]`` at the grid's corners.
    """
    dtype = np.int64 if mask.dtype.kind in "bui" else np.float64
    table = np.zeros((mask.shape[0], mask.shape[1] + 1, mask.shape[2] + 1), dtype=dtype)
    np.cumsum(np.cumsum(mask, axis=1, dtype=dtype), axis=2, out=table[:, 1:, 1:])
    ys = grid_starts(mask.shape[1], patch_size, stride)
    xs = grid_starts(mask.shape[2], patch_size, stride)
    y0, x0 = np.ix_(ys, xs)
    y1, x1 = y0 + patch_size, x0 + patch_size
    return table[:, y1, x1] - table[:, y0, x1] - table[:, y1, x0] + table[:, y0, x0]


def label_patches(
    labels: np.ndarray,
    classes: list[list[int]],
    patch_size: int,
    stride: int,
    rule: str,
    threshold: float,
) -> np.ndarray:
    """Labels every patch of the grid (paper step 3).

    Args:
        labels: (S, H, W) integer label map.
        classes: for each output class k >= 1, the label values that make it up, e.g. ``[[2]]``
            (binary tumor target) or ``[[1], [2]]`` (vertebra and tumor). Class 0 is the rest.
        patch_size: patch side n.
        stride: grid step in pixels.
        rule: ``"fraction"`` (class k when >= ``threshold`` of the patch's pixels are of class k,
            the paper's 60 % rule) or ``"center"`` (the class of pixel (y + n//2, x + n//2)).
        threshold: pixel fraction for the fraction rule.

    Returns:
        (S, ny, nx) uint8 patch classes. Where several classes pass, the later one wins (tumor
        before vertebra), since a tumor patch inside a vertebra should count as tumor.
    """
    ys = grid_starts(labels.shape[1], patch_size, stride)
    xs = grid_starts(labels.shape[2], patch_size, stride)
    out = np.zeros((labels.shape[0], ys.size, xs.size), dtype=np.uint8)
    for k, values in enumerate(classes, start=1):
        member = np.isin(labels, values)
        if rule == "fraction":
            passed = window_sums(member, patch_size, stride) >= threshold * patch_size**2
        elif rule == "center":
            c = patch_size // 2
            passed = member[:, (ys + c)[:, None], (xs + c)[None, :]]
        else:
            raise ValueError(f"unknown patch label rule {rule!r}; use 'fraction' or 'center'")
        out[passed] = k
    return out


def gather_patches(
    slices: np.ndarray, slice_idx: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch_size: int
) -> np.ndarray:
    """Copies patches out of a stack of slices by index (one vectorised gather).

    Args:
        slices: (S, H, W) float32.
        slice_idx, ys, xs: (N,) integer slice index and top-left corner of each patch.
        patch_size: patch side n.

    Returns:
        (N, n, n) float32 patches.
    """
    offsets = np.arange(patch_size)
    rows = ys[:, None, None] + offsets[None, :, None]
    cols = xs[:, None, None] + offsets[None, None, :]
    return slices[slice_idx[:, None, None], rows, cols]
