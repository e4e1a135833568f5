"""The end of a training run: the trained network segments the validation and test splits,
is calibrated on validation, scored on test and on the external collection, and the results
are written.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from penn.calibration import calibrate_decision
from penn.checkpoint import model_info, save_model
from penn.inference.predictor import predict_volumes
from penn.io.files import write_json
from penn.io.labels import class_map, labelled_mask
from penn.io.nifti import write_nifti
from penn.lit.trainer import log_final
from penn.preprocess import from_slices, resize_in_plane
from penn.reports.external import evaluate_external
from penn.reports.figures import write_overlays
from penn.reports.run_files import write_csv, write_metrics
from penn.scoring import score

__all__ = ["evaluate_and_write", "write_test_masks", "external_validation"]

log = logging.getLogger(__name__)


def evaluate_and_write(cfg: DictConfig, net, dm, out: Path, loggers) -> dict[str, float]:
    """Calibrates on validation, scores the test split, writes metrics, model and overlays."""
    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    model = model_info(cfg)
    val, val_labels = dm.splits["val"], dm.native_labels("val")
    progress = bool(cfg.trainer.get("enable_progress_bar", True))  # bars over each volume
    val_pred = predict_volumes(
        net,
        val.slices,
        inference,
        model,
        progress=progress,
        shapes=_shapes(val_labels),
        slice_spacings=val.slice_spacings(dm.plane),
    )
    val_truth = [class_map(lab, dm.classes) for lab in val_labels]
    threshold, min_size, calibration = calibrate_decision(val_pred, val_truth, inference)
    inference["postprocess"]["min_size"] = min_size
    val_metrics, _ = score(
        val_pred,
        val_labels,
        dm.classes,
        dm.class_names,
        dm.patch_cfg,
        inference,
        threshold,
        "val",
        patch_labels=val.labels,
    )
    test, test_labels = dm.splits["test"], dm.native_labels("test")
    test_pred = predict_volumes(
        net,
        test.slices,
        inference,
        model,
        progress=progress,
        shapes=_shapes(test_labels),
        slice_spacings=test.slice_spacings(dm.plane),
    )
    metrics, per_volume = score(
        test_pred,
        test_labels,
        dm.classes,
        dm.class_names,
        dm.patch_cfg,
        inference,
        threshold,
        "test",
        patch_labels=test.labels,
    )
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
            "inference": inference | {"threshold": threshold},
        },
    )
    overlays = []
    for name, slices, labels, pred in zip(
        test.names, test.slices, test_labels, test_pred, strict=True
    ):
        overlays += write_overlays(
            out / "overlays",
            name,
            resize_in_plane(slices, labels.shape[1:], order=1),
            class_map(labels, dm.classes),
            pred.labels,
            cfg.inference.overlays,
        )
    write_test_masks(out / "test_masks", test.volumes, test_pred, dm.classes, dm.plane)
    metrics |= external_validation(cfg, out, progress)
    metrics["recipe"] = cfg.get("recipe_name")
    write_metrics(out / "metrics.json", metrics)
    log_final(loggers, metrics, overlays)
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
    metrics, rows = evaluate_external(out / "model.pt", external.root, progress=progress)
    write_csv(out / "external" / f"{external.name}.csv", rows)
    return metrics


def _shapes(labels: list[np.ndarray]) -> list[tuple[int, int]]:
    """Each volume's own in-plane slice shape, which the pixel probabilities are resampled to."""
    return [lab.shape[1:] for lab in labels]
