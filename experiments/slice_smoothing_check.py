"""Would smoothing the probabilities across slices help? Re-scores trained runs on one split.

    python experiments/slice_smoothing_check.py RUN [RUN ...] [--sigmas 0 1.5 3]
        [--center-sigmas 0 1 2] -- [overrides]

Every RUN must be a penn.run folder trained on the same split (its ``data.*`` overrides and
``data.split.seed`` after ``--``). Each model predicts the validation and test volumes once with
its stored read-out, without smoothing across slices. Then, for each Gaussian sigma (mm; 0 =
none), its probabilities are smoothed along the slice axis
(``penn.inference.smooth_across_slices``, as ``inference.slice_sigma_mm`` does), the threshold
and ``min_size`` are calibrated on validation as penn.run does today
(``penn.evaluation.calibrate_decision`` with the ``inference.calibration`` of ``conf/``), and
the validation and test pixel Dice (mean per volume, as in penn.metrics, and pooled) and the
false-positive components of the target-free volumes are printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf
from skimage import measure
from trained_run import dice_cells, set_up_data, split_dice

from penn.checkpoint import load_model
from penn.evaluation import Prediction, calibrate_decision, class_map, predict_volumes
from penn.inference import decide, postprocess, smooth_across_slices


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1.5, 3.0, 4.5, 6.0],
                        help="sigmas in mm")  # fmt: skip
    parser.add_argument("--center-sigmas", type=float, nargs="+", default=[None],
                        help="inference.center_sigma values (px) to read out with")  # fmt: skip
    args = parser.parse_args(argv[:split_at])
    cfg, dm = set_up_data(argv[split_at + 1 :])
    splits = ("val", "test")
    truths = {s: [class_map(lab, dm.classes) > 0 for lab in dm.splits[s].labels] for s in splits}
    calibration = OmegaConf.to_container(cfg.inference.calibration, resolve=True)
    print(
        "| run | center sigma (px) | sigma (mm) | threshold | min_size | val pooled | val mean "
        "| test Dice | test pooled | per test volume "
        "| false positives on target-free volumes (voxels) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        net, meta = load_model(run / "model.pt")
        for center_sigma in args.center_sigmas:
            inference = dict(meta["inference"]) | {"calibration": calibration,
                                                   "slice_sigma_mm": 0.0}  # fmt: skip
            if center_sigma is not None:
                inference["center_sigma"] = center_sigma
            score_readout(run.name, net, meta, inference, dm, truths, args.sigmas)
    return 0


def score_readout(run_name, net, meta, inference, dm, truths, sigmas) -> None:
    """Prints one row per slice sigma for one model and in-plane read-out."""
    splits = ("val", "test")
    probs = {
        s: [p.probs for p in predict_volumes(net, dm.splits[s].slices, inference,
                                             meta.get("model"), progress=False)]
        for s in splits
    }  # fmt: skip
    spacings = {s: dm.splits[s].slice_spacings(dm.plane) for s in splits}
    for sigma in sigmas:
        smooth = {
            s: [
                smooth_across_slices(p, sigma, spacing)
                for p, spacing in zip(probs[s], spacings[s], strict=True)
            ]
            for s in splits
        }
        val_pred = [Prediction(p, None) for p in smooth["val"]]
        threshold, min_size, _ = calibrate_decision(val_pred, truths["val"], inference)
        settings = inference["postprocess"] | {"min_size": min_size}
        row, blobs = {}, []
        for s in splits:
            masks = [postprocess(decide(p, threshold), **settings) > 0 for p in smooth[s]]
            row[s] = split_dice(masks, truths[s])
            pairs = zip(masks, truths[s], strict=True)
            for name, (m, t) in zip(dm.splits[s].names, pairs, strict=True):
                if not t.any() and m.any():
                    sizes = [r.area for r in measure.regionprops(measure.label(m))]
                    blobs.append(f"{s} {name}: {', '.join(str(int(a)) for a in sizes)}")
        print(f"| {run_name} | {inference['center_sigma']:g} | {sigma:g} | {threshold:.2f} "
              f"| {min_size} | {dice_cells(row)} | {'; '.join(blobs) or 'none'} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
