"""Segmenting new scans with a model file: finding scans, segmenting them, writing the results.

For each scan, ``OUTPUT/NAME/`` receives the label map in the scan's own space, optional
probabilities, Fig. 7 overlays, a report (JSON and one CSV row) and one surface mesh per class.
The folder is assembled under a temporary name and renamed into place, so a failed or
interrupted scan never leaves a half-written result.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from penn.clinical import (
    class_volumes,
    csv_bytes,
    report_row,
    tumor_lesions,
    vertebral_bodies,
    voxel_volume_ml,
)
from penn.dicom import read_dicom_series, series_in_folder
from penn.evaluation import predict_volumes
from penn.inference import decide, postprocess
from penn.io import (
    SUFFIXES,
    Case,
    DataError,
    Volume,
    read_case,
    read_volume,
    write_atomic_bytes,
    write_json,
    write_nifti,
)
from penn.mesh import mesh_bytes, surface_mesh
from penn.preprocess import PLANE_AXIS, from_slices, preprocess_volume, slice_grid, to_slices
from penn.reports import overlay_figure, pick_slices

__all__ = [
    "PredictError",
    "Scan",
    "list_scans",
    "check_output",
    "read_scan",
    "segment_volume",
    "build_report",
    "write_scan",
    "label_values",
    "labelled_mask",
    "colour_tables",
]

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


def segment_volume(
    net,
    volume: Volume,
    data: dict,
    inference: dict,
    device,
    model: dict | None = None,
    progress: bool = False,
) -> tuple:
    """Segments one canonical volume as at training time (preprocessing, plane, threshold).

    ``model`` is the model file's ``level`` / ``context_offset`` (None: a patch classifier);
    ``progress`` shows a bar over the volume's slices.

    A model trained at an in-plane spacing (``data.preprocess.spacing``) sees the scan
    resampled to it, and its probabilities are resampled back to the scan's grid.

    Returns:
        (slices (S, H, W) preprocessed, on the scan's grid, labels (X, Y, Z) uint8 class map
        after post-processing, probabilities (X, Y, Z) float32 of the positive class for a
        binary model, else (X, Y, Z, K) per class).
    """
    plane = data["plane"]
    grid = slice_grid(volume.image.shape, volume.spacing, plane, data["preprocess"].get("spacing"))
    slices = preprocess_volume(
        volume.image, plane, voxel_spacing=volume.spacing, **data["preprocess"]
    )
    spacing = volume.spacing[PLANE_AXIS[plane]]  # between slices
    probs = predict_volumes(
        net,
        [slices],
        inference,
        model,
        device,
        progress=progress,
        patches=False,
        shapes=[grid.native],
        slice_spacings=[spacing],
    )[0].probs
    slices = grid.to_native(slices, order=1)
    labels = postprocess(decide(probs, inference["threshold"]), **inference["postprocess"])
    per_class = probs[:, 0] if probs.shape[1] == 1 else np.moveaxis(probs, 1, -1)
    return slices, from_slices(labels, plane), from_slices(per_class, plane).astype(np.float32)


def _levels(
    labels: np.ndarray,
    volume: Volume,
    class_names: list[str],
    vertebrae: np.ndarray | None,
    cfg: dict,
) -> tuple[np.ndarray | None, str]:
    """Numbered vertebral bodies from the model's vertebra class or a given mask, and the source."""
    name = cfg["vertebra_class"]
    if name in class_names:
        # a body with a lesion is still a body: count tumour voxels with it (as data.targets does)
        mask = labels == class_names.index(name) + 1
        if cfg["tumor_class"] in class_names:
            mask |= labels == class_names.index(cfg["tumor_class"]) + 1
        source = f"model class {name!r}"
    elif vertebrae is not None:
        mask, source = vertebrae, "vertebrae mask"
    else:
        return None, ""
    bodies, _ = vertebral_bodies(mask, volume.affine, cfg["connectivity"], cfg["min_body_voxels"])
    return bodies, source


def build_report(
    scan: Scan,
    volume: Volume,
    labels: np.ndarray,
    class_names: list[str],
    vertebrae: np.ndarray | None,
    cfg: dict,
) -> dict:
    """The scan's report: class volumes, tumour lesions and the vertebral levels they touch.

    Args:
        labels: (X, Y, Z) canonical class map.
        vertebrae: a vertebral-body mask on the same grid, used when the model has no vertebra
            class; None when there is none.
        cfg: the ``report`` config (class names to look for, connectivity, minimum body size).
    """
    bodies, source = _levels(labels, volume, class_names, vertebrae, cfg)
    tumor = {"components": None, "lesions": None, "levels": None, "levels_note": None}
    if cfg["tumor_class"] not in class_names:
        tumor["levels_note"] = f"the model has no {cfg['tumor_class']!r} class ({class_names})"
    else:
        mask = labels == class_names.index(cfg["tumor_class"]) + 1
        lesions = tumor_lesions(mask, volume.affine, cfg["connectivity"], bodies)
        tumor.update(components=len(lesions), lesions=lesions)
        if bodies is None:
            tumor["levels_note"] = (
                f"no vertebral levels: the model has no "
                f"{cfg['vertebra_class']!r} class and no vertebrae= mask "
                "was given"
            )
        else:
            touched = {lv for lesion in lesions for lv in lesion["levels"]}
            tumor["levels"] = sorted(touched, key=lambda lv: int(lv[2:]))
    n_bodies = None if bodies is None else int(bodies.max())
    return {
        "name": scan.name,
        "input": str(scan.path),
        "shape_ras": list(volume.image.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "voxel_volume_ml": voxel_volume_ml(volume.affine),
        "labels": {"background": 0, **{n: k for k, n in enumerate(class_names, start=1)}},
        "volumes": class_volumes(labels, class_names, volume.affine),
        "tumor": tumor,
        "vertebrae": {
            "source": source or None,
            "count": n_bodies,
            "order": "VB1 most inferior" if n_bodies is not None else None,
        },
    }


def _write_overlays(
    folder: Path,
    name: str,
    slices: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray | None,
    plane: str,
    count: int,
) -> list[str]:
    pred = to_slices(labels, plane)
    truth_slices = None if truth is None else to_slices(truth, plane)
    reference = truth_slices if truth_slices is not None and truth_slices.any() else pred
    files = []
    for s in pick_slices(reference, count) if count > 0 else []:
        png = overlay_figure(
            slices[s], None if truth is None else truth_slices[s], pred[s], f"{name} slice {s}"
        )
        files.append(write_atomic_bytes(folder / f"overlay_slice{s:03d}.png", png).name)
    return files


#: colours of the classes in the colour tables, by class name (others: :data:`_PALETTE`)
_COLOURS = {"vertebra": (241, 214, 145), "tumor": (216, 101, 79)}
_PALETTE = [(128, 174, 128), (111, 184, 210), (220, 245, 20), (183, 156, 220), (250, 250, 210)]


def label_values(classes: list[list[int]]) -> list[int]:
    """The value each class is written with in the mask: its first label value in the training
    data (``dataset.json`` of the training data, kept in the model file), so a tumour labelled 2
    there is 2 in the mask too."""
    return [int(values[0]) for values in classes]


def labelled_mask(class_map: np.ndarray, classes: list[list[int]]) -> np.ndarray:
    """A class map (0 background, k for class k) with each class's :func:`label_values` value
    instead of k: uint8, or uint16 when a value passes 255 (the mask's on-disk type)."""
    lut = np.array([0, *label_values(classes)])
    return lut.astype(np.uint8 if lut.max() < 256 else np.uint16)[class_map]


def colour_tables(values: list[int], class_names: list[str]) -> dict[str, bytes]:
    """The mask's colour table for 3D Slicer (``mask.ctbl``) and its ITK-SNAP label
    description file (``mask_itksnap.txt``): segment names and colours by label value."""
    colours = [
        _COLOURS.get(name, _PALETTE[k % len(_PALETTE)]) for k, name in enumerate(class_names)
    ]
    slicer = ["# penn colour table: label value, name, R G B A", "0 background 0 0 0 0"]
    itksnap = [
        "# ITK-SnAP Label Description File",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        '    0     0    0    0     0  0  0    "Clear Label"',
    ]
    for value, name, (r, g, b) in zip(values, class_names, colours, strict=True):
        slicer.append(f"{value} {name} {r} {g} {b} 255")
        itksnap.append(f'{value:5d} {r:5d} {g:4d} {b:4d}     1  1  1    "{name}"')
    return {
        "mask.ctbl": ("\n".join(slicer) + "\n").encode(),
        "mask_itksnap.txt": ("\n".join(itksnap) + "\n").encode(),
    }


def write_scan(
    out: Path,
    scan: Scan,
    volume: Volume,
    result: tuple,
    truth: np.ndarray | None,
    report: dict,
    classes: list[list[int]],
    class_names: list[str],
    plane: str,
    cfg: dict,
) -> Path:
    """Writes every output of one scan to ``out/NAME/`` (replacing an earlier result whole).

    Args:
        result: (slices, labels, probabilities) from :func:`segment_volume`.
        truth: canonical truth class map for the overlays, or None.
        classes: per class, its label values in the training data; the mask holds the first.
        cfg: the predict config (``write_probabilities``, ``overlays``, ``mesh``).
    """
    slices, labels, probs = result
    values = label_values(classes)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{scan.name}."))
    try:
        mask_values = labelled_mask(labels, classes)
        mask = write_nifti(tmp / "mask.nii.gz", mask_values, volume, dtype=mask_values.dtype)
        files = {"mask": mask.name}
        tables = colour_tables(values, class_names)
        for key, name in (("colour_table", "mask.ctbl"), ("itksnap_labels", "mask_itksnap.txt")):
            files[key] = write_atomic_bytes(tmp / name, tables[name]).name
        if cfg["write_probabilities"]:
            files["probabilities"] = write_nifti(
                tmp / "probabilities.nii.gz", probs, volume, dtype=np.float32
            ).name
        files["overlays"] = _write_overlays(
            tmp, scan.name, slices, labels, truth, plane, cfg["overlays"]
        )
        files["meshes"] = {}
        if cfg["mesh"]["enabled"]:
            for k, name in enumerate(class_names, start=1):
                verts, faces = surface_mesh(labels == k, volume.affine, cfg["mesh"]["step_size"])
                if len(faces) == 0:
                    files["meshes"][name] = None
                    continue
                fmt = cfg["mesh"]["format"]
                payload = mesh_bytes(verts, faces, fmt, f"penn {scan.name} {name} mm")
                files["meshes"][name] = write_atomic_bytes(tmp / f"mesh_{name}.{fmt}", payload).name
        write_json(tmp / "report.json", {**report, "files": files})
        write_atomic_bytes(tmp / "report.csv", csv_bytes([report_row(report)]))
        return _swap_into_place(tmp, out / scan.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, target: Path) -> Path:
    """Renames the finished folder to ``target``, replacing an older result."""
    # mkdtemp and mkstemp make owner-only entries; results are meant to be shared like any file
    os.chmod(tmp, 0o755)
    for path in tmp.iterdir():
        os.chmod(path, 0o644)
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
        os.replace(target, old / target.name)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target
