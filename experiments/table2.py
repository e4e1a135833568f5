"""Table 2: one row per model (`model.name`), F1 / IoU / Dice beside the paper's numbers.

    python experiments/table2.py multirun/sweep_layers/... multirun/baselines/... --out docs/results

Give every results folder (runs or multiruns) that should enter the table; runs of one model are
averaged (mean ± std), so pass only the runs of the configuration to report. Models the paper
does not list get no paper value. Writes table2.md (with this command) and table2.csv into --out
(default: the first folder) and prints the table.
"""

from __future__ import annotations

import sys

from penn.reports.tables import table2, table_script


def main(argv: list[str] | None = None) -> int:
    return table_script(argv, __doc__, "table2", table2)


if __name__ == "__main__":
    sys.exit(main())
