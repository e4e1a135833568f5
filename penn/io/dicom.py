"""Reading one DICOM series as a :class:`penn.io.volume.Volume`: one file per slice, or an
enhanced multi-frame file (one frame per slice); compressed transfer syntaxes (JPEG, JPEG-LS,
JPEG 2000, RLE) are decoded by pydicom's pylibjpeg plugins.

DICOM positions are in the patient's LPS frame; penn (like NIfTI) works in RAS, so the affine is
built in LPS from the slice geometry and then has its x and y rows negated. Slices are sorted by
their position along the slice normal (file names and InstanceNumber are not trusted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from penn.io.volume import DataError, Volume

__all__ = ["Plane", "is_dicom_file", "read_dicom_series", "series_affine", "sorted_planes"]

log = logging.getLogger(__name__)

#: LPS (DICOM) -> RAS (NIfTI, penn): negate the first two world axes
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` starts with the DICOM preamble and ``DICM`` magic."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def series_in_folder(folder: str | Path) -> list[tuple[str, str]]:
    """The DICOM series of a folder as (SeriesInstanceUID, label), ordered by SeriesNumber.

    The label is ``s<SeriesNumber>`` (or ``s<k>`` when the number is missing or repeats). Only the
    headers are read; a folder with a file that is not readable DICOM counts as one series (the
    reading then names that file).
    """
    found: dict[str, tuple[int, str]] = {}
    for path in _files(Path(folder)):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            return [("", "")]
        uid = str(ds.get("SeriesInstanceUID", ""))
        number = ds.get("SeriesNumber")
        found.setdefault(uid, (int(number) if number not in (None, "") else 10**9, uid))
    ordered = sorted(found.items(), key=lambda item: item[1])
    numbers = [n for _, (n, _) in ordered]
    unique = len(set(numbers)) == len(numbers) and 10**9 not in numbers
    return [
        (uid, f"s{number}" if unique else f"s{k + 1}")
        for k, (uid, (number, _)) in enumerate(ordered)
    ]


@dataclass
class Plane:
    """One slice of a series: a classic file, or one frame of an enhanced multi-frame file."""

    where: str  # the file, and the frame of a multi-frame file, for messages
    ds: pydicom.Dataset
    frame: int | None
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]
    slope: float
    intercept: float

    def pixels(self) -> np.ndarray:
        try:
            array = self.ds.pixel_array
        except (AttributeError, ValueError, RuntimeError, NotImplementedError) as err:
            syntax = self.ds.file_meta.get("TransferSyntaxUID", "unknown")
            raise DataError(
                f"{self.where}: cannot decode pixel data of transfer syntax {syntax} "
                f"({type(err).__name__}: {err})"
            ) from err
        return array if self.frame is None else array[self.frame]


def _functional(ds: pydicom.Dataset, frame: int, sequence: str, item: str):
    """An attribute of an enhanced file's frame: its per-frame group, else the shared one."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        group = seq[frame] if groups.startswith("PerFrame") else seq[0]
        if sequence in group and item in group[sequence][0]:
            return group[sequence][0][item].value
    return None


def _frames(path: Path, ds: pydicom.Dataset) -> list[Plane]:
    """The slices of one file: itself, or each frame of an enhanced multi-frame file."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        missing = [k for k in _GEOMETRY if k not in ds]
        if missing:
            raise DataError(f"{path}: DICOM slice lacks {missing}")
        return [
            Plane(
                str(path),
                ds,
                None,
                np.asarray(ds.ImagePositionPatient, float),
                np.asarray(ds.ImageOrientationPatient, float),
                tuple(float(v) for v in ds.PixelSpacing),
                float(ds.get("RescaleSlope", 1) or 1),
                float(ds.get("RescaleIntercept", 0) or 0),
            )
        ]
    planes = []
    for k in range(int(ds.get("NumberOfFrames", 1))):
        position = _functional(ds, k, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(ds, k, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _functional(ds, k, "PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise DataError(f"{path} frame {k + 1}: no plane position, orientation or spacing")
        slope = _functional(ds, k, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(ds, k, "PixelValueTransformationSequence", "RescaleIntercept")
        planes.append(
            Plane(
                f"{path} frame {k + 1}",
                ds,
                k,
                np.asarray(position, float),
                np.asarray(orientation, float),
                tuple(float(v) for v in spacing),
                float(slope if slope not in (None, "") else 1),
                float(intercept if intercept not in (None, "") else 0),
            )
        )
    return planes


def _read_planes(folder: Path, series: str | None = None, pixels: bool = True) -> list[Plane]:
    """Every slice of the non-hidden files of ``folder``, checked to be one series; with
    ``series`` (a SeriesInstanceUID), the files of that series only; ``pixels=False``: the
    headers alone."""
    planes, uids = [], set()
    for path in _files(folder):
        try:
            header = None
            if series is not None or not pixels:
                header = pydicom.dcmread(path, stop_before_pixels=True)
                if series is not None and str(header.get("SeriesInstanceUID", "")) != series:
                    continue  # another series' pixels are not read
            ds = pydicom.dcmread(path) if pixels else header
        except (InvalidDicomError, OSError, EOFError, ValueError) as err:
            raise DataError(
                f"{path}: not a readable DICOM file ({type(err).__name__}: {err})"
            ) from err
        uids.add(str(ds.get("SeriesInstanceUID", "")))
        planes += _frames(path, ds)
    if not planes:
        raise DataError(f"{folder}: no DICOM files")
    if len(uids) > 1:
        raise DataError(f"{folder}: holds {len(uids)} DICOM series; put each in its own folder")
    return planes


def series_affine(
    orientation: np.ndarray, spacing: tuple[float, float], first: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """RAS voxel-to-world affine of arrays indexed ``[column, row, slice]``.

    Args:
        orientation: ImageOrientationPatient, 6 direction cosines (row direction, then column
            direction), LPS.
        spacing: PixelSpacing (distance between rows, distance between columns) in mm.
        first: ImagePositionPatient of the first slice (centre of its first pixel), LPS mm.
        step: LPS vector in mm from one slice's position to the next.
    """
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    lps = np.eye(4)
    # moving along a row (column index + 1) advances by the column spacing, PixelSpacing[1]
    lps[:3, 0] = row_dir * float(spacing[1])
    lps[:3, 1] = col_dir * float(spacing[0])
    lps[:3, 2] = step
    lps[:3, 3] = first
    return LPS_TO_RAS @ lps


def _slice_step(path: Path, positions: np.ndarray, normal: np.ndarray, ds) -> np.ndarray:
    """The LPS vector between consecutive sorted slices; checks that spacing is uniform."""
    if len(positions) == 1:
        thickness = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
        return normal * thickness
    gaps = np.diff(positions @ normal)
    if np.any(gaps < 1e-3):
        raise DataError(f"{path}: two slices share position {positions[np.argmin(gaps)].tolist()}")
    if np.ptp(gaps) > 1e-2 * gaps.mean() + 1e-3:
        raise DataError(
            f"{path}: slice spacing is not uniform ({gaps.min():.3f} to "
            f"{gaps.max():.3f} mm); cannot build one affine"
        )
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def read_dicom_series(
    folder: str | Path, name: str | None = None, series: str | None = None
) -> Volume:
    """Reads a folder holding one DICOM series into a canonical (RAS+) :class:`Volume`.

    Pixel values are scaled with RescaleSlope / RescaleIntercept. The volume's "original" space is
    the series' own ``[column, row, slice]`` grid, so results written with
    :func:`penn.io.nifti.write_nifti` overlay the DICOM images voxel for voxel.

    Args:
        folder: the series folder (every non-hidden file must be a DICOM slice of one series).
        name: case name; the folder name when None.
        series: a SeriesInstanceUID: read that series of a folder holding several
            (:func:`series_in_folder`); None: the folder must hold one series.

    Raises:
        DataError: unreadable files, mixed series, missing geometry tags, slices of different
            size or orientation, duplicate or non-uniform slice positions, NaN/Inf values.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: DICOM series folder not found")
    planes, positions, step = sorted_planes(folder, series)
    first = planes[0]
    size = (first.ds.Rows, first.ds.Columns)
    native = np.stack([_stored_plane(plane, size) for plane in planes], axis=-1)
    if not np.isfinite(native).all():
        raise DataError(f"{folder}: {int((~np.isfinite(native)).sum())} NaN/Inf voxels")
    affine = series_affine(first.orientation, first.spacing, positions[0], step)
    return _as_volume(name or folder.name, native.astype(np.float32), affine)


def sorted_planes(
    folder: str | Path, series: str | None = None, pixels: bool = True
) -> tuple[list[Plane], np.ndarray, np.ndarray]:
    """A series' slices sorted along their normal, as :func:`read_dicom_series` stacks them:
    (planes, their LPS positions (S, 3), the LPS step between slices), checked to share one
    size and orientation. ``pixels=False`` reads the headers only (no pixel data)."""
    folder = Path(folder)
    planes = _read_planes(folder, series, pixels)
    first = planes[0]
    size = (first.ds.Rows, first.ds.Columns)
    for plane in planes:
        if (plane.ds.Rows, plane.ds.Columns) != size:
            raise DataError(
                f"{plane.where}: {plane.ds.Rows}x{plane.ds.Columns} pixels != "
                f"{first.where} {size[0]}x{size[1]}"
            )
        if not np.allclose(plane.orientation, first.orientation, atol=1e-4):
            raise DataError(f"{plane.where}: ImageOrientationPatient differs from {first.where}")
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    positions = np.array([plane.position for plane in planes])
    order = np.argsort(positions @ normal, kind="stable")
    positions, planes = positions[order], [planes[i] for i in order]
    return planes, positions, _slice_step(folder, positions, normal, first.ds)


def _stored_plane(plane: Plane, size: tuple[int, int]) -> np.ndarray:
    """A slice's rescaled values, indexed [column, row]."""
    pixels = plane.pixels().astype(np.float64)
    if pixels.shape != size:
        raise DataError(f"{plane.where}: pixel data of shape {pixels.shape}, expected one 2D frame")
    return (pixels * plane.slope + plane.intercept).T


def _as_volume(name: str, native: np.ndarray, affine: np.ndarray) -> Volume:
    """Wraps a native-order array and its affine as :func:`penn.io.dataset.read_case` wraps a
    file."""
    img = nib.Nifti1Image(native, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    ras = nib.orientations.axcodes2ornt("RAS")
    file_ornt = nib.orientations.io_orientation(affine)
    to_canonical = nib.orientations.ornt_transform(file_ornt, ras)
    image = np.ascontiguousarray(nib.orientations.apply_orientation(native, to_canonical))
    canonical_affine = affine @ nib.orientations.inv_ornt_aff(to_canonical, native.shape)
    back = nib.orientations.ornt_transform(ras, file_ornt)
    return Volume(name, image, None, canonical_affine, affine, back, img.header)
