"""From probabilities to masks: the decision threshold, smoothing across slices, opening in the
plane, and the connected components kept.
"""

from __future__ import annotations

import numpy as np
from skimage import measure, morphology

__all__ = ["decide", "postprocess", "class_min_size", "open_in_plane", "kept_components"]


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class map from probabilities (S, K, H, W): threshold for K = 1, argmax otherwise."""
    if probs.shape[1] == 1:
        return (probs[:, 0] >= threshold).astype(np.uint8)
    return probs.argmax(axis=1).astype(np.uint8)


def postprocess(
    labels: np.ndarray,
    min_size: int | list[int],
    keep_largest: int | None,
    opening_radius: int,
) -> np.ndarray:
    """Optional clean-up of a class map, per foreground class, in 3D.

    Args:
        labels: (S, H, W) class map.
        min_size: remove connected components smaller than this many voxels (0: keep all); a
            list gives one value per foreground class (class 1 first), as multi-class
            calibration chooses them.
        keep_largest: keep only this many largest components per class (None: all).
        opening_radius: binary opening within each slice with a disk of this radius (0: none).
    """
    out = np.zeros_like(labels)
    for c in np.unique(labels[labels > 0]):
        mask = open_in_plane(labels == c, opening_radius)
        smallest = class_min_size(min_size, int(c))
        if smallest > 0 or keep_largest:
            components = measure.label(mask)
            sizes = np.bincount(components.ravel())[1:]
            keep = np.flatnonzero(kept_components(sizes, smallest, keep_largest)) + 1
            mask = np.isin(components, keep)
        out[mask] = c
    return out


def class_min_size(min_size: int | list[int], c: int) -> int:
    """The ``min_size`` of foreground class ``c`` (1-based): one value for every class, or the
    class's entry of a per-class list."""
    if isinstance(min_size, list | tuple):
        if not 1 <= c <= len(min_size):
            raise ValueError(f"postprocess.min_size={list(min_size)} has no entry for class {c}")
        return int(min_size[c - 1])
    return int(min_size)


def open_in_plane(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening of an (S, H, W) mask within each slice with a disk (radius 0: ``mask``)."""
    if radius <= 0:
        return mask
    return morphology.opening(mask, morphology.disk(radius)[None])


def kept_components(sizes: np.ndarray, min_size: int, keep_largest: int | None) -> np.ndarray:
    """Which connected components (of these voxel counts) :func:`postprocess` keeps."""
    keep = sizes >= min_size
    if keep_largest:
        order = np.argsort(sizes, kind="stable")[::-1]
        keep[order[keep[order].cumsum() > keep_largest]] = False
    return keep
