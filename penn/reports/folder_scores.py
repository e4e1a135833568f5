"""Scoring a folder of predicted masks against a folder of labels (nnU-Net's evaluate_folder).

    penn evaluate -p PRED_DIR -g LABEL_DIR [-o OUT_DIR]

Masks pair by file name (``NAME.nii.gz`` or ``NAME.nii``; a prediction written by
``penn predict`` as ``NAME/mask.nii.gz`` pairs with ``NAME.nii.gz`` too). Each label value > 0
found in the labels is a class, scored per case: the six metrics, HD95 and the average symmetric
surface distance in mm. ``summary.json`` holds every case and the mean per class and over the
classes; ``summary.csv`` one row per case and class. Nothing is written until every pair has
been read and checked.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from penn.io.files import write_atomic_bytes, write_json
from penn.io.nifti import read_volume
from penn.io.volume import DataError
from penn.metrics import METRICS, confusion_counts, metrics_from_counts, surface_distances

__all__ = ["evaluate_folder", "pair_masks", "score_case"]

log = logging.getLogger(__name__)

_ENDINGS = (".nii.gz", ".nii")


def _stem(path: Path) -> str | None:
    for ending in _ENDINGS:
        if path.name.endswith(ending):
            return path.name[: -len(ending)]
    return None


def _masks(folder: Path) -> dict[str, Path]:
    """Case name -> mask file of a folder: ``NAME.nii[.gz]`` or ``NAME/mask.nii[.gz]``."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            for ending in _ENDINGS:
                if (path / f"mask{ending}").is_file():
                    found[path.name] = path / f"mask{ending}"
        elif (stem := _stem(path)) is not None:
            found[stem] = path
    return found


def pair_masks(pred_dir: str | Path, label_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(case, prediction, label) of every label file, sorted by case.

    Raises:
        DataError: a folder missing or without masks, or a label without its prediction.
    """
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    for folder in (pred_dir, label_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
    labels, preds = _masks(label_dir), _masks(pred_dir)
    if not labels:
        raise DataError(f"{label_dir}: no .nii or .nii.gz label files")
    missing = sorted(set(labels) - set(preds))
    if missing:
        raise DataError(f"{pred_dir}: no prediction for {len(missing)} label(s): {missing[:5]}")
    return [(name, preds[name], labels[name]) for name in sorted(labels)]


def _read_mask(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A mask in canonical (RAS+) orientation and its voxel size in mm along those axes."""
    array, affine, _, _ = read_volume(path)
    if not np.array_equal(array, np.round(array)):
        raise DataError(f"{path}: a mask must hold integer label values")
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return array.astype(np.int64), spacing


def score_case(
    pred: np.ndarray, truth: np.ndarray, classes: list[int], spacing: tuple[float, ...]
) -> dict[int, dict[str, float]]:
    """Per class value: the six metrics, ``hd95_mm`` and ``asd_mm`` of one case."""
    scores = {}
    for value in classes:
        p, t = pred == value, truth == value
        counts = confusion_counts(p.astype(np.uint8), t.astype(np.uint8), 2)[1]
        hd95, asd = surface_distances(p, t, spacing)
        scores[value] = metrics_from_counts(*counts) | {"hd95_mm": hd95, "asd_mm": asd}
    return scores


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_folder(
    pred_dir: str | Path,
    label_dir: str | Path,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Scores every prediction of ``pred_dir`` against its label in ``label_dir``.

    Args:
        pred_dir: predicted masks (label values as in the labels).
        label_dir: the truth masks.
        out_dir: where ``summary.json`` and ``summary.csv`` go (default: ``pred_dir``).
        progress: a bar over the cases.

    Returns:
        The summary: ``cases`` (per case and class value), ``mean`` (per class value, over the
        cases) and ``foreground_mean`` (the per-class means averaged over the classes).

    Raises:
        DataError: a missing prediction, an unreadable mask, or a pair whose shapes differ.
    """
    pairs = pair_masks(pred_dir, label_dir)
    read = []
    for name, pred_path, label_path in pairs:
        pred, spacing = _read_mask(pred_path)
        truth, _ = _read_mask(label_path)
        if pred.shape != truth.shape:
            raise DataError(
                f"{pred_path}: shape {pred.shape} differs from {label_path}'s {truth.shape}"
            )
        read.append((name, pred, truth, spacing))
    classes = sorted({int(v) for _, _, truth, _ in read for v in np.unique(truth) if v > 0})
    cases = {}
    for name, pred, truth, spacing in tqdm(read, desc="score", disable=not progress):
        cases[name] = score_case(pred, truth, classes, spacing)
    keys = [*METRICS, "hd95_mm", "asd_mm"]
    mean = {c: {k: _mean([cases[n][c][k] for n in cases]) for k in keys} for c in classes}
    summary = {
        "classes": classes,
        "cases": {n: {str(c): s for c, s in per.items()} for n, per in cases.items()},
        "mean": {str(c): m for c, m in mean.items()},
        "foreground_mean": {k: _mean([mean[c][k] for c in classes]) for k in keys},
    }
    out = Path(out_dir) if out_dir is not None else Path(pred_dir)
    write_json(out / "summary.json", summary)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "class", *keys])
    for name, per in cases.items():
        for c, s in per.items():
            writer.writerow([name, c, *(s[k] for k in keys)])
    write_atomic_bytes(out / "summary.csv", buffer.getvalue().encode())
    dice = summary["foreground_mean"]["dice"]
    log.info("scored %d cases of %s: foreground mean Dice %.4f", len(cases), pred_dir, dice)
    return summary
