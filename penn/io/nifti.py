"""NIfTI volumes in canonical RAS+ orientation: reading with checks, writing on the input's grid."""

from __future__ import annotations

import logging
import os
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from penn.io.volume import DataError, Volume

__all__ = ["read_volume", "write_nifti"]

log = logging.getLogger(__name__)


def load_canonical(path: Path) -> tuple[np.ndarray, nib.Nifti1Image, np.ndarray]:
    """Loads a 3D NIfTI file and returns (canonical array, image, orientation back to file)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise DataError(f"{path}: cannot read NIfTI file ({type(err).__name__}: {err})") from err
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got {array.ndim}D of shape {array.shape}")
    file_ornt = nib.orientations.io_orientation(img.affine)
    to_canonical = nib.orientations.ornt_transform(file_ornt, nib.orientations.axcodes2ornt("RAS"))
    canonical = nib.orientations.apply_orientation(array, to_canonical)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), file_ornt)
    return np.ascontiguousarray(canonical), img, back


def _canonical_affine(img: nib.Nifti1Image, shape: tuple[int, ...]) -> np.ndarray:
    """The affine of the canonical (RAS+) reordering of ``img`` (no data is loaded)."""
    file_ornt = nib.orientations.io_orientation(img.affine)
    to_canonical = nib.orientations.ornt_transform(file_ornt, nib.orientations.axcodes2ornt("RAS"))
    return img.affine @ nib.orientations.inv_ornt_aff(to_canonical, shape)


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image, np.ndarray]:
    """Reads one 3D NIfTI image in canonical orientation as float32.

    Returns:
        (image (X, Y, Z) float32, canonical affine, the nibabel image, orientation back to file).

    Raises:
        DataError: unreadable or corrupt file, not 3D, or NaN/Inf voxels.
    """
    path = Path(path)
    array, img, back = load_canonical(path)
    image = array.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        n_bad = int((~np.isfinite(image)).sum())
        raise DataError(f"{path}: {n_bad} NaN/Inf voxels")
    affine = _canonical_affine(img, img.shape[:3])
    return image, np.asarray(affine, dtype=np.float64), img, back


def write_nifti(path: str | Path, array: np.ndarray, volume: Volume, dtype=np.uint8) -> Path:
    """Writes a canonical-order array back in the original file's orientation, affine and header.

    Args:
        path: output ``.nii.gz`` path (written atomically).
        array: (X, Y, Z) array in the canonical orientation of ``volume``.
        volume: the volume the array belongs to (gives orientation, affine, header).
        dtype: on-disk data type.
    """
    path = Path(path)
    native = nib.orientations.apply_orientation(array, volume.original_ornt).astype(dtype)
    header = volume.header.copy()
    header.set_data_dtype(dtype)
    out = nib.Nifti1Image(native, volume.original_affine, header)
    out.header.set_slope_inter(1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(out, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
