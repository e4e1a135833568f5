"""External validation: a trained model scored on a labelled collection it was not trained on.

A model trained on one collection (scanner, sequence, patients) is segmented onto another, with
the decision it was calibrated with (threshold and clean-up from the model file), and scored

- over the **whole** volume, and
- over the **labelled extent**: the axial planes between the lowest and the highest labelled
  voxel. Collections label different stretches of the spine (one T11-L5, another down to the
  sacrum), so outside the extent an unlabelled vertebra segmented correctly counts as a false
  positive over the whole volume; over the extent it does not.

Keys are ``external/<scope>/<level>/<metric>`` with scope ``whole`` or ``extent``, level
``pixel`` (mean over volumes) or ``pixel_pooled`` (all voxels together), and the six metrics
plus ``hd95_mm`` and ``asd_mm`` (per volume, then their mean). A model with the lesion class of
``inference.lesion_detection`` also gets ``external/lesion/...`` (:mod:`penn.lesion_detection`,
over the whole volumes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from penn.checkpoint import load_model
from penn.inference.predictor import segment_folder
from penn.io.labels import class_map
from penn.lesion_detection import detection_metrics, lesion_class, match_lesions
from penn.metrics import (
    METRICS,
    confusion_counts,
    metrics_from_counts,
    summarize,
    surface_distances,
)
from penn.postprocess import decide, postprocess
from penn.preprocess import from_slices

__all__ = ["AXIAL_AXIS", "evaluate_external", "labelled_extent", "score_volume", "segmented_cases"]

log = logging.getLogger(__name__)

# penn reads every volume in canonical RAS+ orientation (penn.io.dataset), so axis 2 runs
# inferior -> superior and its planes are the axial ones
AXIAL_AXIS = 2


def labelled_extent(truth: np.ndarray, axis: int = AXIAL_AXIS) -> slice:
    """The planes along ``axis`` from the lowest to the highest labelled voxel of ``truth``.

    An empty ``truth`` has no extent: the whole axis is returned.
    """
    planes = np.flatnonzero(np.moveaxis(truth, axis, 0).reshape(truth.shape[axis], -1).any(1))
    if planes.size == 0:
        return slice(0, truth.shape[axis])
    return slice(int(planes[0]), int(planes[-1]) + 1)


def score_volume(
    pred: np.ndarray,
    truth: np.ndarray,
    n_classes: int,
    spacing: tuple[float, ...],
    labelled: np.ndarray | None = None,
) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
    """Confusion counts and surface distances of one volume, whole and over the labelled extent.

    Args:
        pred, truth: (X, Y, Z) class maps in canonical RAS+ orientation.
        n_classes: classes including the background.
        spacing: voxel size in mm.
        labelled: (X, Y, Z) mask of every labelled voxel of the case, any label (default
            ``truth > 0``): its axial extent is the ``extent`` scope.

    Returns:
        ``{"whole": (counts, surface), "extent": (counts, surface)}``: counts (n_classes, 4) as
        :func:`penn.metrics.confusion_counts`; surface ``{"hd95_mm", "asd_mm"}``, the mean over
        the foreground classes (NaN where a class is absent from either mask).
    """
    extent = [slice(None)] * truth.ndim
    extent[AXIAL_AXIS] = labelled_extent(truth > 0 if labelled is None else labelled)
    out = {}
    for scope, region in (("whole", ...), ("extent", tuple(extent))):
        p, t = pred[region], truth[region]
        distances = [surface_distances(p == c, t == c, spacing) for c in range(1, n_classes)]
        with np.errstate(all="ignore"):
            hd95, asd = np.nanmean(np.array(distances, dtype=float), axis=0)
        out[scope] = (confusion_counts(p, t, n_classes), {"hd95_mm": hd95, "asd_mm": asd})
    return out


def _summaries(per_scope: dict, class_names: list[str], n_classes: int) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for scope, (counts, surfaces) in per_scope.items():
        stage = f"external/{scope}"
        flat = summarize(counts, np.zeros((n_classes, 4), np.int64), class_names, stage)
        metrics |= {k: v for k, v in flat.items() if not k.startswith(f"{stage}/patch")}
        for key in ("hd95_mm", "asd_mm"):
            values = np.array([s[key] for s in surfaces], dtype=float)
            finite = values[np.isfinite(values)]
            metrics[f"{stage}/pixel/{key}"] = float(finite.mean()) if finite.size else float("nan")
    return metrics


def _row(name: str, scope: str, counts: np.ndarray, surface: dict[str, float]) -> dict:
    values = metrics_from_counts(*counts[1:].sum(axis=0))  # foreground classes together
    return {"case": name, "scope": scope} | {m: values[m] for m in METRICS} | surface


def segmented_cases(net, meta: dict, root: str | Path, progress: bool = True):
    """Yields (volume, mask) for every labelled case of ``root``: the (X, Y, Z) class map of
    the model's calibrated decision and post-processing, in canonical orientation."""
    inference = meta["inference"]
    folder = segment_folder(net, meta, Path(root), inference, progress=progress)
    for volume, pred in zip(folder.volumes, folder.predictions, strict=True):
        decided = postprocess(
            decide(pred.probs, inference["threshold"]), **inference["postprocess"]
        )
        yield volume, from_slices(decided, meta["data"]["plane"])


def evaluate_external(
    model_path: str | Path, root: str | Path, progress: bool = True
) -> tuple[dict[str, float], list[dict]]:
    """Segments every labelled case of ``root`` with a model file and scores it.

    Args:
        model_path: a ``model.pt`` written by ``penn.run``; its calibrated threshold,
            post-processing and classes (the label values it was trained on) are used.
        root: the external collection, in the nnU-Net raw layout.
        progress: progress bars over each volume's slices.

    Returns:
        (metrics, rows): the flat ``external/...`` metrics, and one row per case and scope
        (``case``, ``scope``, the six metrics, ``hd95_mm``, ``asd_mm``).
    """
    net, meta = load_model(model_path)
    inference, classes = meta["inference"], meta["data"]["classes"]
    class_names, n_classes = meta["data"]["class_names"], len(classes) + 1
    per_scope = {"whole": ([], []), "extent": ([], [])}
    rows, lesions = [], []
    detection = inference.get("lesion_detection")
    lesion_index = lesion_class(class_names, detection)
    for volume, mask in segmented_cases(net, meta, root, progress):
        truth = class_map(volume.labels, classes)
        labelled = volume.labels > 0  # every label, scored or not, bounds the extent
        scores = score_volume(mask, truth, n_classes, volume.spacing, labelled)
        if lesion_index is not None:
            lesions.append(
                match_lesions(
                    mask == lesion_index,
                    truth == lesion_index,
                    volume.spacing,
                    detection["min_overlap"],
                )
            )
        for scope, (counts, surface) in scores.items():
            per_scope[scope][0].append(counts)
            per_scope[scope][1].append(surface)
            rows.append(_row(volume.name, scope, counts, surface))
    metrics = _summaries(per_scope, class_names, n_classes)
    if lesion_index is not None:
        metrics |= detection_metrics(lesions, detection["size_bins_ml"], "external/lesion")
    log.info(
        "external %s: Dice %.3f over the labelled extent, %.3f over the whole volumes (%d cases)",
        root,
        metrics["external/extent/pixel/dice"],
        metrics["external/whole/pixel/dice"],
        len(rows) // len(per_scope),
    )
    return metrics, rows
