"""The six metrics of the paper (Eqs. 4-9) at pixel level (per volume and pooled) and patch level.

Counting is done by torchmetrics' stat-score metrics; :func:`metrics_from_counts` is the pure
arithmetic on TP/FP/TN/FN. F1 and Dice are the same formula 2TP / (2TP + FP + FN) at one level;
both are reported so tables line up with the paper's. A metric whose denominator is zero (for
example Dice of a volume without tumor where none was predicted) is NaN and left out of means,
as in nnU-Net's evaluation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassStatScores,
)

__all__ = [
    "METRICS",
    "metrics_from_counts",
    "confusion_counts",
    "patch_metric_collection",
    "summarize",
    "best_interval_dice",
]

METRICS = ("precision", "recall", "accuracy", "f1", "iou", "dice")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def metrics_from_counts(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """Precision, recall, accuracy, F1, IoU and Dice from pixel (or patch) counts.

    Returns:
        The six metrics in [0, 1], NaN where the denominator is zero.
    """
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def confusion_counts(
    pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, n_classes: int
) -> np.ndarray:
    """Per-class one-vs-rest counts of a class map against the truth.

    Args:
        pred, truth: integer class maps of the same shape, values in [0, n_classes).
        n_classes: number of classes including background.

    Returns:
        (n_classes, 4) int64 array of TP, FP, TN, FN per class.

    Raises:
        ValueError: when the shapes differ.
    """
    if tuple(pred.shape) != tuple(truth.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} != truth {tuple(truth.shape)}")
    stat = MulticlassStatScores(num_classes=n_classes, average=None, validate_args=False)
    counts = stat(
        torch.as_tensor(pred).reshape(-1).long(), torch.as_tensor(truth).reshape(-1).long()
    )
    return counts[:, :4].numpy().astype(np.int64)


def patch_metric_collection(n_classes: int, prefix: str) -> MetricCollection:
    """Torchmetrics collection of the six metrics for patch classification, logged per stage.

    Binary targets take probabilities of the positive class; multi-class ones take (B, C)
    probabilities and are macro-averaged over the foreground classes' scores.
    """
    if n_classes == 2:
        metrics = {
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "accuracy": BinaryAccuracy(),
            "f1": BinaryF1Score(),
            "iou": BinaryJaccardIndex(),
            "dice": BinaryF1Score(),
        }
    else:
        kw = {"num_classes": n_classes, "average": "macro"}
        metrics = {
            "precision": MulticlassPrecision(**kw),
            "recall": MulticlassRecall(**kw),
            "accuracy": MulticlassAccuracy(num_classes=n_classes, average="micro"),
            "f1": MulticlassF1Score(**kw),
            "iou": MulticlassJaccardIndex(**kw),
            "dice": MulticlassF1Score(**kw),
        }
    return MetricCollection(metrics, prefix=prefix)


def _flat(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def summarize(
    per_volume: list[np.ndarray], patch_counts: np.ndarray, class_names: list[str], stage: str
) -> dict[str, float]:
    """Flat metric dict from per-volume pixel counts and pooled patch counts.

    Args:
        per_volume: per volume, (n_classes, 4) counts from :func:`confusion_counts`.
        patch_counts: (n_classes, 4) patch-level counts.
        class_names: names of the foreground classes 1..n_classes-1.
        stage: key prefix, e.g. ``test``.

    Returns:
        ``{stage}/pixel/{metric}`` (mean over volumes), ``{stage}/pixel_pooled/{metric}``,
        ``{stage}/patch/{metric}``; with several foreground classes also per class
        (``{stage}/pixel/{class}/{metric}``) and the plain keys are means over classes.
    """
    out: dict[str, float] = {}
    pooled = np.sum(per_volume, axis=0)
    levels = {
        "pixel": lambda c: {
            m: float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan
            for m, v in _per_volume_table(per_volume, c).items()
        },
        "pixel_pooled": lambda c: metrics_from_counts(*pooled[c]),
        "patch": lambda c: metrics_from_counts(*patch_counts[c]),
    }
    for level, compute in levels.items():
        by_class = {name: compute(c) for c, name in enumerate(class_names, start=1)}
        if len(class_names) > 1:
            for name, values in by_class.items():
                out.update(_flat(f"{stage}/{level}/{name}", values))
        for m in METRICS:
            vals = [v[m] for v in by_class.values() if not math.isnan(v[m])]
            out[f"{stage}/{level}/{m}"] = float(np.mean(vals)) if vals else math.nan
    return out


def _per_volume_table(per_volume: list[np.ndarray], c: int) -> dict[str, np.ndarray]:
    rows = [metrics_from_counts(*counts[c]) for counts in per_volume]
    return {m: np.array([r[m] for r in rows]) for m in METRICS}


def best_interval_dice(images: list[np.ndarray], masks: list[np.ndarray], bins: int = 200) -> float:
    """The intensity-threshold baseline: best Dice of any global intensity band [lo, hi).

    Pooled over the volumes (one band for all). Candidate edges are ``bins`` quantiles of all
    voxels and of the target's voxels, so one-sided thresholds (above t / below t) and
    two-sided bands are all searched. A model that does not beat this has learned nothing a
    threshold could not do.

    Args:
        images: per volume, intensities (any shape).
        masks: per volume, boolean target masks of the same shape.
    """
    v = np.concatenate([im.ravel() for im in images])
    m = np.concatenate([mk.ravel() for mk in masks])
    q = np.linspace(0.0, 1.0, bins + 1)
    edges = np.unique(np.r_[np.quantile(v, q), np.quantile(v[m], q)])
    edges[-1] = np.nextafter(edges[-1], np.inf)
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    cum_all = np.r_[0, np.cumsum(np.bincount(idx, minlength=len(edges) - 1))]
    cum_tum = np.r_[0, np.cumsum(np.bincount(idx[m], minlength=len(edges) - 1))]
    pred = cum_all[None, :] - cum_all[:, None]  # voxels in band [edge_i, edge_j)
    tp = cum_tum[None, :] - cum_tum[:, None]
    dice = np.where(pred > 0, 2.0 * tp / np.maximum(pred + m.sum(), 1), 0.0)
    return float(dice.max())


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float]:
    """HD95 and the average symmetric surface distance of two binary masks, in mm (MONAI).

    Args:
        pred, truth: boolean masks of one shape (2D or 3D).
        spacing: the voxel size in mm along each axis of the masks.

    Returns:
        (hd95, asd): the 95th percentile of the distances between the two surfaces (both
        directions) and their symmetric mean; NaN when either mask is empty (no surface to
        measure), which :func:`numpy.nanmean` then leaves out of a mean over volumes.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ in shape")
    if not pred.any() or not truth.any():
        return math.nan, math.nan
    # imported here: monai.metrics takes seconds to import, and every entry point imports this
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    y_pred = torch.as_tensor(np.asarray(pred, dtype=bool))[None, None]
    y = torch.as_tensor(np.asarray(truth, dtype=bool))[None, None]
    spacing = [float(s) for s in spacing]
    hd95 = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing)
    asd = compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing)
    return float(hd95.item()), float(asd.item())
