"""Table 2 like for like: one row per method, mean ± sd over seeds, in-domain and external.

    python -m penn.run +experiment=baselines data=lumbar_vb
    python experiments/table2.py multirun/baselines/<timestamp> [more run folders] --out DIR

Give every results folder (runs or multiruns) that should enter the table; the runs of one
method (`model.name` and recipe) are averaged, so pass only the runs of the protocol to report.
Writes into --out (default: the first folder) table2.md (with this command), table2.csv and
curves/<method>.png (each method's validation Dice per epoch, one line per seed, its kept
checkpoint dashed), and prints the table. A method whose runs were not all ended by early
stopping is marked "not converged".
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from penn.io.files import write_atomic_bytes
from penn.reports.comparison import comparison, comparison_csv, comparison_markdown, method_of
from penn.reports.curves import curve_figure, read_curve
from penn.reports.report_scripts import script_command, script_runs
from penn.reports.tables import write_text

log = logging.getLogger("table2")


def write_curves(runs, folder: Path) -> list[Path]:
    """``folder/<method>.png`` per method: its runs' validation curves, labelled by seed."""
    methods: dict[str, list] = {}
    for run in runs:
        methods.setdefault(method_of(run), []).append((f"seed {run.get('seed')}", run))
    written = []
    for method, members in methods.items():
        curves = []
        for label, run in members:
            try:
                curves.append((label, read_curve(run.path)))
            except (FileNotFoundError, ValueError) as err:
                log.warning("%s", err)
        if curves:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", method).strip("_")
            written.append(write_atomic_bytes(folder / f"{name}.png", curve_figure(method, curves)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="results folders")
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder)")
    args = parser.parse_args(argv)
    if (runs := script_runs(args.folders)) is None:
        return 1
    out = args.out or args.folders[0]
    rows = comparison(runs)
    markdown = comparison_markdown(rows)
    command = script_command("table2", argv)
    write_text(out / "table2.md", f"{markdown}\n\ncommand: `{command}`\n")
    write_text(out / "table2.csv", comparison_csv(rows))
    curves = write_curves(runs, out / "curves")
    log.info("%d runs, %d methods, %d curves into %s", len(runs), len(rows), len(curves), out)
    print(markdown)  # the script's one output
    return 0


if __name__ == "__main__":
    sys.exit(main())
