"""The wall time of a training protocol, projected from a shortened run's epoch times.

    python -m penn.run +experiment=paper data=lumbar_vb model.pretrain.epochs=3 hydra.run.dir=RUN
    python experiments/protocol_time.py RUN --pretrain-epochs 500

Reads the fit times that ``penn.lit.timing.EpochTimer`` writes to ``RUN/run.log`` and projects:
everything that is not a pretraining epoch (start-up, data set-up, fine-tuning, calibration,
test) as measured, plus each stage's time per epoch (its fit time from the first epoch's start,
over its epochs, checkpoints included) x ``--pretrain-epochs``. Prints a summary and a last line
of JSON. The projection assumes that a pretraining epoch's cost does not change with the epoch
count (the same number of patches is streamed every epoch).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
EPOCH = re.compile(r"\] - (pretrain_stage\d+|finetune) epoch (\d+): ([\d.]+) s, (\d+) samples")
FIT = re.compile(r"\] - (pretrain_stage\d+|finetune): (\d+) epochs in ([\d.]+) s")


def read_log(path: Path) -> tuple[float, dict, dict, dict]:
    """(seconds from the first to the last log line, epoch times per phase, samples per epoch,
    (epochs, seconds) of each phase's fit from its first epoch's start)."""
    stamps, epochs, samples, fits = [], {}, {}, {}
    for line in path.read_text().splitlines():
        stamp = STAMP.match(line)
        if stamp:
            stamps.append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f"))
        hit = EPOCH.search(line)
        if hit:
            epochs.setdefault(hit.group(1), []).append(float(hit.group(3)))
            samples[hit.group(1)] = int(hit.group(4))
        hit = FIT.search(line)
        if hit:
            fits[hit.group(1)] = (int(hit.group(2)), float(hit.group(3)))
    if not fits:
        raise SystemExit(
            f"{path}: no fit times (was the run made with penn.lit.timing.EpochTimer?)"
        )
    return (stamps[-1] - stamps[0]).total_seconds(), epochs, samples, fits


def project(run: Path, pretrain_epochs: int, wall_s: float | None = None) -> dict:
    logged, epochs, samples, fits = read_log(run / "run.log")
    wall = logged if wall_s is None else wall_s
    stages = sorted(p for p in fits if p.startswith("pretrain"))
    per_epoch = {p: fits[p][1] / fits[p][0] for p in stages}  # one more epoch, checkpoint included
    other = wall - sum(fits[p][1] for p in stages)
    total = other + pretrain_epochs * sum(per_epoch.values())
    return {
        "run": str(run),
        "wall_s": wall,
        "pretrain_epochs_run": {p: fits[p][0] for p in stages},
        "pretrain_epoch_s": per_epoch,
        "pretrain_epoch_median_s": {p: statistics.median(epochs[p]) for p in stages},
        "pretrain_patches_per_epoch": {p: samples[p] for p in stages},
        "finetune_epoch_s": epochs.get("finetune", []),
        "everything_else_s": other,
        "pretrain_epochs": pretrain_epochs,
        "projected_min": total / 60,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a penn.run output folder (with run.log)")
    parser.add_argument("--pretrain-epochs", type=int, default=500, help="per stage (paper: 500)")
    parser.add_argument(
        "--wall-s", type=float, help="the run's wall time (default: the span of its log)"
    )
    args = parser.parse_args(argv)
    result = project(args.run, args.pretrain_epochs, args.wall_s)
    print(f"run {args.run}: {result['wall_s']:.0f} s")
    for stage, seconds in result["pretrain_epoch_s"].items():
        print(
            f"  {stage}: {seconds:.2f} s per epoch (fit time / "
            f"{result['pretrain_epochs_run'][stage]} epochs), "
            f"{result['pretrain_patches_per_epoch'][stage]} patches per epoch"
        )
    print(
        f"  everything else (data, fine-tuning, validation, test): "
        f"{result['everything_else_s']:.0f} s"
    )
    print(
        f"projected with {args.pretrain_epochs} pretraining epochs per stage: "
        f"{result['projected_min']:.1f} min"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
