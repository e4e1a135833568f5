"""Re-score a trained patch model with other pixel read-outs (inference.aggregate / center_sigma).

    python experiments/compare_readouts.py outputs/train/RUN [the run's data overrides ...]
    python experiments/compare_readouts.py outputs/train/lumbar_vb_center data=lumbar_vb

For each read-out the decision threshold is calibrated again on the validation split (the
post-processing stored in RUN/model.pt is kept) and the validation and test pixel Dice (mean
per volume / pooled) are printed. Choose on the validation columns; the test columns are for the
report. The data overrides must rebuild the run's split (its `data.*` overrides and `seed`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from penn.checkpoint import load_model
from penn.evaluation import calibrate, class_map, predict_volumes, score

CONF = Path(__file__).resolve().parents[1] / "conf"
READOUTS = (("mean", 0.0), ("center", 0.0), ("center", 2.0), ("center", 4.0), ("center", 8.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a penn.run output folder holding model.pt")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides that rebuild its data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    net, meta = load_model(args.run / "model.pt")
    print("| read-out | threshold | val Dice | val pooled | test Dice | test pooled |")
    print("|---|---|---|---|---|---|", flush=True)
    for aggregate, sigma in READOUTS:
        inference = dict(meta["inference"]) | {"aggregate": aggregate, "center_sigma": sigma}
        inference["calibration"] = dict(inference["calibration"], method="grid")
        dice, threshold = {}, None
        for split in ("val", "test"):
            part = dm.splits[split]
            pred = predict_volumes(net, part.slices, inference, meta.get("model"), progress=False)
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
