"""From probabilities to masks: the decision threshold, smoothing across slices, opening in the
plane, and the connected components kept.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import measure, morphology

__all__ = ["decide", "postprocess", "smooth_across_slices", "open_in_plane", "kept_components"]


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class map from probabilities (S, K, H, W): threshold for K = 1, argmax otherwise."""
    if probs.shape[1] == 1:
        return (probs[:, 0] >= threshold).astype(np.uint8)
    return probs.argmax(axis=1).astype(np.uint8)


def postprocess(
    labels: np.ndarray, min_size: int, keep_largest: int | None, opening_radius: int
) -> np.ndarray:
    """Optional clean-up of a class map, per foreground class, in 3D.

    Args:
        labels: (S, H, W) class map.
        min_size: remove connected components smaller than this many voxels (0: keep all).
        keep_largest: keep only this many largest components per class (None: all).
        opening_radius: binary opening within each slice with a disk of this radius (0: none).
    """
    out = np.zeros_like(labels)
    for c in np.unique(labels[labels > 0]):
        mask = open_in_plane(labels == c, opening_radius)
        if min_size > 0 or keep_largest:
            components = measure.label(mask)
            sizes = np.bincount(components.ravel())[1:]
            keep = np.flatnonzero(kept_components(sizes, min_size, keep_largest)) + 1
            mask = np.isin(components, keep)
        out[mask] = c
    return out


def smooth_across_slices(probs: np.ndarray, sigma_mm: float, slice_spacing: float) -> np.ndarray:
    """Gaussian smoothing of (S, K, H, W) pixel probabilities along the slice axis.

    The network sees one slice at a time; a lesion spans several slices, a spurious spot in one
    slice often only one. Smoothing with a Gaussian of ``sigma_mm`` (mirrored at the first and
    last slice) lowers such spots and keeps structures that continue across slices.

    Args:
        probs: (S, K, H, W) probabilities, slices in order.
        sigma_mm: the Gaussian's sigma in mm (0: ``probs`` unchanged).
        slice_spacing: distance between neighbouring slices in mm.
    """
    if sigma_mm <= 0:
        return probs
    if not slice_spacing or slice_spacing <= 0:
        raise ValueError(f"slice spacing {slice_spacing!r} mm: smoothing across slices needs > 0")
    return ndimage.gaussian_filter1d(probs, sigma_mm / slice_spacing, axis=0, mode="reflect")


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
