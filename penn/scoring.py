"""Scores a split's predictions against its labels: pixel and patch metrics, per volume and
pooled."""

from __future__ import annotations

import numpy as np

from penn.inference.predictor import Prediction
from penn.io.labels import class_map
from penn.metrics import confusion_counts, summarize
from penn.patches.extract import label_patches
from penn.postprocess import (
    decide,
    postprocess,
)
from penn.preprocess import resize_in_plane

__all__ = ["score"]


def score(
    predictions: list[Prediction],
    labels: list[np.ndarray],
    classes: list[list[int]],
    class_names: list[str],
    patches: dict,
    inference: dict,
    threshold: float | None,
    stage: str,
    patch_labels: list[np.ndarray] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Thresholds, post-processes and scores predictions against raw label maps.

    Args:
        labels: per volume, the raw (S, H, W) label slices the pixel metrics compare with,
            on the grid of ``Prediction.probs``.
        patch_labels: the same on the network's working grid, where the patch grid lies, when
            the slices were resampled (``data.preprocess.spacing``); default ``labels``.

    Fills ``Prediction.labels`` and returns (flat metrics, per-volume pixel counts).
    """
    n_classes = len(classes) + 1
    stride, size = inference["stride"], patches["size"]
    per_volume, patch_total, rows = [], np.zeros((n_classes, 4), np.int64), []
    patch_labels = labels if patch_labels is None else patch_labels
    for pred, raw, grid_raw in zip(predictions, labels, patch_labels, strict=True):
        truth = class_map(raw, classes)
        pred.labels = postprocess(decide(pred.probs, threshold), **inference["postprocess"])
        counts = confusion_counts(pred.labels, truth, n_classes)
        per_volume.append(counts)
        rows.append(counts.tolist())
        patch_truth = label_patches(
            grid_raw, classes, size, stride, patches["rule"], patches["threshold"]
        )
        ny, nx = patch_truth.shape[1:]
        if pred.patch_probs is None:  # pixel-wise net: its mask, labelled by the patch rule
            class_values = [[k] for k in range(1, n_classes)]
            mask = resize_in_plane(pred.labels, grid_raw.shape[1:], order=0)
            patch_pred = label_patches(
                mask, class_values, size, stride, patches["rule"], patches["threshold"]
            )
        else:
            patch_pred = decide(pred.patch_probs[:, :, :ny, :nx], threshold)
        patch_total += confusion_counts(patch_pred, patch_truth, n_classes)
    return summarize(per_volume, patch_total, class_names, stage), rows
