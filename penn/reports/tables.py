"""Results of many runs as tables: collect jobs, average over seeds, put the paper's numbers beside.

A run is any folder holding ``metrics.json`` (written by
:func:`penn.reports.run_files.write_metrics`) and
Hydra's ``.hydra/config.yaml``; what a run was is read from that config, never from folder names.
Values are fractions in ``metrics.json`` and percentages (one decimal) in the tables, as in the
paper.

Examples::

    runs = collect_runs(["multirun/ablation_sparsity/2026-01-01_12-00-00"])
    table = table1(runs)
    print(to_markdown(table))
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from penn.io.files import write_atomic_bytes
from penn.metrics import METRICS

log = logging.getLogger(__name__)

__all__ = [
    "PAPER_TABLE1",
    "Run",
    "Row",
    "Table",
    "Grid",
    "collect_runs",
    "mean_std",
    "grid",
    "table1",
    "to_markdown",
    "to_csv",
    "csv_text",
    "number_text",
    "grid_markdown",
    "grid_csv",
    "grid_separation",
    "write_text",
]

# The paper's numbers (Chen et al. 2024), in %. Not ours: shown beside ours only.
# Table 1: the same network without (lambda = beta = 0; the row is mislabelled "MultiResuNet" in
# the paper) and with the sparse-autoencoder regularisation.
PAPER_TABLE1 = {
    "unregularised": dict(precision=86.8, recall=85.7, accuracy=90.2, f1=88.2, iou=80.6, dice=88.4),
    "regularised": dict(precision=90.6, recall=91.1, accuracy=93.2, f1=91.3, iou=83.8, dice=91.1),
}


@dataclass(frozen=True)
class Run:
    """One finished job: its folder, composed config and flat metrics (None where undefined)."""

    path: Path
    config: DictConfig
    metrics: dict[str, float | None]

    def get(self, key: str) -> Any:
        """A config value by dotted key (``model.n_layers``), None when absent."""
        return OmegaConf.select(self.config, key, default=None)


@dataclass
class Row:
    """One table row: ``ours`` maps metric -> (mean, std) in % over ``n`` runs (std NaN: n < 2)."""

    label: str
    n: int
    ours: dict[str, tuple[float, float]]
    paper: dict[str, float] = field(default_factory=dict)


@dataclass
class Table:
    """Rows in the paper's layout (one per method, metric columns with the paper's beside ours)."""

    title: str
    metrics: tuple[str, ...]
    rows: list[Row]
    note: str = ""


@dataclass
class Grid:
    """Fig. 6 values: ``mean``, ``std`` (in %, NaN when empty), ``count``: (rows, cols) arrays."""

    metric: str
    row_key: str
    col_key: str
    rows: list[Any]
    cols: list[Any]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray


def _read_run(metrics_path: Path) -> Run | None:
    config_path = metrics_path.parent / ".hydra" / "config.yaml"
    if not config_path.is_file():
        return None  # not a Hydra job folder (e.g. an evaluation copied by hand)
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics_path}: not valid JSON: {err}") from err
    return Run(metrics_path.parent, OmegaConf.load(config_path), metrics)


def collect_runs(folders: list[str | Path]) -> list[Run]:
    """Every finished job under ``folders`` (a run folder or a multirun folder, searched deeply).

    Raises:
        FileNotFoundError: a folder does not exist or holds no finished job.
    """
    runs: list[Run] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: results folder not found")
        found = [run for p in sorted(folder.rglob("metrics.json")) if (run := _read_run(p))]
        if not found:
            raise FileNotFoundError(f"{folder}: no job with metrics.json and .hydra/config.yaml")
        runs += found
    return runs


def mean_std(values: list[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof 1) of the defined values, and their count.

    None and NaN are left out (an undefined metric, e.g. Dice of a volume without tumour); the
    mean is NaN when nothing is left, the std when fewer than two values are.
    """
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return mean, std, int(finite.size)


def _percent(runs: list[Run], key: str) -> tuple[float, float]:
    mean, std, _ = mean_std([run.metrics.get(key) for run in runs])
    return 100 * mean, 100 * std


def _group(runs: list[Run], keys: tuple[str, ...]) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(k) for k in keys), []).append(run)
    return groups


def grid(
    runs: list[Run], metric: str, row_key: str = "model.n_layers", col_key: str = "model.n_nodes"
) -> Grid:
    """Averages ``metric`` over the runs (seeds) of each (row, col) cell, e.g. layers x nodes."""
    cells = _group(runs, (row_key, col_key))
    rows = sorted({r for r, _ in cells})
    cols = sorted({c for _, c in cells})
    shape = (len(rows), len(cols))
    mean, std, count = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, int)
    for (r, c), members in cells.items():
        i, j = rows.index(r), cols.index(c)
        m, s, n = mean_std([run.metrics.get(metric) for run in members])
        mean[i, j], std[i, j], count[i, j] = 100 * m, 100 * s, n
    return Grid(metric, row_key, col_key, rows, cols, mean, std, count)


def _sae_setting(run: Run) -> tuple[bool, str]:
    """(regularised, row label) of a run from its ``model.sae`` config."""
    name, sae = run.get("model.name"), run.get("model.sae")
    if sae is None:
        return True, str(name)  # a model without a sparse-autoencoder loss
    lam, beta, rho = (float(sae.get(k) or 0.0) for k in ("lambda_l2", "beta", "rho"))
    if not lam and not beta:
        return False, f"{name}, lambda = beta = 0"
    return True, f"{name}, lambda = {lam:g}, beta = {beta:g}, rho = {rho:g}"


def table1(runs: list[Run], stage: str = "test", level: str = "pixel") -> Table:
    """Table 1: one row per sparse-autoencoder setting (``model.sae``), mean ± std over seeds.

    Rows without regularisation (lambda = beta = 0) come first and get the paper's first row
    beside them; regularised PENN rows get the paper's PENN row.
    """
    groups: dict[tuple[bool, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(_sae_setting(run), []).append(run)
    rows = []
    for (regularised, label), members in sorted(groups.items()):
        is_penn = members[0].get("model.name") == "penn"
        paper = PAPER_TABLE1["regularised" if regularised else "unregularised"] if is_penn else {}
        rows.append(
            Row(
                label,
                len(members),
                {m: _percent(members, f"{stage}/{level}/{m}") for m in METRICS},
                paper,
            )
        )
    return Table(
        f"Table 1: with and without sparsity ({stage}/{level}, %)",
        METRICS,
        rows,
        _note(stage, level, "Table 1"),
    )


def _note(stage: str, level: str, which: str) -> str:
    return (
        f"ours: `{stage}/{level}/*` of each run, mean ± std over its n runs (seeds); "
        f"paper: the numbers printed in Chen et al. 2024, {which}, not ours."
    )


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def to_markdown(table: Table) -> str:
    """The table as Markdown: method, n, then per metric our ``mean ± std`` and the paper's."""
    header = ["method", "n"]
    for m in table.metrics:
        header += [m, f"{m} (paper)"]
    lines = [f"**{table.title}**", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in table.rows:
        cells = [row.label, str(row.n)]
        for m in table.metrics:
            paper = row.paper.get(m)
            cells += [_cell(*row.ours[m]), "–" if paper is None else f"{paper:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", table.note])


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """CSV text of a header and rows (``\n`` line ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def number_text(value: float | None) -> str:
    """A CSV number with four decimals; empty for None or NaN."""
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def to_csv(table: Table) -> str:
    """The table as CSV with separate columns ``<metric>_mean``, ``_std`` and ``_paper`` (in %)."""
    header = ["method", "n"]
    for m in table.metrics:
        header += [f"{m}_mean", f"{m}_std", f"{m}_paper"]
    rows = []
    for row in table.rows:
        cells: list[Any] = [row.label, row.n]
        for m in table.metrics:
            cells += [
                number_text(row.ours[m][0]),
                number_text(row.ours[m][1]),
                number_text(row.paper.get(m)),
            ]
        rows.append(cells)
    return csv_text(header, rows)


def grid_markdown(g: Grid) -> str:
    """One Fig. 6 grid as Markdown: rows ``row_key``, columns ``col_key``, mean ± std (n) in %."""
    lines = [
        f"**{g.metric} (%, mean ± std over seeds (n)), {g.row_key} x {g.col_key}**",
        "",
        f"| {g.row_key} \\ {g.col_key} | " + " | ".join(map(str, g.cols)) + " |",
        "|---" * (len(g.cols) + 1) + "|",
    ]
    for i, r in enumerate(g.rows):
        cells = [
            _cell(g.mean[i, j], g.std[i, j]) + f" ({g.count[i, j]})" for j in range(len(g.cols))
        ]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_separation(g: Grid, alpha: float = 0.05) -> str:
    """Which cells differ from the best one by more than their seeds' spread, in words.

    The best cell is the highest mean; every other cell with two or more runs is compared with
    it by Welch's t-test on the two cells' (mean, sd, n): below it by more than the seed spread
    when p < ``alpha``, within the spread otherwise. Cells with fewer than two runs are listed as
    not testable.
    """
    from scipy.stats import ttest_ind_from_stats

    m, s, n = g.mean, g.std, g.count
    if not np.isfinite(m).any():
        return f"{g.metric}: no finished cell."
    bi, bj = np.unravel_index(np.nanargmax(m), m.shape)
    text = (
        f"{g.metric}: best cell {g.row_key}={g.rows[bi]}, {g.col_key}={g.cols[bj]}, "
        f"{_cell(m[bi, bj], s[bi, bj])} (n = {n[bi, bj]})."
    )
    found = {"below": [], "within": [], "untestable": []}
    for i, j in np.ndindex(m.shape):
        if (i, j) == (bi, bj) or n[i, j] == 0:
            continue
        if n[i, j] < 2 or n[bi, bj] < 2:
            kind = "untestable"
        else:
            args = (m[bi, bj], s[bi, bj], n[bi, bj], m[i, j], s[i, j], n[i, j])
            kind = "below" if ttest_ind_from_stats(*args, equal_var=False)[1] < alpha else "within"
        found[kind].append(f"({g.rows[i]}, {g.cols[j]})")
    labels = {
        "below": f"below it by more than the seed spread (Welch's t-test, p < {alpha:g})",
        "within": "within the seed spread of it",
        "untestable": "not testable (fewer than two runs)",
    }
    for kind, cells in found.items():
        if cells:
            text += f" Cells {labels[kind]}: {', '.join(cells)}."
    return text


def grid_csv(grids: list[Grid]) -> str:
    """Fig. 6 grids in long form: one line per (metric, row, col) with mean, std and n (in %)."""
    if not grids:
        return ""
    rows = [
        [g.metric, r, c, number_text(g.mean[i, j]), number_text(g.std[i, j]), int(g.count[i, j])]
        for g in grids
        for i, r in enumerate(g.rows)
        for j, c in enumerate(g.cols)
    ]
    return csv_text(["metric", grids[0].row_key, grids[0].col_key, "mean", "std", "n"], rows)


def write_text(path: str | Path, text: str) -> Path:
    """Writes a table file atomically."""
    return write_atomic_bytes(path, text.encode())
