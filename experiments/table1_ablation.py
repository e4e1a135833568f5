"""Table 1: PENN with and without the sparse-autoencoder regularisation, beside the paper's numbers.

    python experiments/table1_ablation.py multirun/ablation_sparsity/2026-01-01_12-00-00
    python experiments/table1_ablation.py MULTIRUN_DIR --level pixel_pooled --out docs/results

Rows are the runs' `model.sae` settings (lambda = beta = 0 first), mean ± std over seeds.
Writes table1.md (with this command) and table1.csv into --out (default: MULTIRUN_DIR) and
prints the table.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from penn.tables import collect_runs, table1, to_csv, to_markdown, write_text

log = logging.getLogger("table1_ablation")


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
    table = table1(runs, args.stage, args.level)
    out = args.out or args.multirun_dir[0]
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/table1_ablation.py", *given])
    markdown = to_markdown(table)
    write_text(out / "table1.md", f"{markdown}\n\ncommand: `{command}`\n")
    write_text(out / "table1.csv", to_csv(table))
    log.info("wrote %s and %s", out / "table1.md", out / "table1.csv")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
