"""Fig. 6: heatmaps of hidden layers x hidden nodes from a `+experiment=sweep_layers` multirun.

    python experiments/fig6_heatmaps.py multirun/sweep_layers/2026-01-01_12-00-00
    python experiments/fig6_heatmaps.py MULTIRUN_DIR --out docs/results/fig6_phantom

Writes one PNG per metric (mean over seeds in each cell, value annotated) and one of its sd over
seeds (`<metric>_sd.png`, when cells have two or more runs), fig6.md (every grid, which cells
differ from the best by more than the seed spread, and this command) and fig6.csv (long form)
into --out (default: MULTIRUN_DIR/fig6), and prints the grids.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from penn.metrics import METRICS
from penn.reports.figures import write_heatmaps
from penn.reports.report_scripts import script_command, script_runs
from penn.reports.tables import (
    grid,
    grid_csv,
    grid_markdown,
    grid_separation,
    write_text,
)

log = logging.getLogger("fig6_heatmaps")

# the selection criterion of the paper's grid (validation Dice) first, then the six test metrics
DEFAULT_METRICS = ["val/pixel/dice", *(f"test/pixel/{m}" for m in METRICS)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="folder of the sweep (searched deeply)")
    parser.add_argument("--out", type=Path, help="output folder (default: MULTIRUN_DIR/fig6)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=DEFAULT_METRICS,
        help="metric keys of metrics.json, one heatmap each",
    )
    parser.add_argument("--rows", default="model.n_layers", help="config key of the rows")
    parser.add_argument("--cols", default="model.n_nodes", help="config key of the columns")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (runs := script_runs([args.multirun_dir])) is None:
        return 1
    out = args.out or args.multirun_dir / "fig6"
    grids = [grid(runs, metric, args.rows, args.cols) for metric in args.metrics]
    for path in write_heatmaps(out, grids):
        log.info("wrote %s", path)
    command = script_command("fig6_heatmaps", argv)
    markdown = "\n\n".join(f"{grid_markdown(g)}\n\n{grid_separation(g)}" for g in grids)
    write_text(out / "fig6.md", f"{markdown}\n\ncommand: `{command}`\n")
    write_text(out / "fig6.csv", grid_csv(grids))
    log.info("wrote %s and %s", out / "fig6.md", out / "fig6.csv")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
