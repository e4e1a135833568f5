"""What ``penn predict`` writes for one scan: the mask with the data's label values, colour
tables, probabilities, the clinical report, meshes and overlays, moved into place atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from penn.inference.predictor import predict_volumes
from penn.io.files import write_atomic_bytes, write_json
from penn.io.inputs import Scan
from penn.io.labels import label_values, labelled_mask
from penn.io.nifti import write_nifti
from penn.io.volume import Volume
from penn.postprocess import decide, postprocess
from penn.preprocess import PLANE_AXIS, from_slices, preprocess_volume, slice_grid, to_slices
from penn.reports.clinical import (
    class_volumes,
    csv_bytes,
    report_row,
    tumor_lesions,
    vertebral_bodies,
    voxel_volume_ml,
)
from penn.reports.dicom_seg import dicom_seg_bytes
from penn.reports.figures import overlay_figure, pick_slices
from penn.reports.mesh import mesh_bytes, surface_mesh

__all__ = ["segment_volume", "build_report", "colour_tables", "write_scan"]

log = logging.getLogger(__name__)


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
    vertebrae: tuple[np.ndarray, str] | None,
    cfg: dict,
) -> tuple[np.ndarray | None, str]:
    """Numbered vertebral bodies from a given mask or the model's vertebra class, and the source.

    ``vertebrae`` is (mask, source) when given (a mask file, or another model's vertebra class).
    """
    name = cfg["vertebra_class"]
    if vertebrae is not None:
        mask, source = vertebrae
    elif name in class_names:
        # a body with a lesion is still a body: count tumour voxels with it (as data.targets does)
        mask = labels == class_names.index(name) + 1
        if cfg["tumor_class"] in class_names:
            mask |= labels == class_names.index(cfg["tumor_class"]) + 1
        source = f"model class {name!r}"
    else:
        return None, ""
    bodies, _ = vertebral_bodies(mask, volume.affine, cfg["connectivity"], cfg["min_body_voxels"])
    return bodies, source


def build_report(
    scan: Scan,
    volume: Volume,
    labels: np.ndarray,
    class_names: list[str],
    vertebrae: tuple[np.ndarray, str] | None,
    cfg: dict,
) -> dict:
    """The scan's report: class volumes, tumour lesions and the vertebral levels they touch.

    Args:
        labels: (X, Y, Z) canonical class map.
        vertebrae: (mask, source): a vertebral-body mask on the same grid that numbers the
            bodies instead of the model's own vertebra class, and where it came from; None:
            the model's vertebra class, if it has one.
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
                f"{cfg['vertebra_class']!r} class, and neither a vertebrae= mask nor "
                "report.bodies_model was given"
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
        cfg: the predict config (``write_probabilities``, ``overlays``, ``mesh``,
            ``dicom_seg``: a DICOM SEG ``seg.dcm`` beside the mask when the scan is DICOM).
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
        if cfg.get("dicom_seg", True) and scan.kind == "dicom":
            files["dicom_seg"] = _write_dicom_seg(tmp, scan, volume, labels, class_names)
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


def _write_dicom_seg(tmp: Path, scan: Scan, volume: Volume, labels, class_names) -> str | None:
    """``seg.dcm`` of a DICOM scan; a series highdicom cannot reference (a required attribute
    missing, as in some stripped exports) gets a warning instead, the other outputs stay."""
    try:
        payload = dicom_seg_bytes(labels, volume, scan.path, scan.series, class_names)
    except (AttributeError, ValueError, TypeError, KeyError) as err:
        log.warning("%s: no DICOM SEG written (%s: %s)", scan.path, type(err).__name__, err)
        return None
    return write_atomic_bytes(tmp / "seg.dcm", payload).name


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
