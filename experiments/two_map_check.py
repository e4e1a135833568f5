"""Detect on the slice-smoothed map, delineate on the unsmoothed one? Re-scores trained runs.

    python experiments/two_map_check.py RUN [RUN ...] -- [overrides that rebuild the split]

Each model predicts the validation and test volumes once with its stored read-out, without
smoothing across slices (the *unsmoothed* map), and that map is smoothed as the run's
``inference.slice_sigma_mm`` does (the *smoothed* map). Two decisions are then calibrated on
validation (threshold t and ``min_size`` jointly, pooled Dice, the grids of ``conf/``) and
scored on validation and test:

- ``smoothed``: today's decision, the smoothed map >= t, then ``min_size``;
- ``two-map``: the 3D connected components of the unsmoothed map >= t that hold a voxel of the
  smoothed map >= t, then ``min_size``.

Printed per run and decision: threshold, min_size, validation pooled and mean per-volume Dice,
test Dice (mean per volume), test pooled, per test volume, and the false-positive components
on target-free volumes (docs/results/issue2/README.md, "Detect on the smoothed map ...").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from skimage import measure
from trained_run import dice_cells, set_up_data, split_dice

from penn.checkpoint import load_model
from penn.evaluation import class_map, predict_volumes
from penn.inference import kept_components, smooth_across_slices

SPLITS = ("val", "test")


def two_map_mask(raw: np.ndarray, smooth: np.ndarray, threshold: float) -> np.ndarray:
    """Components of ``raw >= threshold`` (3D) that hold a voxel of ``smooth >= threshold``."""
    components = measure.label(raw >= threshold)
    seeds = np.unique(components[(smooth >= threshold) & (components > 0)])
    return np.isin(components, seeds)


def decision_mask(kind: str, raw: np.ndarray, smooth: np.ndarray, threshold: float) -> np.ndarray:
    """The mask before ``min_size``: the smoothed map >= t, or :func:`two_map_mask`."""
    return smooth >= threshold if kind == "smoothed" else two_map_mask(raw, smooth, threshold)


def final_mask(kind: str, raw: np.ndarray, smooth: np.ndarray, threshold: float,
               min_size: int) -> np.ndarray:  # fmt: skip
    components = measure.label(decision_mask(kind, raw, smooth, threshold))
    keep = np.flatnonzero(kept_components(np.bincount(components.ravel())[1:], min_size, None))
    return np.isin(components, keep + 1)


def calibrate(kind: str, raws, smooths, truths, grid, sizes) -> tuple[float, int]:
    """(t, min_size) with the best pooled validation Dice, counted as
    penn.evaluation.calibrate_decision counts; ties: the smallest min_size, then the lowest t
    (its tie rule when these runs were made; the largest min_size since)."""
    tp, fp = np.zeros((len(grid), len(sizes))), np.zeros((len(grid), len(sizes)))
    n_pos = sum(int(t.sum()) for t in truths)
    for raw, smooth, truth in zip(raws, smooths, truths, strict=True):
        for i, t in enumerate(grid):
            components = measure.label(decision_mask(kind, raw, smooth, t)).ravel()
            size = np.bincount(components)[1:]
            hits = np.bincount(components, weights=truth.ravel(), minlength=len(size) + 1)[1:]
            for j, m in enumerate(sizes):
                keep = kept_components(size, m, None)
                tp[i, j] += hits[keep].sum()
                fp[i, j] += (size[keep] - hits[keep]).sum()
    dice = 2 * tp / np.maximum(tp + fp + n_pos, 1)
    i, j = min(np.argwhere(dice == dice.max()).tolist(), key=lambda ij: (sizes[ij[1]], ij[0]))
    return float(grid[i]), sizes[j]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args(argv[:split_at])
    cfg, dm = set_up_data(argv[split_at + 1 :])
    truths = {s: [class_map(lab, dm.classes) > 0 for lab in dm.splits[s].labels] for s in SPLITS}
    c = OmegaConf.to_container(cfg.inference.calibration, resolve=True)
    grid = np.round(np.arange(c["low"], c["high"] + 1e-9, c["step"]), 6)
    sizes = [int(m) for m in c["min_sizes"]]
    print(
        "| run | decision | threshold | min_size | val pooled | val mean | test Dice "
        "| test pooled | per test volume | false positives on target-free volumes (voxels) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        net, meta = load_model(run / "model.pt")
        inference = dict(meta["inference"])
        sigma = float(inference.get("slice_sigma_mm", 0.0))
        raw, smooth = {}, {}
        for s in SPLITS:
            preds = predict_volumes(net, dm.splits[s].slices, inference | {"slice_sigma_mm": 0.0},
                                    meta.get("model"), progress=False)  # fmt: skip
            spacings = dm.splits[s].slice_spacings(dm.plane)
            raw[s] = [p.probs[:, 0] for p in preds]
            smooth[s] = [
                smooth_across_slices(p.probs, sigma, sp)[:, 0]
                for p, sp in zip(preds, spacings, strict=True)
            ]
        for kind in ("smoothed", "two-map"):
            t, m = calibrate(kind, raw["val"], smooth["val"], truths["val"], grid, sizes)
            row, blobs = {}, []
            for s in SPLITS:
                masks = [final_mask(kind, r, sm, t, m)
                         for r, sm in zip(raw[s], smooth[s], strict=True)]  # fmt: skip
                row[s] = split_dice(masks, truths[s])
                for name, mask, truth in zip(dm.splits[s].names, masks, truths[s], strict=True):
                    if not truth.any() and mask.any():
                        areas = [int(r.area) for r in measure.regionprops(measure.label(mask))]
                        blobs.append(f"{s} {name}: {', '.join(map(str, areas))}")
            print(f"| {run.name} | {kind} | {t:.2f} | {m} | {dice_cells(row)} "
                  f"| {'; '.join(blobs) or 'none'} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
