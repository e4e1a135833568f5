"""Pure array functions of the paper's preprocessing (its step 2), slicing along a plane, and
resampling the slices to a common in-plane pixel spacing (and back)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import gaussian
from skimage.transform import resize

__all__ = [
    "PLANE_AXIS",
    "SliceGrid",
    "slice_grid",
    "resize_in_plane",
    "label_slices",
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
        percentiles: (low, high) in percent, e.g. (0.5, 99.5): the low one maps to 0, the
            high one to 1.
    """
    foreground = image[image > 0]
    values = foreground if foreground.size > 0.01 * image.size else image.ravel()
    low, high = np.percentile(values, percentiles)
    if high <= low:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)


def resize_in_plane(array: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Resizes the last two axes of ``array`` to ``shape`` (the others are kept as they are).

    Args:
        array: (..., H, W), e.g. (S, H, W) slices or (S, K, H, W) class probabilities.
        shape: the new (H', W').
        order: 0 (nearest: label maps) or 1 (bilinear: intensities, probabilities). Bilinear
            shrinking low-pass filters first (``skimage.transform.resize``'s anti-aliasing).
    """
    shape = tuple(int(v) for v in shape)
    if tuple(array.shape[-2:]) == shape:
        return array
    out_shape = (*array.shape[:-2], *shape)
    shrink = order > 0 and (shape[0] < array.shape[-2] or shape[1] < array.shape[-1])
    out = resize(
        array, out_shape, order=order, mode="edge", anti_aliasing=shrink, preserve_range=True
    )
    return out.astype(array.dtype, copy=False)


@dataclass(frozen=True)
class SliceGrid:
    """A volume's slices on its own grid (``native``) and on the network's (``working``).

    Attributes:
        native: (H, W) of the scan's slices along the plane.
        working: (H', W') after resampling to the configured in-plane spacing (= ``native``
            when no spacing is configured).
    """

    native: tuple[int, int]
    working: tuple[int, int]

    def to_working(self, slices: np.ndarray, order: int = 1) -> np.ndarray:
        return resize_in_plane(slices, self.working, order)

    def to_native(self, slices: np.ndarray, order: int = 1) -> np.ndarray:
        return resize_in_plane(slices, self.native, order)


def slice_grid(
    shape: tuple[int, int, int],
    voxel_spacing: tuple[float, float, float] | None,
    plane: str,
    spacing: float | None,
) -> SliceGrid:
    """The working grid of a canonical volume of ``shape`` with pixels of ``spacing`` mm.

    Args:
        shape: (X, Y, Z) of the canonical volume.
        voxel_spacing: its voxel size in mm along X, Y, Z.
        plane: the slicing plane.
        spacing: in-plane pixel size in mm the network works at (``data.preprocess.spacing``),
            or None to keep every scan's own grid.
    """
    axes = [a for a in range(3) if a != PLANE_AXIS[plane]]
    native = tuple(int(shape[a]) for a in axes)
    if spacing is None:
        return SliceGrid(native, native)
    if voxel_spacing is None:
        raise ValueError("preprocess.spacing is set, so the scan's voxel spacing is needed")
    if spacing <= 0:
        raise ValueError(f"preprocess.spacing={spacing}: use a pixel size in mm > 0, or null")
    working = tuple(
        max(1, int(round(n * float(voxel_spacing[a]) / spacing)))
        for n, a in zip(native, axes, strict=True)
    )
    return SliceGrid(native, working)


def preprocess_volume(
    image: np.ndarray,
    plane: str,
    noise_threshold: float,
    smooth_sigma: float,
    clip_percentiles: tuple[float, float],
    spacing: float | None = None,
    voxel_spacing: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Slicing, resampling to ``spacing``, noise removal, in-plane smoothing and normalisation.

    Args:
        image: (X, Y, Z) canonical volume.
        plane: the slicing plane.
        noise_threshold, smooth_sigma, clip_percentiles: see :func:`remove_noise`,
            :func:`smooth` (pixels of the working grid) and :func:`normalize`.
        spacing: in-plane pixel size (mm) to resample every slice to (bilinear, low-pass
            filtered when shrinking), so that a patch covers the same anatomy whatever the
            scanner's resolution; None keeps the scan's grid.
        voxel_spacing: the volume's voxel size in mm (needed with ``spacing``).

    Returns:
        (S, H', W') float32 slices in [0, 1] along ``plane`` on the working grid.
    """
    grid = slice_grid(image.shape, voxel_spacing, plane, spacing)
    if grid.working != grid.native:
        image = from_slices(grid.to_working(to_slices(image, plane), order=1), plane)
    image = remove_noise(image, noise_threshold)
    image = smooth(image, smooth_sigma, PLANE_AXIS[plane])
    image = normalize(image, tuple(clip_percentiles))
    return to_slices(image, plane)


def label_slices(
    labels: np.ndarray,
    plane: str,
    spacing: float | None = None,
    voxel_spacing: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """A canonical label volume as (S, H', W') slices on the working grid (nearest neighbour)."""
    grid = slice_grid(labels.shape, voxel_spacing, plane, spacing)
    return np.ascontiguousarray(grid.to_working(to_slices(labels, plane), order=0))


def to_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """Moves the plane's axis first: (X, Y, Z) -> (S, H, W), contiguous."""
    return np.ascontiguousarray(np.moveaxis(volume, PLANE_AXIS[plane], 0))


def from_slices(slices: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_slices`: (S, H, W) -> (X, Y, Z)."""
    return np.ascontiguousarray(np.moveaxis(slices, 0, PLANE_AXIS[plane]))
