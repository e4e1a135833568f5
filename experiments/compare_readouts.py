"""Re-score a trained patch model with other pixel read-outs (inference.aggregate / center_sigma).

    python experiments/compare_readouts.py outputs/train/RUN [the run's data overrides ...]
    python experiments/compare_readouts.py outputs/train/lumbar_vb_center data=lumbar_vb

For each read-out the decision threshold is calibrated again on the validation split (the
post-processing stored in RUN/model.pt is kept) and the validation and test pixel Dice (mean
per volume / pooled) are printed. Choose on the validation columns; the test columns are for the
report. The data overrides must rebuild the run's split (its `data.*` overrides and `seed`).
"""

from __future__ import annotations

import logging
import sys

from trained_run import load_run

from penn.evaluation import calibrate, class_map, predict_volumes, score

READOUTS = (("mean", 0.0), ("center", 0.0), ("center", 2.0), ("center", 4.0), ("center", 8.0))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    _, dm, net, meta = load_run(__doc__.splitlines()[0], argv)
    print("| read-out | threshold | val Dice | val pooled | test Dice | test pooled |")
    print("|---|---|---|---|---|---|", flush=True)
    for aggregate, sigma in READOUTS:
        inference = dict(meta["inference"]) | {"aggregate": aggregate, "center_sigma": sigma}
        inference["calibration"] = dict(inference["calibration"], method="grid")
        dice, threshold = {}, None
        for split in ("val", "test"):
            part = dm.splits[split]
            spacings = part.slice_spacings(dm.plane)
            pred = predict_volumes(net, part.slices, inference, meta.get("model"),
                                   progress=False, slice_spacings=spacings)  # fmt: skip
            if split == "val":
                truths = [class_map(labels, dm.classes) for labels in part.labels]
                threshold, _ = calibrate(pred, truths, inference)
            metrics, _ = score(pred, part.labels, dm.classes, dm.class_names, dm.patch_cfg,
                               inference, threshold, split)  # fmt: skip
            dice[split] = [metrics[f"{split}/pixel/dice"], metrics[f"{split}/pixel_pooled/dice"]]
        name = aggregate if aggregate == "mean" else f"center, sigma {sigma:g}"
        values = " | ".join(f"{100 * v:.1f}" for v in dice["val"] + dice["test"])
        decision = "argmax" if threshold is None else f"{threshold:.2f}"
        print(f"| {name} | {decision} | {values} |", flush=True)  # the script's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
