"""Lesion-level detection: lesions found and missed by size, false lesions per scan.

A lesion is a 3D connected component (26-connectivity) of a class mask. A true lesion is
*found* when the predicted mask covers at least ``min_overlap`` of its voxels; a predicted
lesion is *false* when less than ``min_overlap`` of its voxels lie in true lesions. Sizes are in
mL through the scan's voxel size, binned by ``size_bins_ml`` (``[1, 5]``: under 1 mL, 1-5 mL,
over 5 mL).

Examples::

    per_scan = [match_lesions(pred == 2, truth == 2, volume.spacing, 0.1)]
    detection_metrics(per_scan, [1.0, 5.0], "test/lesion")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.measure import label as connected_components

__all__ = ["ScanLesions", "match_lesions", "detection_metrics", "bin_names", "lesion_class"]


@dataclass(frozen=True)
class ScanLesions:
    """One scan's true lesions (their volumes in mL and whether each was found) and how many
    predicted lesions matched no true one."""

    volumes_ml: tuple[float, ...]
    found: tuple[bool, ...]
    false: int


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labelled, n = connected_components(mask, connectivity=mask.ndim, return_num=True)
    return labelled, int(n)


def match_lesions(
    pred: np.ndarray, truth: np.ndarray, spacing, min_overlap: float = 0.1
) -> ScanLesions:
    """Matches the lesions of one scan's boolean ``pred`` and ``truth`` masks (same shape)."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    pred, truth = pred.astype(bool), truth.astype(bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    true_lab, n_true = _components(truth)
    pred_lab, n_pred = _components(pred)
    size = np.bincount(true_lab.ravel(), minlength=n_true + 1)[1:]
    covered = np.bincount(true_lab[pred], minlength=n_true + 1)[1:]
    pred_size = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)[1:]
    pred_hit = np.bincount(pred_lab[truth], minlength=n_pred + 1)[1:]
    return ScanLesions(
        volumes_ml=tuple(float(v) * voxel_ml for v in size),
        found=tuple(bool(c >= min_overlap * s) for c, s in zip(covered, size, strict=True)),
        false=int((pred_hit < min_overlap * pred_size).sum()),
    )


def bin_names(size_bins_ml: list[float]) -> list[str]:
    """Key suffixes of the size bins: ``[1, 5]`` -> under_1ml, 1_5ml, over_5ml."""
    edges = [f"{e:g}".replace(".", "p") for e in size_bins_ml]
    middle = [f"{a}_{b}ml" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [f"under_{edges[0]}ml", *middle, f"over_{edges[-1]}ml"]


def detection_metrics(
    per_scan: list[ScanLesions], size_bins_ml: list[float], prefix: str
) -> dict[str, float]:
    """Flat ``{prefix}/...`` metrics over scans: ``lesions``, ``found``, ``missed``,
    ``sensitivity``, ``false``, ``false_per_scan``, and per size bin ``lesions_<bin>`` and
    ``sensitivity_<bin>`` (NaN when a bin holds no lesion)."""
    volumes = np.array([v for s in per_scan for v in s.volumes_ml], float)
    found = np.array([f for s in per_scan for f in s.found], bool)
    false = sum(s.false for s in per_scan)
    out = {
        f"{prefix}/lesions": float(len(volumes)),
        f"{prefix}/found": float(found.sum()),
        f"{prefix}/missed": float((~found).sum()),
        f"{prefix}/sensitivity": float(found.mean()) if len(found) else math.nan,
        f"{prefix}/false": float(false),
        f"{prefix}/false_per_scan": false / len(per_scan) if per_scan else math.nan,
    }
    which = np.digitize(volumes, size_bins_ml)  # 0: under the first edge
    for k, name in enumerate(bin_names(size_bins_ml)):
        inside = which == k
        out[f"{prefix}/lesions_{name}"] = float(inside.sum())
        out[f"{prefix}/sensitivity_{name}"] = (
            float(found[inside].mean()) if inside.any() else math.nan
        )
    return out


def lesion_class(class_names: list[str], settings: dict | None) -> int | None:
    """The class map value (1-based) of ``settings["class_name"]`` among ``class_names``, or
    None when detection is off (no settings) or the model has no such class."""
    if not settings or settings.get("class_name") not in class_names:
        return None
    return class_names.index(settings["class_name"]) + 1
