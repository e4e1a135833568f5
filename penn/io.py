"""Reading and writing NIfTI volumes in the nnU-Net raw layout.

Every volume is reoriented to the closest canonical (RAS+) orientation on reading, so axis 0 runs
left-right (``image[x]`` is a sagittal slice), axis 1 posterior-anterior, axis 2
inferior-superior.
The original affine and header are kept so results can be written back in the scan's own space.
Every bad input raises :class:`DataError` with the file and the problem in its message.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "Case",
    "Volume",
    "list_cases",
    "read_dataset_json",
    "read_volume",
    "read_case",
    "write_nifti",
    "write_atomic_bytes",
    "write_json",
]

SUFFIXES = (".nii.gz", ".nii")


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


def _strip_suffix(path: Path) -> str:
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def read_dataset_json(root: Path) -> dict:
    """Reads ``root/dataset.json`` (nnU-Net format).

    Raises:
        DataError: when the file is missing or is not valid JSON with a ``labels`` mapping.
    """
    path = Path(root) / "dataset.json"
    if not Path(root).is_dir():
        raise DataError(f"{root}: data folder not found")
    if not path.is_file():
        raise DataError(f"{path}: dataset.json not found (expected nnU-Net raw layout)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta.get("labels"), dict):
        raise DataError(f"{path}: no 'labels' mapping of class name to value")
    return meta


def list_cases(root: str | Path, require_labels: bool = True) -> list[Case]:
    """Lists the cases of a dataset in the nnU-Net raw layout, sorted by name.

    Args:
        root: folder holding ``imagesTr/NAME_0000.nii.gz`` and ``labelsTr/NAME.nii.gz``.
        require_labels: raise when an image has no label file.

    Raises:
        DataError: missing folder, no images, or a missing label file.
    """
    root = Path(root)
    images_dir = root / "imagesTr"
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: imagesTr folder not found (expected nnU-Net raw layout)")
    cases = []
    for image_path in sorted(images_dir.iterdir()):
        stem = _strip_suffix(image_path)
        if not image_path.name.endswith(SUFFIXES) or not stem.endswith("_0000"):
            continue
        name = stem[: -len("_0000")]
        label_path = next(
            (p for s in SUFFIXES if (p := root / "labelsTr" / f"{name}{s}").is_file()), None
        )
        if label_path is None and require_labels:
            raise DataError(f"{image_path}: no label file labelsTr/{name}.nii.gz")
        cases.append(Case(name, image_path, label_path))
    if not cases:
        raise DataError(f"{images_dir}: no images named NAME_0000.nii.gz")
    return cases


def _load_canonical(path: Path) -> tuple[np.ndarray, nib.Nifti1Image, np.ndarray]:
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
    array, img, back = _load_canonical(path)
    image = array.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        n_bad = int((~np.isfinite(image)).sum())
        raise DataError(f"{path}: {n_bad} NaN/Inf voxels")
    affine = _canonical_affine(img, img.shape[:3])
    return image, np.asarray(affine, dtype=np.float64), img, back


def read_case(case: Case, label_values: list[int] | None = None) -> Volume:
    """Reads a case's image and labels, checks them against each other, returns a :class:`Volume`.

    Args:
        case: the case to read.
        label_values: the allowed label values (from dataset.json); None skips that check.

    Raises:
        DataError: any problem with either file, naming the file.
    """
    image, affine, img, back = read_volume(case.image_path)
    labels = None
    if case.label_path is not None:
        array, _, _ = _load_canonical(case.label_path)
        if array.shape != image.shape:
            raise DataError(
                f"{case.label_path}: shape {array.shape} != image {case.image_path.name} "
                f"shape {image.shape}"
            )
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError(f"{case.label_path}: labels must be finite integers")
        labels = array.astype(np.uint8)
        if label_values is not None:
            unknown = sorted(set(np.unique(array).tolist()) - set(label_values))
            if unknown:
                raise DataError(
                    f"{case.label_path}: label values {unknown} outside the known classes "
                    f"{sorted(label_values)}"
                )
    return Volume(case.name, image, labels, affine, img.affine, back, img.header)


def write_atomic_bytes(path: str | Path, payload: bytes) -> Path:
    """Writes bytes to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: dict) -> Path:
    """Writes a JSON object atomically (sorted keys, indented)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n"
    return write_atomic_bytes(path, text.encode())


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
