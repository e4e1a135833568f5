"""Table 2 like for like: one row per method, mean ± sd over its seeds, in-domain and external,
with what each method cost and whether it converged.

A method is a run's ``model.name`` with its ``recipe_name`` (when it has one). Accuracy columns
are the test split's (per volume, pooled Dice, HD95) and the external collection's over its
labelled extent (``external/extent/...``); cost columns are parameters, optimizer steps, epochs,
training time and the test split's segmentation time per volume, and the machine. A run
converged when early stopping ended it (``train/stopped_early``); a method whose runs did not all
converge is marked so in its row.

Examples::

    rows = comparison(collect_runs(["multirun/baselines/2026-01-01_12-00-00"]))
    print(comparison_markdown(rows))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from penn.reports.tables import Run, csv_text, mean_std, number_text

__all__ = [
    "PAPER_TABLE2",
    "Column",
    "ACCURACY",
    "COST",
    "MethodRow",
    "method_of",
    "comparison",
    "comparison_markdown",
    "comparison_csv",
]

# Table 2 of Chen et al. 2024 (F1 / IoU / Dice, %), keyed by penn's `model.name`. Not ours, and
# several rows were copied from other papers and datasets (docs/baseline_networks.md).
PAPER_TABLE2 = {
    "unet": {"f1": 79.8, "iou": 70.4, "dice": 82.5},
    "dtvnet": {"f1": 78.3, "iou": 74.7, "dice": 85.2},
    "multiresunet": {"f1": 88.2, "iou": 80.6, "dice": 88.4},
    "sau_net": {"f1": 87.6, "iou": 81.8, "dice": 88.3},
    "opconvnet": {"f1": 90.2, "iou": 82.3, "dice": 89.9},
    "penn": {"f1": 91.3, "iou": 83.8, "dice": 91.1},
}
DISPLAY = {
    "unet": "UNet",
    "dtvnet": "D-TVNet",
    "multiresunet": "MultiResUNet",
    "sau_net": "SAU-Net",
    "opconvnet": "OP-convNet",
    "penn": "PENN",
    "seg_unet": "seg_unet",
}


@dataclass(frozen=True)
class Column:
    """A table column: ``label``, the metrics.json ``key``, a ``scale`` and decimal ``digits``."""

    label: str
    key: str
    scale: float = 100.0
    digits: int = 1


def _accuracy(prefix: str) -> tuple[Column, ...]:
    names = {"precision": "precision", "recall": "recall", "f1": "F1", "iou": "IoU", "dice": "Dice"}
    return (
        *(Column(label, f"{prefix}/pixel/{m}") for m, label in names.items()),
        Column("Dice pooled", f"{prefix}/pixel_pooled/dice"),
        Column("HD95 mm", f"{prefix}/pixel/hd95_mm", 1.0),
    )


ACCURACY = (*_accuracy("test"), *_accuracy("external/extent"))
COST = (
    Column("parameters (M)", "model/parameters", 1e-6, 2),
    Column("steps", "train/steps", 1.0, 0),
    Column("epochs", "train/epochs", 1.0, 0),
    Column("training (min)", "time/train_s", 1 / 60, 1),
    Column("segmentation (s / volume)", "time/segment_s_per_volume", 1.0, 1),
)


@dataclass
class MethodRow:
    """One method: its ``n`` runs, how many ``converged``, the ``machines`` they ran on and
    each column's (mean, sd) after scaling (sd NaN for one run)."""

    method: str
    model: str
    n: int
    converged: int
    machines: list[str]
    values: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.converged == self.n:
            return self.method
        return f"{self.method} (not converged: {self.converged} of {self.n} stopped early)"


def method_of(run: Run) -> str:
    """A run's method: its model's display name, with its recipe when it has one."""
    name = str(run.get("model.name"))
    recipe = run.metrics.get("recipe") or run.get("recipe_name")
    shown = DISPLAY.get(name, name)
    return f"{shown}, recipe {recipe}" if recipe else shown


def comparison(runs: list[Run]) -> list[MethodRow]:
    """One row per method, in the paper's order of Table 2 and then the others by name."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(method_of(run), []).append(run)
    order = list(PAPER_TABLE2)

    def rank(method: str) -> tuple:
        name = str(groups[method][0].get("model.name"))
        return (order.index(name) if name in order else len(order), method)

    rows = []
    for method in sorted(groups, key=rank):
        members = groups[method]
        converged = sum(1 for r in members if (r.metrics.get("train/stopped_early") or 0) >= 1)
        machines = sorted({str(r.metrics.get("machine") or "not recorded") for r in members})
        row = MethodRow(
            method, str(members[0].get("model.name")), len(members), converged, machines
        )
        for column in (*ACCURACY, *COST):
            mean, sd, _ = mean_std([r.metrics.get(column.key) for r in members])
            row.values[column.key] = (mean * column.scale, sd * column.scale)
        rows.append(row)
    return rows


def _cell(values: tuple[float, float], digits: int) -> str:
    mean, sd = values
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:,.{digits}f}"
    return text if math.isnan(sd) else f"{text} ± {sd:,.{digits}f}"


def _markdown_table(rows: list[MethodRow], columns, extra: list) -> list[str]:
    header = ["method", "n", *(c.label for c in columns), *(name for name, _ in extra)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        cells = [row.label, str(row.n)]
        cells += [_cell(row.values[c.key], c.digits) for c in columns]
        cells += [get(row) for _, get in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison_markdown(rows: list[MethodRow]) -> str:
    """The rows as three Markdown tables: in-domain test, external, and cost with the machine.

    Values are mean ± sd over each method's runs (seeds): metrics in %, HD95 in mm.
    """
    paper = [("paper Dice", _paper_dice)] if any(r.model in PAPER_TABLE2 for r in rows) else []
    test, external = ACCURACY[:7], ACCURACY[7:]
    machine = [("converged", lambda r: f"{r.converged} / {r.n}"), ("machine", _machines)]
    lines = ["**In-domain test split** (%, HD95 in mm; mean ± sd over seeds)", ""]
    lines += _markdown_table(rows, test, paper)
    lines += ["", "**External collection, over its labelled extent** (%, HD95 in mm)", ""]
    lines += _markdown_table(rows, external, [])
    lines += ["", "**Cost**", ""]
    lines += _markdown_table(rows, COST, machine)
    note = (
        "A run converged when early stopping on validation Dice ended it before its epoch cap; "
        "paper: the Dice printed in Chen et al. 2024 (several rows from other papers and data)."
    )
    return "\n".join([*lines, "", note])


def _paper_dice(row: MethodRow) -> str:
    return f"{PAPER_TABLE2[row.model]['dice']:.1f}" if row.model in PAPER_TABLE2 else "–"


def _machines(row: MethodRow) -> str:
    return ", ".join(row.machines)


def comparison_csv(rows: list[MethodRow]) -> str:
    """The rows as CSV: method, n, converged, machine, then ``<key>_mean`` and ``<key>_sd``."""
    header = ["method", "n", "converged", "machine"]
    for column in (*ACCURACY, *COST):
        header += [f"{column.key}_mean", f"{column.key}_sd"]
    lines = []
    for row in rows:
        cells = [row.method, row.n, row.converged, "; ".join(row.machines)]
        for column in (*ACCURACY, *COST):
            mean, sd = row.values[column.key]
            cells += [number_text(mean), number_text(sd)]
        lines.append(cells)
    return csv_text(header, lines)
