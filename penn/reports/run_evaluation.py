"""The end of a training run: the trained network segments the validation and test splits,
is calibrated on validation, scored on test and on the external collection, and the results
are written.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from penn.calibration import calibrate_decision
from penn.checkpoint import model_info, save_model
from penn.inference.predictor import predict_volumes
from penn.io.files import write_json
from penn.io.labels import class_map, labelled_mask
from penn.io.nifti import write_nifti
from penn.lesion_detection import detection_metrics, lesion_class, match_lesions
from penn.lit.trainer import log_final
from penn.metrics import surface_distances
from penn.preprocess import from_slices, resize_in_plane
from penn.reports.external import evaluate_external
from penn.reports.figures import write_overlays
from penn.reports.run_files import write_csv, write_metrics
from penn.scoring import score
from penn.synth.lesion_dataset import lesion_dataset
from penn.synth.lesions import LesionSpec

__all__ = [
    "evaluate_and_write",
    "write_test_masks",
    "external_validation",
    "surface_means",
    "lesion_means",
]

log = logging.getLogger(__name__)


def _segment_split(net, dm, name: str, inference: dict, model: dict, progress: bool):
    """The split's predictions on each scan's own grid and its raw label slices there."""
    split, labels = dm.splits[name], dm.native_labels(name)
    predictions = predict_volumes(
        net,
        split.slices,
        inference,
        model,
        progress=progress,
        shapes=_shapes(labels),
        slice_spacings=split.slice_spacings(dm.plane),
    )
    return predictions, labels


def _score_split(dm, name: str, predictions, labels, inference: dict, threshold):
    """:func:`penn.scoring.score` of a split of the data module."""
    patch_labels = dm.splits[name].labels
    return score(
        predictions,
        labels,
        dm.classes,
        dm.class_names,
        dm.patch_cfg,
        inference,
        threshold,
        name,
        patch_labels=patch_labels,
    )


def _save_run_model(cfg: DictConfig, net, dm, out: Path, inference: dict, model: dict) -> None:
    """``out/model.pt``: the network with everything :mod:`penn.predict` needs to use it."""
    save_model(
        out / "model.pt",
        net,
        {
            "net": OmegaConf.to_container(cfg.model.net, resolve=True)
            | {"n_outputs": dm.n_outputs},
            "model": model,
            "data": {
                "plane": dm.plane,
                "preprocess": dm.preprocess_cfg,
                "patches": dm.patch_cfg,
                "classes": dm.classes,
                "class_names": dm.class_names,
            },
            "inference": inference,
        },
    )


def _write_test_overlays(cfg: DictConfig, dm, out: Path, predictions, labels) -> list[Path]:
    test, overlays = dm.splits["test"], []
    for name, slices, truth, pred in zip(test.names, test.slices, labels, predictions, strict=True):
        overlays += write_overlays(
            out / "overlays",
            name,
            resize_in_plane(slices, truth.shape[1:], order=1),
            class_map(truth, dm.classes),
            pred.labels,
            cfg.inference.overlays,
        )
    return overlays


def _volume_table(dm, per_volume: list) -> tuple[list[str], list[list]]:
    """The test split's counts per volume and class, with their Dice, as (columns, rows)."""
    rows = []
    for name, counts in zip(dm.splits["test"].names, per_volume, strict=True):
        for k, class_name in enumerate(dm.class_names, start=1):
            tp, fp, tn, fn = (int(v) for v in counts[k])
            dice = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")
            rows.append([name, class_name, tp, fp, tn, fn, dice])
    return ["volume", "class", "tp", "fp", "tn", "fn", "dice"], rows


def surface_means(volumes, predictions, classes, plane: str, stage: str) -> dict[str, float]:
    """``{stage}/pixel/hd95_mm`` and ``asd_mm``: per volume the mean over the foreground classes
    of :func:`penn.metrics.surface_distances` on the scan's own grid and voxel size, then the
    mean over the volumes where it is defined (NaN when none is)."""
    per_volume = []
    for volume, pred in zip(volumes, predictions, strict=True):
        mask, truth = from_slices(pred.labels, plane), class_map(volume.labels, classes)
        per_volume.append(
            [
                surface_distances(mask == c, truth == c, volume.spacing)
                for c in range(1, len(classes) + 1)
            ]
        )
    with np.errstate(all="ignore"):
        means = np.nanmean(np.array(per_volume, dtype=float), axis=1)  # (volumes, 2)
    out = {}
    for k, key in enumerate(("hd95_mm", "asd_mm")):
        finite = means[np.isfinite(means[:, k]), k]
        out[f"{stage}/pixel/{key}"] = float(finite.mean()) if finite.size else math.nan
    return out


def lesion_means(volumes, predictions, classes, class_names, plane, inference, stage):
    """``{stage}/lesion/...`` detection metrics (:mod:`penn.lesion_detection`) of the class
    ``inference.lesion_detection.class_name``; empty when the model has no such class."""
    settings = inference.get("lesion_detection")
    index = lesion_class(class_names, settings)
    if index is None:
        return {}
    per_scan = [
        match_lesions(
            from_slices(pred.labels, plane) == index,
            class_map(volume.labels, classes) == index,
            volume.spacing,
            settings["min_overlap"],
        )
        for volume, pred in zip(volumes, predictions, strict=True)
    ]
    return detection_metrics(per_scan, settings["size_bins_ml"], f"{stage}/lesion")


def evaluate_and_write(
    cfg: DictConfig, net, dm, out: Path, loggers, record: dict[str, float] | None = None
) -> dict[str, float]:
    """Calibrates on validation, scores the test split, writes metrics, model and overlays.

    Each split is segmented once; its probabilities serve calibration and every score.
    ``record`` (how training went: epochs, steps, times, parameters) is added to the metrics,
    with ``time/segment_s_per_volume``, the test split's segmentation wall time per volume.
    """
    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    model = model_info(cfg)
    progress = bool(cfg.trainer.get("enable_progress_bar", True))  # bars over each volume
    val_pred, val_labels = _segment_split(net, dm, "val", inference, model, progress)
    val_truth = [class_map(lab, dm.classes) for lab in val_labels]
    threshold, min_size, calibration = calibrate_decision(
        val_pred, val_truth, inference, dm.class_names
    )
    inference["postprocess"]["min_size"] = min_size
    val_metrics, _ = _score_split(dm, "val", val_pred, val_labels, inference, threshold)
    start = time.perf_counter()
    test_pred, test_labels = _segment_split(net, dm, "test", inference, model, progress)
    seconds = (time.perf_counter() - start) / max(len(test_pred), 1)
    metrics, per_volume = _score_split(dm, "test", test_pred, test_labels, inference, threshold)
    test = dm.splits["test"]
    metrics |= surface_means(test.volumes, test_pred, dm.classes, dm.plane, "test")
    metrics |= lesion_means(
        test.volumes, test_pred, dm.classes, dm.class_names, dm.plane, inference, "test"
    )
    metrics |= (record or {}) | {"time/segment_s_per_volume": seconds}
    metrics.update({k: v for k, v in val_metrics.items() if k.startswith("val/pixel")})
    metrics["calibration/threshold"] = math.nan if threshold is None else threshold
    write_metrics(out / "metrics.json", metrics)
    write_json(
        out / "evaluation.json",
        {
            "calibration": calibration,
            "threshold": threshold,
            "balance": dm.balance_log,
            "test_volumes": dict(zip(test.names, per_volume, strict=True)),
            "counts_columns": ["tp", "fp", "tn", "fn"],
            "class_names": dm.class_names,
        },
    )
    _save_run_model(cfg, net, dm, out, inference | {"threshold": threshold}, model)
    overlays = _write_test_overlays(cfg, dm, out, test_pred, test_labels)
    write_test_masks(out / "test_masks", test.volumes, test_pred, dm.classes, dm.plane)
    metrics |= external_validation(cfg, out, progress)
    metrics["recipe"] = cfg.get("recipe_name")
    write_metrics(out / "metrics.json", metrics)
    log_final(loggers, metrics, overlays, _volume_table(dm, per_volume), out / "model.pt")
    return metrics


def write_test_masks(folder: Path, volumes, predictions, classes, plane: str) -> None:
    """Each test volume's scored mask as ``folder/NAME.nii.gz``, in the scan's own geometry with
    the label values of the data (``penn evaluate -p folder -g labelsTr`` scores them again)."""
    for volume, pred in zip(volumes, predictions, strict=True):
        mask = labelled_mask(from_slices(pred.labels, plane), classes)
        write_nifti(folder / f"{volume.name}.nii.gz", mask, volume, dtype=mask.dtype)


def external_validation(cfg: DictConfig, out: Path, progress: bool) -> dict[str, float]:
    """``external/...`` metrics of the run's model on ``data.external`` (none when it is null);
    its per-case rows go to ``external/<name>.csv``."""
    external = cfg.data.get("external")
    if not external:
        return {}
    root = external.root
    if external.get("lesions"):  # the collection with the fixed lesions of data.lesions.seed
        lesions = OmegaConf.to_container(cfg.data.lesions, resolve=True)
        spec, seed = LesionSpec.from_config(lesions), int(lesions["seed"])
        root = lesion_dataset(root, Path(cfg.paths.data_dir) / external.name, spec, seed)
    metrics, rows = evaluate_external(out / "model.pt", root, progress=progress)
    write_csv(out / "external" / f"{external.name}.csv", rows)
    return metrics


def _shapes(labels: list[np.ndarray]) -> list[tuple[int, int]]:
    """Each volume's own in-plane slice shape, which the pixel probabilities are resampled to."""
    return [lab.shape[1:] for lab in labels]
