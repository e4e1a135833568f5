"""Validation curves of runs from their CSV logs, and one figure per method over its seeds.

A run's ``csv/metrics.csv`` (Lightning's CSV logger, always on in penn) holds one line per
validation with ``val/{pixel,patch}/dice`` and ``val/.../loss``; the kept checkpoint is the epoch
that is best by the run's ``callbacks.checkpoint`` monitor and mode.

Examples::

    curve = read_curve(Path("outputs/train/2026-01-01_12-00-00"))
    png = curve_figure("unet", [("seed 1", curve)])
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

__all__ = ["Curve", "read_curve", "curve_figure"]


@dataclass(frozen=True)
class Curve:
    """One run's validations: 1-based ``epochs``, ``dice`` and ``loss``, and the ``kept`` epoch."""

    level: str
    epochs: list[int]
    dice: list[float]
    loss: list[float]
    kept: int | None


def read_curve(run: str | Path) -> Curve:
    """The fine-tuning validation curve of a run folder (``csv/metrics.csv``).

    Raises:
        FileNotFoundError: the run has no CSV log.
        ValueError: the log holds no validation.
    """
    run = Path(run)
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CSV log of the run")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    # per-epoch validations carry an epoch; a run's final metrics row (log_final) may not
    by_level = {
        level: [r for r in rows if r.get(f"val/{level}/dice") and r.get("epoch")]
        for level in ("pixel", "patch")
    }
    level = "pixel" if by_level["pixel"] else "patch"
    picked = by_level[level]
    if not picked:
        raise ValueError(f"{path}: no validation in the log")
    epochs = [int(r["epoch"]) + 1 for r in picked]
    dice = [float(r[f"val/{level}/dice"]) for r in picked]
    loss = [float(r[f"val/{level}/loss"]) for r in picked]
    return Curve(level, epochs, dice, loss, _kept_epoch(run, level, epochs, dice, loss))


def _kept_epoch(run: Path, level: str, epochs, dice, loss) -> int | None:
    """The epoch the run's checkpoint callback kept (the first best by its monitor and mode)."""
    config = run / ".hydra" / "config.yaml"
    monitor, mode = f"val/{level}/loss", "min"
    if config.is_file():
        checkpoint = OmegaConf.select(OmegaConf.load(config), "callbacks.checkpoint")
        if checkpoint is not None:
            monitor = str(checkpoint.get("monitor", monitor)).replace("${model.level}", level)
            mode = str(checkpoint.get("mode", mode))
    values = dice if monitor.endswith("/dice") else loss if monitor.endswith("/loss") else None
    if values is None:
        return None
    best = max(values) if mode == "max" else min(values)
    return epochs[values.index(best)]


def curve_figure(title: str, curves: list[tuple[str, Curve]]) -> bytes:
    """PNG of the validation Dice of each (label, curve), its kept epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for k, (label, curve) in enumerate(curves):
        colour = f"C{k}"
        ax.plot(curve.epochs, curve.dice, "o-", ms=3, color=colour, label=label)
        if curve.kept is not None:
            ax.axvline(curve.kept, color=colour, ls="--", lw=1)
    level = curves[0][1].level if curves else "pixel"
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val/{level}/dice (threshold 0.5)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (dashed: kept checkpoint)", fontsize=9)
    if any(label for label, _ in curves):
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
