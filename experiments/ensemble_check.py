"""Would averaging several trained models' probabilities help? Re-scores ensembles on one split.

    python experiments/ensemble_check.py RUN [RUN ...] -- [the runs' shared data overrides ...]

Every RUN must be a penn.run folder trained on the same split (same ``data.*`` and
``data.split.seed``). Each model predicts the validation and test volumes once with its stored
read-out; then, for each single model and for the mean of the probabilities of every
combination of 2, 3, ... models, the decision threshold and ``min_size`` are calibrated on
validation as penn.run does today (``penn.evaluation.calibrate_decision`` with the
``inference.calibration`` of ``conf/``, which the overrides may change), and the test pixel
Dice (mean per volume, as in penn.metrics, and pooled) is printed.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from trained_run import dice_cells, set_up_data, split_dice

from penn.checkpoint import load_model
from penn.evaluation import Prediction, calibrate_decision, class_map, predict_volumes
from penn.inference import decide, postprocess


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--max-size", type=int, default=3, help="largest ensemble to try")
    parser.add_argument(
        "--objectives",
        nargs="+",
        choices=("pooled", "mean"),
        help="score each combination with each of these calibration objectives "
        "(default: inference.calibration.objective of the config)",
    )
    args = parser.parse_args(argv[:split_at])
    cfg, dm = set_up_data(argv[split_at + 1 :])
    truths = {
        s: [class_map(lab, dm.classes) for lab in dm.splits[s].labels] for s in ("val", "test")
    }
    probs, inference = {}, None
    for run in args.runs:
        net, meta = load_model(run / "model.pt")
        if inference is None:  # the run's read-out; today's calibration (conf/inference)
            inference = dict(meta["inference"]) | {
                "calibration": OmegaConf.to_container(cfg.inference.calibration, resolve=True)
            }
        for s in ("val", "test"):
            pred = predict_volumes(
                net,
                dm.splits[s].slices,
                meta["inference"],
                meta.get("model"),
                progress=False,
                slice_spacings=dm.splits[s].slice_spacings(dm.plane),
            )
            probs[run.name, s] = [p.probs for p in pred]
    print("| models | objective | threshold | min_size | val pooled | val mean | test Dice "
          "| test pooled | per volume |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    names = [r.name for r in args.runs]
    objectives = args.objectives or [inference["calibration"].get("objective", "pooled")]
    for k in range(1, min(args.max_size, len(names)) + 1):
        for combo, objective in itertools.product(itertools.combinations(names, k), objectives):
            mean = {
                s: [np.mean(v, axis=0) for v in zip(*(probs[n, s] for n in combo), strict=True)]
                for s in ("val", "test")
            }
            val_pred = [Prediction(p, None) for p in mean["val"]]
            calibration = inference["calibration"] | {"objective": objective}
            threshold, min_size, _ = calibrate_decision(
                val_pred, truths["val"], inference | {"calibration": calibration}
            )
            settings = inference["postprocess"] | {"min_size": min_size}
            row = {
                s: split_dice(
                    [postprocess(decide(p, threshold), **settings) > 0 for p in mean[s]],
                    [t > 0 for t in truths[s]],
                )
                for s in ("val", "test")
            }
            print(f"| {'+'.join(combo)} | {objective} | {threshold:.2f} | {min_size} "
                  f"| {dice_cells(row)} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
