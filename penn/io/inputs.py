"""The scans ``penn predict`` reads: NIfTI files, DICOM series, folders of either."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from penn.io.dataset import SUFFIXES, read_case
from penn.io.dicom import read_dicom_series, series_in_folder
from penn.io.nifti import read_volume
from penn.io.volume import Case, DataError, Volume

__all__ = ["PredictError", "Scan", "list_scans", "check_output", "read_scan", "read_mask"]

log = logging.getLogger(__name__)


class PredictError(ValueError):
    """A prediction request that cannot be carried out (bad paths or settings, failed scans)."""


@dataclass(frozen=True)
class Scan:
    """One scan to segment: a NIfTI file or a DICOM series folder."""

    name: str
    path: Path
    kind: str  # "nifti" | "dicom"
    series: str | None = None  # SeriesInstanceUID of a folder holding several DICOM series


def _dicom_scans(folder: Path) -> list[Scan]:
    """One scan per DICOM series of ``folder``: the folder's name, with ``_s<SeriesNumber>``
    when the folder holds several series."""
    series = series_in_folder(folder)
    if len(series) == 1:
        return [Scan(folder.name, folder, "dicom")]
    return [Scan(f"{folder.name}_{label}", folder, "dicom", uid) for uid, label in series]


def _scan_name(path: Path) -> str:
    """File name without ``.nii[.gz]`` and without nnU-Net's channel suffix ``_0000``."""
    stem = next((path.name[: -len(s)] for s in SUFFIXES if path.name.endswith(s)), path.stem)
    return stem[: -len("_0000")] if stem.endswith("_0000") else stem


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(SUFFIXES)


def list_scans(input_path: str | Path) -> list[Scan]:
    """The scans of ``input_path``, sorted by name.

    A ``.nii``/``.nii.gz`` file is one scan. A folder whose files are not NIfTI (and that has no
    subfolders) holds DICOM: one scan per series (named ``FOLDER_s<SeriesNumber>`` when there are
    several). Any other folder is a batch: each NIfTI file in it is a scan, and so is each series
    of each subfolder that holds files but no NIfTI; it is not recursed.

    Raises:
        PredictError: the input does not exist, is an unsupported file, or holds no scan.
    """
    path = Path(input_path)
    if path.is_file():
        if not _is_nifti(path):
            raise PredictError(
                f"{path}: input file is not .nii/.nii.gz (give a DICOM series as its folder)"
            )
        return [Scan(_scan_name(path), path, "nifti")]
    if not path.is_dir():
        raise PredictError(f"{path}: input not found")
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    folders = [p for p in entries if p.is_dir()]
    if files and not folders and not any(_is_nifti(p) for p in files):
        return _dicom_scans(path)
    scans = [Scan(_scan_name(p), p, "nifti") for p in files if _is_nifti(p)]
    ignored = [p.name for p in files if not _is_nifti(p)]
    if ignored:
        log.info("%s: ignoring %d files that are not NIfTI: %s", path, len(ignored), ignored[:5])
    for folder in folders:
        inside = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        if inside and not any(_is_nifti(p) for p in inside):
            scans.extend(_dicom_scans(folder))
        else:
            log.warning("%s: not a DICOM series (empty or holds NIfTI files), skipped", folder)
    names = [s.name for s in scans]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PredictError(f"{path}: several scans would share the output names {duplicates}")
    if not scans:
        raise PredictError(f"{path}: no .nii/.nii.gz files or DICOM series found")
    return sorted(scans, key=lambda s: s.name)


def check_output(input_path: str | Path, output: str | Path) -> Path:
    """Refuses an output folder that is, or is inside, the input folder; returns it resolved.

    Raises:
        PredictError: the output is inside the input folder, or is an existing file.
    """
    source, out = Path(input_path).resolve(), Path(output).resolve()
    if source.is_dir() and (out == source or source in out.parents):
        raise PredictError(
            f"{output}: output folder is inside the input folder {input_path}; "
            "choose one outside it (penn never writes into its input)"
        )
    if out.is_file():
        raise PredictError(f"{output}: output exists and is a file, not a folder")
    return out


def read_scan(scan: Scan, labels: str | Path | None = None) -> Volume:
    """Reads a scan (and, for a NIfTI file, an optional label file) as a canonical Volume.

    Raises:
        DataError: unreadable or inconsistent files (named in the message).
    """
    if scan.kind == "dicom":
        return read_dicom_series(scan.path, scan.name, scan.series)
    label_path = None if labels is None else Path(labels)
    if label_path is not None and not label_path.is_file():
        raise DataError(f"{label_path}: label file not found")
    return read_case(Case(scan.name, scan.path, label_path))


def read_mask(path: str | Path, volume: Volume) -> np.ndarray:
    """A mask file (non-zero voxels) on the grid of ``volume``, canonical order.

    Raises:
        DataError: unreadable file, or a grid (shape or affine) different from the scan's.
    """
    array, affine, _, _ = read_volume(path)
    if array.shape != volume.image.shape or not np.allclose(affine, volume.affine, atol=1e-3):
        raise DataError(
            f"{path}: grid {array.shape} does not match scan {volume.name} "
            f"{volume.image.shape} (shape or affine)"
        )
    return array != 0
