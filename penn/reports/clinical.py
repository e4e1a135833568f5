"""Clinical read-outs of a segmented scan: class volumes, tumour lesions and vertebral levels.

Everything is computed on canonical (RAS+) arrays with their affine, so volumes are in millilitres
and positions in scanner millimetres whatever the orientation of the file the scan came from.
"""

from __future__ import annotations

import csv
import io as _textio
import logging

import numpy as np
from scipy import ndimage
from skimage import measure

__all__ = [
    "voxel_volume_ml",
    "class_volumes",
    "vertebral_bodies",
    "tumor_lesions",
    "report_row",
    "csv_bytes",
]

log = logging.getLogger(__name__)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres: |det| of the affine's 3x3 part (mm^3) / 1000."""
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def class_volumes(
    labels: np.ndarray, class_names: list[str], affine: np.ndarray
) -> dict[str, dict]:
    """Voxel count and volume of each foreground class.

    Args:
        labels: (X, Y, Z) class map, 0 background and k for ``class_names[k - 1]``.
        class_names: names of the foreground classes.
        affine: voxel-to-world affine (mm).

    Returns:
        ``{name: {"voxels": int, "ml": float}}``.
    """
    counts = np.bincount(labels.ravel(), minlength=len(class_names) + 1)
    unit = voxel_volume_ml(affine)
    return {
        name: {"voxels": int(counts[k]), "ml": float(counts[k]) * unit}
        for k, name in enumerate(class_names, start=1)
    }


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    """World (mm) position of a fractional voxel index."""
    affine = np.asarray(affine, float)
    return affine[:3, :3] @ np.asarray(index, float) + affine[:3, 3]


def vertebral_bodies(
    mask: np.ndarray, affine: np.ndarray, connectivity: int, min_voxels: int
) -> tuple[np.ndarray, list[str]]:
    """Numbers the vertebral bodies of a mask from inferior to superior.

    Bodies are the 3D connected components of the mask with at least ``min_voxels`` voxels
    (smaller ones are segmentation noise, not bodies), ordered by the superior (RAS z) world
    coordinate of their centroid and named ``VB1`` (most inferior) to ``VBn``.

    Args:
        mask: (X, Y, Z) bool vertebral-body voxels.
        affine: voxel-to-world affine (RAS mm).
        connectivity: neighbourhood of :func:`skimage.measure.label` (1 to 3).
        min_voxels: smallest component that counts as a body.

    Returns:
        (bodies (X, Y, Z) int32 with i for ``VBi`` and 0 elsewhere, names ``["VB1", ...]``).
    """
    components = measure.label(mask, connectivity=connectivity)
    n = int(components.max())
    if n == 0:
        return np.zeros(mask.shape, np.int32), []
    sizes = np.bincount(components.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_voxels) + 1
    centroids = ndimage.center_of_mass(mask, components, keep) if len(keep) else []
    superior = [_world(affine, c)[2] for c in centroids]
    ordered = keep[np.argsort(superior, kind="stable")]
    lookup = np.zeros(n + 1, np.int32)
    lookup[ordered] = np.arange(1, len(ordered) + 1)
    return lookup[components], [f"VB{i}" for i in range(1, len(ordered) + 1)]


def tumor_lesions(
    mask: np.ndarray, affine: np.ndarray, connectivity: int, bodies: np.ndarray | None
) -> list[dict]:
    """Describes each 3D connected tumour component and the vertebral bodies it touches.

    A lesion touches a body when the lesion, grown by one face-connected voxel, overlaps it (so
    a lesion labelled right next to, not inside, a body still names its level).

    Args:
        mask: (X, Y, Z) bool tumour voxels.
        affine: voxel-to-world affine (RAS mm).
        connectivity: neighbourhood of :func:`skimage.measure.label` (1 to 3).
        bodies: numbered bodies from :func:`vertebral_bodies`, or None when unknown.

    Returns:
        Per lesion, largest first: ``id``, ``voxels``, ``ml``, ``centroid_ras_mm`` and
        ``levels`` (body names inferior to superior, or None without bodies).
    """
    components = measure.label(mask, connectivity=connectivity)
    unit = voxel_volume_ml(affine)
    grow = ndimage.generate_binary_structure(3, 1)
    lesions = []
    for k, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        lesion = components[box] == k
        voxels = int(lesion.sum())
        centroid = np.array(ndimage.center_of_mass(lesion)) + [s.start for s in box]
        levels = None
        if bodies is not None:
            touched = np.unique(bodies[box][ndimage.binary_dilation(lesion, grow)])
            levels = [f"VB{int(i)}" for i in touched if i > 0]
        lesions.append(
            {
                "voxels": voxels,
                "ml": voxels * unit,
                "centroid_ras_mm": [round(float(v), 2) for v in _world(affine, centroid)],
                "levels": levels,
            }
        )
    lesions.sort(key=lambda d: -d["voxels"])
    for i, lesion in enumerate(lesions, start=1):
        lesion["id"] = i
    return lesions


def report_row(report: dict) -> dict[str, object]:
    """One flat CSV row of a scan's report (volumes in mL, levels joined by ``;``)."""
    row: dict[str, object] = {
        "name": report["name"],
        "input": report["input"],
        "voxel_volume_ml": report["voxel_volume_ml"],
    }
    for name, volume in report["volumes"].items():
        row[f"{name}_ml"] = round(volume["ml"], 4)
    tumor = report["tumor"]
    row["tumor_components"] = "" if tumor["components"] is None else tumor["components"]
    row["tumor_levels"] = "" if tumor["levels"] is None else ";".join(tumor["levels"])
    row["levels_note"] = tumor["levels_note"] or ""
    return row


def csv_bytes(rows: list[dict[str, object]]) -> bytes:
    """CSV text (header + rows, columns in first-seen order) as bytes."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = _textio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()
