"""Table 2: one row per model (`model.name`), F1 / IoU / Dice beside the paper's numbers.

    python experiments/table2.py multirun/sweep_layers/... multirun/baselines/... --out docs/results

Give every results folder (runs or multiruns) that should enter the table; runs of one model are
averaged (mean ± std), so pass only the runs of the configuration to report. Models the paper
does not list get no paper value. Writes table2.md (with this command) and table2.csv into --out
(default: the first folder) and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from penn.tables import collect_runs, table2, to_csv, to_markdown, write_text

log = logging.getLogger("table2")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path, nargs="+", help="results folders")
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder)")
    parser.add_argument("--stage", default="test", choices=["test", "val"])
    parser.add_argument(
        "--level",
        default="pixel",
        choices=["pixel", "pixel_pooled", "patch"],
        help="pixel: mean over volumes; pixel_pooled: all voxels; patch: patches",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        runs = collect_runs(args.multirun_dir)
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 1
    log.info("%d jobs in %s", len(runs), " ".join(map(str, args.multirun_dir)))
    table = table2(runs, args.stage, args.level)
    out = args.out or args.multirun_dir[0]
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/table2.py", *given])
    markdown = to_markdown(table)
    write_text(out / "table2.md", f"{markdown}\n\ncommand: `{command}`\n")
    write_text(out / "table2.csv", to_csv(table))
    log.info("wrote %s and %s", out / "table2.md", out / "table2.csv")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
