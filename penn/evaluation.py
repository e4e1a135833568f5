"""Segments the volumes of a split, calibrates the decision threshold, and scores the result."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from skimage import measure

from penn.inference import (
    calibrate_threshold,
    decide,
    kept_components,
    open_in_plane,
    postprocess,
    segment_slices,
    segment_slices_pixelwise,
    smooth_across_slices,
)
from penn.io import DataError, Volume, list_cases, read_case, read_dataset_json
from penn.metrics import confusion_counts, summarize
from penn.models.ensemble import members_of
from penn.patches import label_patches
from penn.preprocess import PLANE_AXIS, label_slices, preprocess_volume, resize_in_plane, to_slices

__all__ = [
    "Prediction",
    "class_map",
    "predict_volumes",
    "calibrate",
    "calibrate_decision",
    "calibrate_min_size",
    "score",
    "segment_folder",
    "SegmentedFolder",
]

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Dense output for one volume, in slice order (S, ...).

    Attributes:
        probs: (S, K, H, W) pixel class probabilities (K = 1 for a binary network).
        patch_probs: (S, K, ny, nx) probabilities of the patches of the inference grid, for patch
            classifiers; None for pixel-wise nets, whose patch decisions are the patch labelling
            rule applied to their predicted class map.
        labels: (S, H, W) uint8 predicted classes after thresholding and post-processing.
    """

    probs: np.ndarray
    patch_probs: np.ndarray | None
    labels: np.ndarray | None = None


def class_map(labels: np.ndarray, classes: list[list[int]]) -> np.ndarray:
    """Maps raw label values to class indices: class k for ``classes[k-1]``'s values, else 0."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    for k, values in enumerate(classes, start=1):
        out[np.isin(labels, values)] = k
    return out


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict_volumes(
    net,
    slices: list[np.ndarray],
    inference: dict,
    model: dict | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    patches: bool = True,
    shapes: list[tuple[int, int]] | None = None,
    slice_spacings: list[float] | None = None,
) -> list[Prediction]:
    """Dense probabilities for each volume's (S, H, W) slices.

    Args:
        net: a patch classifier, or a pixel-wise net when ``model['level'] == 'pixel'``.
        slices: per volume, preprocessed (S, H, W) slices.
        inference: the inference config (``stride`` of the patch grid, ``batch_slices``,
            ``aggregate``: how patch probabilities become pixel probabilities).
        model: ``level`` (``patch`` default, or ``pixel``) and, for pixel-wise nets,
            ``context_offset`` (SAU-Net's neighbour offset, 0 otherwise).
        device: where to run (default: CUDA when there is a GPU, else CPU).
        progress: a progress bar over each volume's slices.
        patches: keep the patch-grid probabilities (False: ``patch_probs`` is None).
        shapes: per volume, the (H, W) of its own slices when ``slices`` were resampled to
            the network's spacing (``data.preprocess.spacing``): the pixel probabilities are
            resampled back to it (bilinear); the patch grid stays on the working grid.
        slice_spacings: per volume, the distance between its slices in mm; needed when
            ``inference.slice_sigma_mm`` > 0, which smooths the pixel probabilities across
            slices (:func:`penn.inference.smooth_across_slices`; the patch grid is left as the
            network gave it).
    """
    predictions = _predict(net, slices, inference, model, device, progress, patches)
    if shapes is not None:
        for pred, shape in zip(predictions, shapes, strict=True):
            pred.probs = resize_in_plane(pred.probs, shape, order=1)
    sigma = float(inference.get("slice_sigma_mm", 0.0))
    if sigma > 0:
        if slice_spacings is None:
            raise ValueError(
                f"inference.slice_sigma_mm={sigma:g} smooths across slices: pass each volume's "
                "slice spacing (slice_spacings)"
            )
        for pred, spacing in zip(predictions, slice_spacings, strict=True):
            pred.probs = smooth_across_slices(pred.probs, sigma, spacing)
    return predictions


def _predict(net, slices, inference, model, device, progress, patches) -> list[Prediction]:
    """Each member's read-out; an ensemble's probabilities (and patch grids) are their mean."""
    members = members_of(net)
    total = None
    for member in members:
        pred = _predict_one(member, slices, inference, model, device, progress, patches)
        if total is None:
            total = pred
            continue
        for acc, p in zip(total, pred, strict=True):
            acc.probs += p.probs
            if acc.patch_probs is not None:
                acc.patch_probs += p.patch_probs
    if len(members) > 1:
        for acc in total:
            acc.probs /= len(members)
            if acc.patch_probs is not None:
                acc.patch_probs /= len(members)
    return total


def _predict_one(net, slices, inference, model, device, progress, patches) -> list[Prediction]:
    model = model or {}
    device = device or default_device()
    net = net.eval().to(device)
    if model.get("level", "patch") == "pixel":
        offset = int(model.get("context_offset", 0))
        return [
            Prediction(
                segment_slices_pixelwise(
                    net, s, inference["batch_slices"], device, offset, progress=progress
                ),
                None,
            )
            for s in slices
        ]
    return [
        Prediction(
            *segment_slices(
                net,
                s,
                inference["stride"],
                inference["batch_slices"],
                device,
                progress=progress,
                aggregate=inference.get("aggregate", "mean"),  # files saved before it: mean
                center_sigma=inference.get("center_sigma", 0.0),
                patches=patches,
            )
        )
        for s in slices
    ]


def calibrate(predictions: list[Prediction], truths: list[np.ndarray], inference: dict):
    """Decision threshold from validation volumes (binary networks only).

    Args:
        predictions: validation predictions.
        truths: matching class maps (0/1).
        inference: the inference config (``calibration`` and ``threshold``).

    Returns:
        (threshold or None for multi-class argmax, a dict that records the choice).
    """
    method = inference["calibration"]["method"]
    if predictions[0].probs.shape[1] != 1:
        return None, {"method": "argmax"}
    if method == "fixed":
        return float(inference["threshold"]), {"method": "fixed"}
    if method not in ("grid", "joint"):
        raise ValueError(f"inference.calibration.method={method!r}: use 'joint', 'grid' or 'fixed'")
    if not any(t.any() for t in truths):
        log.warning(
            "the validation split holds no target voxel; keeping the fixed threshold %.2f",
            inference["threshold"],
        )
        return float(inference["threshold"]), {"method": "fixed (no target in validation)"}
    c = inference["calibration"]
    grid = np.round(np.arange(c["low"], c["high"] + 1e-9, c["step"]), 6)
    threshold, dice = calibrate_threshold(
        [p.probs[:, 0] for p in predictions], [t.astype(bool) for t in truths], grid
    )
    log.info("calibrated threshold %.3f on validation (pooled pixel Dice %.4f)", threshold, dice)
    return threshold, {"method": "grid", "val_pooled_dice": dice}


def calibrate_decision(
    predictions: list[Prediction], truths: list[np.ndarray], inference: dict
) -> tuple[float | None, int, dict]:
    """The decision threshold and post-processing ``min_size``, chosen on validation.

    ``inference.calibration.method``: ``joint`` searches every (threshold, min_size) pair of the
    threshold grid and ``calibration.min_sizes`` for the best validation Dice (pooled over the
    voxels, or with ``calibration.objective=mean`` the mean per volume as penn.metrics scores
    it; ties go to the largest ``min_size``, then the lowest threshold); ``grid`` chooses the
    threshold alone (:func:`calibrate`), then ``min_size`` at that threshold
    (:func:`calibrate_min_size`); ``fixed`` keeps ``inference.threshold``. Multi-class networks
    (argmax) choose ``min_size`` alone.

    Returns:
        (threshold or None for argmax, min_size, a dict that records the choice; its
        ``postprocess`` entry records the min_size candidates).
    """
    if inference["calibration"].get("objective", "pooled") != "pooled" and (
        inference["calibration"]["method"] != "joint"
    ):
        raise ValueError(
            "inference.calibration.objective="
            f"{inference['calibration']['objective']!r} needs calibration.method=joint"
        )
    joint = (
        inference["calibration"]["method"] == "joint"
        and predictions[0].probs.shape[1] == 1
        and any(t.any() for t in truths)
    )
    if not joint:
        threshold, record = calibrate(predictions, truths, inference)
        min_size, record["postprocess"] = calibrate_min_size(
            predictions, truths, threshold, inference
        )
        return threshold, min_size, record
    c, settings = inference["calibration"], inference["postprocess"]
    objective = c.get("objective", "pooled")
    if objective not in ("pooled", "mean"):
        raise ValueError(f"inference.calibration.objective={objective!r}: use 'pooled' or 'mean'")
    grid = np.round(np.arange(c["low"], c["high"] + 1e-9, c["step"]), 6)
    sizes = [int(m) for m in c.get("min_sizes") or [settings["min_size"]]]
    shape = (len(predictions), len(grid), len(sizes))
    tp, fp, n_pos = np.zeros(shape), np.zeros(shape), np.zeros((len(predictions), 1, 1))
    for v, (pred, truth) in enumerate(zip(predictions, truths, strict=True)):
        probs, truth = pred.probs[:, 0], truth.astype(bool).ravel()
        n_pos[v] = truth.sum()
        for i, threshold in enumerate(grid):
            mask = open_in_plane(probs >= threshold, settings["opening_radius"])
            components = measure.label(mask).ravel()
            size = np.bincount(components)[1:]
            hits = np.bincount(components, weights=truth, minlength=len(size) + 1)[1:]
            for j, min_size in enumerate(sizes):
                keep = kept_components(size, min_size, settings["keep_largest"])
                tp[v, i, j] = hits[keep].sum()
                fp[v, i, j] = (size[keep] - hits[keep]).sum()
    pooled = 2 * tp.sum(0) / np.maximum(tp.sum(0) + fp.sum(0) + n_pos.sum(), 1)
    # per volume as penn.metrics scores it: a volume with neither truth nor prediction has no
    # Dice and is left out of the mean; a false positive on a target-free volume scores 0
    den = tp + fp + n_pos
    with np.errstate(invalid="ignore"):
        per_volume = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
    counted = (den > 0).sum(0)
    mean = np.where(counted > 0, np.nansum(per_volume, 0) / np.maximum(counted, 1), 0.0)
    dice = pooled if objective == "pooled" else mean
    # ties: the largest min_size, then the lowest threshold. Validation holds no component of a
    # size between two tied candidates; over 81 recorded runs where it held some (250-1000
    # voxels), dropping them raised validation Dice 57 times in 58
    i, j = min(np.argwhere(dice == dice.max()).tolist(), key=lambda ij: (-sizes[ij[1]], ij[0]))
    threshold, min_size = float(grid[i]), sizes[j]
    log.info(
        "calibrated threshold %.3f and min_size %d together on validation (%s pixel Dice "
        "%.4f, pooled %.4f, mean per volume %.4f)",
        threshold,
        min_size,
        objective,
        dice[i, j],
        pooled[i, j],
        mean[i, j],
    )
    per_size = {m: float(dice[:, k].max()) for k, m in enumerate(sizes)}
    return (
        threshold,
        min_size,
        {
            "method": "joint",
            "objective": objective,
            "val_pooled_dice": float(pooled[i, j]),
            "val_mean_dice": float(mean[i, j]),
            "postprocess": {
                "min_size": min_size,
                "method": "joint",
                f"val_{objective}_dice": per_size,
            },
        },
    )


def calibrate_min_size(
    predictions: list[Prediction],
    truths: list[np.ndarray],
    threshold: float | None,
    inference: dict,
) -> tuple[int, dict]:
    """The post-processing ``min_size`` with the best pooled validation Dice.

    The candidates are ``inference.calibration.min_sizes`` (3D connected components smaller than
    this many voxels are dropped); an empty list keeps ``inference.postprocess.min_size``. The
    other post-processing settings are applied as configured. Multi-class: the mean over the
    foreground classes of their pooled Dice.

    Args:
        predictions: validation predictions.
        truths: matching class maps.
        threshold: the calibrated decision threshold (None: argmax).
        inference: the inference config.

    Returns:
        (chosen min_size, a dict that records every candidate's pooled validation Dice).
    """
    candidates = [int(m) for m in inference["calibration"].get("min_sizes") or []]
    current = int(inference["postprocess"]["min_size"])
    if not candidates or not any(t.any() for t in truths):
        return current, {"min_size": current, "method": "fixed"}
    n_classes = max(2, predictions[0].probs.shape[1])
    decided = [decide(p.probs, threshold) for p in predictions]
    dice = {}
    for size in candidates:
        settings = inference["postprocess"] | {"min_size": size}
        counts = sum(
            confusion_counts(postprocess(d, **settings), t, n_classes)
            for d, t in zip(decided, truths, strict=True)
        )
        tp, fp, fn = counts[1:, 0], counts[1:, 1], counts[1:, 3]
        dice[size] = float(np.mean(2 * tp / np.maximum(2 * tp + fp + fn, 1)))
    best = max(candidates, key=lambda m: (dice[m], m))  # ties: the largest (calibrate_decision)
    log.info("calibrated min_size %d on validation (pooled pixel Dice %.4f)", best, dice[best])
    return best, {"min_size": best, "method": "grid", "val_pooled_dice": dice}


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


@dataclass
class SegmentedFolder:
    """Every labelled case of a dataset folder, segmented (probabilities, not yet decided).

    Attributes:
        volumes: the cases as read (canonical RAS+ orientation, raw labels, voxel spacing).
        labels: per case, the raw (S, H, W) label slices on the scan's own grid.
        working_labels: the same on the network's working grid (``data.preprocess.spacing``).
        predictions: per case, the network's :class:`Prediction` on the scan's own grid.
    """

    volumes: list[Volume]
    labels: list[np.ndarray]
    working_labels: list[np.ndarray]
    predictions: list[Prediction]


def segment_folder(
    net, meta: dict, root, inference: dict, progress: bool = True
) -> SegmentedFolder:
    """Reads, preprocesses (as ``meta['data']`` says) and segments every labelled case of ``root``.

    Args:
        net: the trained network of a model file; ``meta`` its metadata
            (:func:`penn.checkpoint.load_model`).
        root: a dataset folder in the nnU-Net raw layout.
        inference: the inference settings (the model file's, possibly overridden).
        progress: a progress bar over each volume's slices.
    """
    data = meta["data"]
    allowed = sorted(int(v) for v in read_dataset_json(root)["labels"].values())
    plane, spacing = data["plane"], data["preprocess"].get("spacing")
    volumes, slices, labels, working_labels = [], [], [], []
    for case in list_cases(root):
        volume = read_case(case, allowed)
        volumes.append(volume)
        image = preprocess_volume(
            volume.image, plane, voxel_spacing=volume.spacing, **data["preprocess"]
        )
        slices.append(image)
        labels.append(to_slices(volume.labels, plane))
        working_labels.append(label_slices(volume.labels, plane, spacing, volume.spacing))
    if not slices:
        raise DataError(f"{root}: no labelled volumes")
    predictions = predict_volumes(
        net,
        slices,
        inference,
        meta["model"],
        progress=progress,
        shapes=[lab.shape[1:] for lab in labels],
        slice_spacings=[v.spacing[PLANE_AXIS[plane]] for v in volumes],
    )
    return SegmentedFolder(volumes, labels, working_labels, predictions)
