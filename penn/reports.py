"""Results as files and tables: metrics.json, a Markdown metrics table and overlay images."""

from __future__ import annotations

import io as _bytesio
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from penn.io import write_atomic_bytes, write_json  # noqa: E402
from penn.metrics import METRICS  # noqa: E402

__all__ = ["write_metrics", "metrics_table", "overlay_figure", "write_overlays", "pick_slices"]


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
            cells.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v))
                         else f"{100 * v:.1f}")
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pick_slices(truth: np.ndarray, count: int) -> list[int]:
    """Slices with the most foreground (the middle slice when there is none)."""
    area = truth.reshape(truth.shape[0], -1).astype(bool).sum(axis=1)
    if area.max() == 0:
        return [truth.shape[0] // 2]
    order = np.argsort(area)[::-1]
    return sorted(int(i) for i in order[:count] if area[i] > 0)


def overlay_figure(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray,
                   title: str) -> bytes:  # fmt: skip
    """PNG bytes of a slice in the style of the paper's Fig. 7: image, truth, prediction, overlay.

    Slices (H = posterior-anterior, W = inferior-superior for sagittal) are shown with superior up
    and anterior to the left, as radiologists read a sagittal MRI.
    """

    def view(a):
        return np.rot90(a)

    panels = [("image", image, None), ("prediction", pred, "viridis")]
    if truth is not None:
        panels.insert(1, ("truth", truth, "viridis"))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.4))
    vmax = max(1, int(pred.max()), int(truth.max()) if truth is not None else 1)
    for ax, (name, arr, cmap) in zip(axes, panels, strict=False):
        ax.imshow(view(arr), cmap=cmap or "gray", vmin=0, vmax=1 if cmap is None else vmax)
        ax.set_title(name)
    axes[-1].imshow(view(image), cmap="gray")
    masked = np.ma.masked_equal(view(pred), 0)
    axes[-1].imshow(masked, cmap="autumn", alpha=0.5, vmin=0, vmax=vmax)
    if truth is not None and truth.any():
        axes[-1].contour(view(truth > 0), levels=[0.5], colors="cyan", linewidths=0.8)
    axes[-1].set_title("overlay (truth: cyan)")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = _bytesio.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def write_overlays(folder: str | Path, name: str, slices: np.ndarray, truth: np.ndarray | None,
                   pred: np.ndarray, count: int) -> list[Path]:  # fmt: skip
    """Writes overlay PNGs of the ``count`` slices with the most foreground; returns the paths."""
    reference = truth if truth is not None and truth.any() else pred
    paths = []
    for s in pick_slices(reference, count):
        png = overlay_figure(slices[s], None if truth is None else truth[s], pred[s],
                             f"{name} slice {s}")
        paths.append(write_atomic_bytes(Path(folder) / f"{name}_slice{s:03d}.png", png))
    return paths
