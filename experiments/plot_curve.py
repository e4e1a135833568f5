"""Validation curve of a run from its CSV log: validation Dice per epoch, one PNG.

    python experiments/plot_curve.py outputs/train/<run> docs/results/<name>_curve.png

Reads ``RUN/csv/metrics.csv`` (Lightning's CSV logger, always on in penn) and plots
``val/pixel/dice`` or ``val/patch/dice`` (whichever the run logged), marking the epoch whose
checkpoint was kept (best by the run's ``callbacks.checkpoint`` monitor). ``experiments/table2.py``
draws the same for every method of a comparison, one line per seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from penn.io.files import write_atomic_bytes
from penn.reports.curves import curve_figure, read_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    curve = read_curve(args.run)
    write_atomic_bytes(args.png, curve_figure(args.title or args.run.name, [("", curve)]))
    print(f"{args.png}: {len(curve.epochs)} validations, kept checkpoint of epoch {curve.kept}")


if __name__ == "__main__":
    main()
