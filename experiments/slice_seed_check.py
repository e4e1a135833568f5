"""Would slice smoothing trim less if it only chose the components to keep? Re-scores runs.

    python experiments/slice_seed_check.py RUN [RUN ...] [--sigmas 3] -- [overrides]

``inference.slice_sigma_mm`` smooths the pixel probabilities across slices; that removes spots
in one slice, but it also lowers a lesion's end slices and its edges (its neighbouring slices
are smaller), so small lesions lose voxels. The "seeded" read-out compared here keeps each voxel's
own (unsmoothed) probability for the mask and uses the smoothed one only to choose components: a
3D component of ``raw >= t`` is kept when one of its voxels has ``smoothed >= t``; components
under ``min_size`` are then dropped. Both read-outs choose (t, min_size) jointly for the best
pooled validation Dice on the same grid (``inference.calibration`` of ``conf/``). Every RUN must
be a penn.run folder trained on the same split (its ``data.*`` overrides after ``--``).
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
from penn.inference import smooth_across_slices


def masks_at(
    raw: np.ndarray, smooth: np.ndarray, t: float, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """(component labels, sizes) of the read-out's mask at threshold t, before min_size."""
    if mode == "smoothed":
        components = measure.label(smooth >= t)
    else:
        components = measure.label(raw >= t)
        seeded = np.unique(components[(smooth >= t) & (components > 0)])
        keep = np.zeros(components.max() + 1, bool)
        keep[seeded] = True
        components = np.where(keep[components], components, 0)
    return components, np.bincount(components.ravel())


def drop_small(components: np.ndarray, sizes: np.ndarray, min_size: int) -> np.ndarray:
    """The mask of the labelled components with at least min_size voxels."""
    keep = sizes >= min_size
    keep[0] = False
    return keep[components]


def mask_at(raw: np.ndarray, smooth: np.ndarray, t: float, mode: str, min_size: int):
    """The read-out's final mask at threshold t, components under min_size dropped."""
    return drop_small(*masks_at(raw, smooth, t, mode), min_size)


def counts(components, sizes, truth, min_size) -> tuple[int, int, int]:
    mask = drop_small(components, sizes, min_size)
    tp = int((mask & truth).sum())
    return tp, int(mask.sum()) - tp, int(truth.sum()) - tp


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[3.0], help="sigmas in mm")
    args = parser.parse_args(argv[:split_at])
    cfg, dm = set_up_data(argv[split_at + 1 :])
    splits = ("val", "test")
    truths = {s: [class_map(lab, dm.classes) > 0 for lab in dm.splits[s].labels] for s in splits}
    c = OmegaConf.to_container(cfg.inference.calibration, resolve=True)
    grid = np.round(np.arange(c["low"], c["high"] + 1e-9, c["step"]), 6)
    sizes_grid = [int(m) for m in c["min_sizes"]]
    print("| run | sigma (mm) | read-out | threshold | min_size | val pooled | val mean "
          "| test Dice | test pooled | per test volume |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        net, meta = load_model(run / "model.pt")
        inference = dict(meta["inference"]) | {"slice_sigma_mm": 0.0}
        raw = {
            s: [p.probs[:, 0] for p in predict_volumes(net, dm.splits[s].slices, inference,
                                                       meta.get("model"), progress=False)]
            for s in splits
        }  # fmt: skip
        spacings = {s: dm.splits[s].slice_spacings(dm.plane) for s in splits}
        for sigma in args.sigmas:
            smooth = {
                s: [smooth_across_slices(p[:, None], sigma, sp)[:, 0]
                    for p, sp in zip(raw[s], spacings[s], strict=True)]
                for s in splits
            }  # fmt: skip
            for mode in ("smoothed", "seeded"):
                best = (-1.0, None, None)
                for t in grid:
                    parts = [
                        masks_at(r, m, t, mode)
                        for r, m in zip(raw["val"], smooth["val"], strict=True)
                    ]
                    for size in sizes_grid:
                        tp = fp = fn = 0
                        for (comp, sz), truth in zip(parts, truths["val"], strict=True):
                            a, b, d = counts(comp, sz, truth, size)
                            tp, fp, fn = tp + a, fp + b, fn + d
                        dice = 2 * tp / max(2 * tp + fp + fn, 1)
                        if dice > best[0] + 1e-12:
                            best = (dice, float(t), size)
                _, t, size = best
                row = {
                    s: split_dice(
                        [mask_at(r, m, t, mode, size) for r, m in zip(raw[s], smooth[s],
                                                                      strict=True)],
                        truths[s],
                    )
                    for s in splits
                }  # fmt: skip
                print(f"| {run.name} | {sigma:g} | {mode} | {t:.2f} | {size} "
                      f"| {dice_cells(row)} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
