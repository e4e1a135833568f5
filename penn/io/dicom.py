"""Reading one DICOM series (one file per slice) as a :class:`penn.io.volume.Volume`.

DICOM positions are in the patient's LPS frame; penn (like NIfTI) works in RAS, so the affine is
built in LPS from the slice geometry and then has its x and y rows negated. Slices are sorted by
their position along the slice normal (file names and InstanceNumber are not trusted).
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from penn.io.volume import DataError, Volume

__all__ = ["is_dicom_file", "read_dicom_series", "series_affine"]

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


def _read_slices(folder: Path, series: str | None = None) -> list[tuple[Path, pydicom.Dataset]]:
    """Every non-hidden file of ``folder`` as (path, dataset), checked to be one series; with
    ``series`` (a SeriesInstanceUID), the files of that series only."""
    slices = []
    for path in _files(folder):
        try:
            if series is not None:  # the header first: another series' pixels are not read
                header = pydicom.dcmread(path, stop_before_pixels=True)
                if str(header.get("SeriesInstanceUID", "")) != series:
                    continue
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError) as err:
            raise DataError(
                f"{path}: not a readable DICOM file ({type(err).__name__}: {err})"
            ) from err
        missing = [k for k in _GEOMETRY if k not in ds]
        if missing:
            raise DataError(f"{path}: DICOM slice lacks {missing}")
        slices.append((path, ds))
    if not slices:
        raise DataError(f"{folder}: no DICOM files")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise DataError(f"{folder}: holds {len(series)} DICOM series; put each in its own folder")
    return slices


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
    slices = _read_slices(folder, series)
    path0, ds0 = slices[0]
    orientation = np.asarray(ds0.ImageOrientationPatient, float)
    for path, ds in slices:
        if (ds.Rows, ds.Columns) != (ds0.Rows, ds0.Columns):
            raise DataError(
                f"{path}: {ds.Rows}x{ds.Columns} pixels != {path0.name} {ds0.Rows}x{ds0.Columns}"
            )
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), orientation, atol=1e-4):
            raise DataError(f"{path}: ImageOrientationPatient differs from {path0.name}")
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    slices = [slices[i] for i in order]
    step = _slice_step(folder, positions, normal, ds0)
    planes = []
    for path, ds in slices:
        try:
            pixels = ds.pixel_array.astype(np.float64)
        except (AttributeError, ValueError, RuntimeError, NotImplementedError) as err:
            raise DataError(
                f"{path}: cannot decode pixel data ({type(err).__name__}: {err})"
            ) from err
        if pixels.shape != (ds0.Rows, ds0.Columns):
            raise DataError(f"{path}: pixel data of shape {pixels.shape}, expected one 2D frame")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        planes.append((pixels * slope + intercept).T)  # [row, column] -> [column, row]
    native = np.stack(planes, axis=-1).astype(np.float32)
    if not np.isfinite(native).all():
        raise DataError(f"{folder}: {int((~np.isfinite(native)).sum())} NaN/Inf voxels")
    affine = series_affine(orientation, ds0.PixelSpacing, positions[0], step)
    return _as_volume(name or folder.name, native, affine)


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
