"""Detect on the slice-smoothed map, delineate on the unsmoothed one? Re-scores trained runs.

    python experiments/two_map_check.py RUN [RUN ...] -- [overrides that rebuild the split]

Each model predicts the validation and test volumes once with its stored read-out, without
smoothing across slices (the *unsmoothed* map), and that map is smoothed as the run's
``inference.slice_sigma_mm`` does (the *smoothed* map). Two decisions are then calibrated on
validation by ``penn.evaluation.calibrate_decision`` (threshold t and ``min_size`` jointly,
pooled Dice, the grids of ``conf/``) and scored on validation and test:

- ``smoothed``: today's decision, the smoothed map >= t, then ``min_size``;
- ``two-map``: the 3D connected components of the unsmoothed map >= t that hold a voxel of the
  smoothed map >= t, then ``min_size`` (as one score map, :func:`two_map_scores`).

Printed per run and decision: threshold, min_size, validation pooled and mean per-volume Dice,
test Dice (mean per volume), test pooled, per test volume, and the false-positive components
on target-free volumes (docs/results/issue2/README.md, "Detect on the smoothed map ..."; its
outputs there were made at ccce0f3, before min_size ties went to the larger candidate).
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
from penn.evaluation import Prediction, calibrate_decision, class_map, predict_volumes
from penn.inference import decide, postprocess, smooth_across_slices

SPLITS = ("val", "test")


def two_map_mask(raw: np.ndarray, smooth: np.ndarray, threshold: float) -> np.ndarray:
    """Components of ``raw >= threshold`` (3D) that hold a voxel of ``smooth >= threshold``."""
    components = measure.label(raw >= threshold)
    seeds = np.unique(components[(smooth >= threshold) & (components > 0)])
    return np.isin(components, seeds)


def two_map_scores(raw: np.ndarray, smooth: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A map q with ``(q >= t) == two_map_mask(raw, smooth, t)`` for every t of ``grid``.

    The two-map masks are nested (a component of ``raw >= t'`` with a voxel of ``smooth >= t'``
    lies in a component of ``raw >= t`` with that voxel, for t < t'), so q, the highest grid
    threshold whose mask holds the voxel (0 if none), lets penn's own threshold calibration and
    decision (penn.evaluation.calibrate_decision, penn.inference.decide) treat the two-map
    decision as one probability map.
    """
    q = np.zeros(raw.shape, np.float64)  # exactly the grid values, which calibration compares
    for t in grid:  # increasing
        q[two_map_mask(raw, smooth, t)] = t
    return q


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
    print(
        "| run | decision | threshold | min_size | val pooled | val mean | test Dice "
        "| test pooled | per test volume | false positives on target-free volumes (voxels) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        net, meta = load_model(run / "model.pt")
        inference = dict(meta["inference"])
        decision = inference | {"calibration": c}  # today's calibration settings of conf/
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
        maps = {
            "smoothed": smooth,
            "two-map": {s: [two_map_scores(r, sm, grid) for r, sm in zip(raw[s], smooth[s],
                                                                         strict=True)]
                        for s in SPLITS},
        }  # fmt: skip
        for kind, probs in maps.items():
            val_pred = [Prediction(p[:, None], None) for p in probs["val"]]
            t, m, _ = calibrate_decision(val_pred, truths["val"], decision)
            settings = decision["postprocess"] | {"min_size": m}
            row, blobs = {}, []
            for s in SPLITS:
                masks = [postprocess(decide(p[:, None], t), **settings) > 0 for p in probs[s]]
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
