"""The command line shared by the report scripts in ``experiments/``: collect the runs of
result folders (one error line when there are none), record the command that made a report, and
the whole of a Table-1-style script.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from penn.reports.tables import Run, collect_runs, to_csv, to_markdown, write_text

__all__ = ["script_runs", "script_command", "table_script"]

log = logging.getLogger(__name__)


def script_runs(folders: list[Path]) -> list[Run] | None:
    """A report script's start: logging on, the finished runs of ``folders``, or None after one
    error line naming the folder."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        runs = collect_runs(folders)
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return None
    log.info("%d jobs in %s", len(runs), " ".join(map(str, folders)))
    return runs


def script_command(script: str, argv: list[str] | None) -> str:
    """The command line that made a report, for its .md file (``argv`` None: ``sys.argv``)."""
    given = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"experiments/{script}.py", *given])


def table_script(argv: list[str] | None, doc: str, name: str, build) -> int:
    """The command line shared by ``experiments/table*.py``: collect runs, write .md/.csv, print.

    Args:
        argv: arguments (default ``sys.argv[1:]``).
        doc: the script's docstring (first line becomes the description).
        name: output stem and script name, e.g. ``table2``.
        build: ``build(runs, stage, level)`` returning the table.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path, nargs="+", help="results folders")
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder)")
    parser.add_argument("--stage", default="test", choices=["test", "val"])
    parser.add_argument(
        "--level",
        default="pixel",
        choices=["pixel", "pixel_pooled", "patch"],
        help="pixel: mean over volumes; pixel_pooled: all voxels; patch: patches",
    )
    args = parser.parse_args(argv)
    if (runs := script_runs(args.multirun_dir)) is None:
        return 1
    table = build(runs, args.stage, args.level)
    out = args.out or args.multirun_dir[0]
    command = script_command("table1_ablation" if name == "table1" else name, argv)
    markdown = to_markdown(table)
    write_text(out / f"{name}.md", f"{markdown}\n\ncommand: `{command}`\n")
    write_text(out / f"{name}.csv", to_csv(table))
    log.info("wrote %s and %s", out / f"{name}.md", out / f"{name}.csv")
    print(markdown)  # the script's one output
    return 0
