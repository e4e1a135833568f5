"""Table 1: PENN with and without the sparse-autoencoder regularisation, beside the paper's numbers.

    python experiments/table1_ablation.py multirun/ablation_sparsity/2026-01-01_12-00-00
    python experiments/table1_ablation.py MULTIRUN_DIR --level pixel_pooled --out docs/results

Rows are the runs' `model.sae` settings (lambda = beta = 0 first), mean ± std over seeds.
Writes table1.md (with this command) and table1.csv into --out (default: MULTIRUN_DIR) and
prints the table.
"""

from __future__ import annotations

import sys

from penn.reports.report_scripts import table_script
from penn.reports.tables import table1


def main(argv: list[str] | None = None) -> int:
    return table_script(argv, __doc__, "table1", table1)


if __name__ == "__main__":
    sys.exit(main())
