"""Validation curve of a run from its CSV log: validation Dice and loss per epoch, one PNG.

    python experiments/plot_curve.py outputs/train/<run> docs/results/<name>_curve.png

Reads ``RUN/csv/metrics.csv`` (Lightning's CSV logger, always on in penn) and plots
``val/pixel/dice`` or ``val/patch/dice`` (whichever the run logged) with the validation loss,
marking the epoch whose checkpoint was kept (the lowest validation loss).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(run: Path) -> tuple[str, list[int], list[float], list[float]]:
    """(level, epochs, validation Dice, validation loss) of a run's fine-tuning log."""
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    level = "pixel" if any(r.get("val/pixel/dice") for r in rows) else "patch"
    picked = [r for r in rows if r.get(f"val/{level}/loss") and r.get("epoch")]
    epochs = [int(r["epoch"]) + 1 for r in picked]
    dice = [float(r[f"val/{level}/dice"]) for r in picked]
    loss = [float(r[f"val/{level}/loss"]) for r in picked]
    return level, epochs, dice, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    level, epochs, dice, loss = curve(args.run)
    best = epochs[loss.index(min(loss))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(epochs, dice, "o-", color="tab:blue", label=f"val/{level}/dice (threshold 0.5)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.set_ylim(0, 1)
    ax.axvline(best, color="grey", ls="--", lw=1, label=f"kept checkpoint (epoch {best})")
    twin = ax.twinx()
    twin.plot(epochs, loss, "s-", color="tab:orange", ms=3, label="validation loss")
    twin.set_ylabel("validation loss")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    ax.set_title(args.title or args.run.name, fontsize=9)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(f"{args.png}: {len(epochs)} epochs, best validation loss at epoch {best}")


if __name__ == "__main__":
    main()
