"""Pure array functions of the paper's preprocessing (PAPER.md step 2) and slicing along a plane."""

from __future__ import annotations

import numpy as np
from skimage.filters import gaussian

__all__ = [
    "PLANE_AXIS",
    "remove_noise",
    "smooth",
    "normalize",
    "preprocess_volume",
    "to_slices",
    "from_slices",
]

#: axis of a canonical (RAS+) volume that is constant within a slice of each anatomical plane
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def remove_noise(image: np.ndarray, threshold: float) -> np.ndarray:
    """Threshold-based noise removal: zeroes voxels below ``threshold`` x the 99th percentile.

    A fraction of a robust maximum (not an absolute value) so that the same setting works for
    scanners and sequences with different intensity scales.

    Args:
        image: (X, Y, Z) float32 intensities.
        threshold: fraction of the 99th intensity percentile; 0 disables it.
    """
    if threshold <= 0:
        return image
    cutoff = threshold * np.percentile(image, 99.0)
    return np.where(image < cutoff, 0.0, image).astype(np.float32)


def smooth(image: np.ndarray, sigma: float, plane_axis: int) -> np.ndarray:
    """Gaussian smoothing within each slice (no smoothing across slices).

    Args:
        image: (X, Y, Z) float32.
        sigma: standard deviation in pixels (paper: 2); 0 disables it.
        plane_axis: the axis across which slices are taken.
    """
    if sigma <= 0:
        return image
    sigmas = [sigma] * image.ndim
    sigmas[plane_axis] = 0.0
    return gaussian(image, sigma=sigmas, preserve_range=True, mode="reflect").astype(np.float32)


def normalize(image: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Per-volume robust scaling to [0, 1]: clip at two percentiles of the non-zero voxels.

    Percentiles rather than min/max keep single hot voxels and different scanners' scales from
    deciding the contrast; [0, 1] is the range of the autoencoders' sigmoid decoders.

    Args:
        image: (X, Y, Z) float32.
        percentiles: (low, high) in percent, e.g. (0.5, 99.5).
    """
    foreground = image[image > 0]
    values = foreground if foreground.size > 0.01 * image.size else image.ravel()
    low, high = np.percentile(values, percentiles)
    if high <= low:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)


def preprocess_volume(
    image: np.ndarray,
    plane: str,
    noise_threshold: float,
    smooth_sigma: float,
    clip_percentiles: tuple[float, float],
) -> np.ndarray:
    """Noise removal, in-plane smoothing and normalisation (in this order), then slicing.

    Returns:
        (S, H, W) float32 slices in [0, 1] along ``plane``.
    """
    axis = PLANE_AXIS[plane]
    image = remove_noise(image, noise_threshold)
    image = smooth(image, smooth_sigma, axis)
    image = normalize(image, tuple(clip_percentiles))
    return to_slices(image, plane)


def to_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """Moves the plane's axis first: (X, Y, Z) -> (S, H, W), contiguous."""
    return np.ascontiguousarray(np.moveaxis(volume, PLANE_AXIS[plane], 0))


def from_slices(slices: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_slices`: (S, H, W) -> (X, Y, Z)."""
    return np.ascontiguousarray(np.moveaxis(slices, 0, PLANE_AXIS[plane]))
