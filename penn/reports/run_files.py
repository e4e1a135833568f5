"""The files of a run: metrics.json, per-volume CSV tables, a Markdown metrics table."""

from __future__ import annotations

import csv
import io as _bytesio
import math
from pathlib import Path

from penn.io.files import write_atomic_bytes, write_json
from penn.metrics import METRICS  # noqa: E402

__all__ = ["write_csv", "write_metrics", "metrics_table"]


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Writes rows (dicts with the same keys) as CSV, atomically; NaN stays an empty cell."""
    buffer = _bytesio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        )
    return write_atomic_bytes(path, buffer.getvalue().encode())


def write_metrics(path: str | Path, metrics: dict[str, float]) -> Path:
    """Writes the flat metric dict as JSON (NaN becomes null), atomically."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    return write_json(path, clean)


def metrics_table(metrics: dict[str, float], stage: str = "test") -> str:
    """Markdown table: one row per level (pixel, pixel_pooled, patch), one column per metric."""
    lines = ["| level | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for level in ("pixel", "pixel_pooled", "patch"):
        cells = []
        for m in METRICS:
            v = metrics.get(f"{stage}/{level}/{m}")
            cells.append(
                "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"
            )
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
