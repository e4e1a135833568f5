"""A scan in memory (a canonical volume, its labels and affine), a dataset case, and the
one error type for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["DataError", "Case", "Volume"]


class DataError(ValueError):
    """Bad input data: the message names the file and the problem."""


@dataclass(frozen=True)
class Case:
    """One case of a raw dataset: an image file and, when present, its label file."""

    name: str
    image_path: Path
    label_path: Path | None


@dataclass
class Volume:
    """A volume in canonical (RAS+) voxel order with what is needed to write results back.

    Attributes:
        name: case name.
        image: (X, Y, Z) float32 intensities in canonical orientation.
        labels: (X, Y, Z) uint8 class labels, or None when the case has no label file.
        affine: 4x4 voxel-to-world affine of the canonical arrays.
        original_affine: the affine of the file as stored (for writing back in the scan's space).
        original_ornt: nibabel orientation that maps canonical arrays back to the file's axes.
        header: the image file's NIfTI header.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray | None
    affine: np.ndarray
    original_affine: np.ndarray
    original_ornt: np.ndarray
    header: nib.Nifti1Header = field(repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the canonical axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))
