"""Figures: overlays of a prediction on its slices, heatmaps of a sweep grid."""

from __future__ import annotations

import io as _bytesio
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from penn.io.files import write_atomic_bytes
from penn.reports.tables import Grid

__all__ = ["pick_slices", "overlay_figure", "write_overlays", "heatmap_figure", "write_heatmaps"]


def pick_slices(truth: np.ndarray, count: int) -> list[int]:
    """Slices with the most foreground (the middle slice when there is none)."""
    area = truth.reshape(truth.shape[0], -1).astype(bool).sum(axis=1)
    if area.max() == 0:
        return [truth.shape[0] // 2]
    order = np.argsort(area)[::-1]
    return sorted(int(i) for i in order[:count] if area[i] > 0)


def overlay_figure(
    image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, title: str
) -> bytes:
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


def write_overlays(
    folder: str | Path,
    name: str,
    slices: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    count: int,
) -> list[Path]:
    """Writes overlay PNGs of the ``count`` slices with the most foreground; returns the paths."""
    reference = truth if truth is not None and truth.any() else pred
    paths = []
    for s in pick_slices(reference, count):
        png = overlay_figure(
            slices[s], None if truth is None else truth[s], pred[s], f"{name} slice {s}"
        )
        paths.append(write_atomic_bytes(Path(folder) / f"{name}_slice{s:03d}.png", png))
    return paths


def heatmap_figure(grid: Grid, of: str = "mean") -> bytes:
    """PNG bytes of one Fig. 6 panel over rows x cols, each cell annotated.

    ``of="mean"``: cells show ``mean`` (%) and, under it, ``± std`` when there were two or more
    seeds; ``of="std"``: the standard deviation over seeds (%) with the run count ``n``. Empty
    cells (no finished job, or one run for the std) stay blank.
    """
    values = grid.mean if of == "mean" else grid.std
    fig, ax = plt.subplots(figsize=(1.1 * len(grid.cols) + 2.2, 0.8 * len(grid.rows) + 1.6))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(grid.rows)):
        for j in range(len(grid.cols)):
            mean, std = grid.mean[i, j], grid.std[i, j]
            if np.isnan(values[i, j]):
                continue
            if of == "std":
                text = f"{std:.1f}\nn = {grid.count[i, j]}"
            else:
                text = f"{mean:.1f}" if np.isnan(std) else f"{mean:.1f}\n± {std:.1f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9,
                color="black" if values[i, j] > middle else "white",
            )
    ax.set_xticks(range(len(grid.cols)), [str(c) for c in grid.cols])
    ax.set_yticks(range(len(grid.rows)), [str(r) for r in grid.rows])
    ax.set_xlabel(grid.col_key)
    ax.set_ylabel(grid.row_key)
    ax.set_title(f"{grid.metric} (%), {'mean' if of == 'mean' else 'sd'} over seeds")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buffer = _bytesio.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_heatmaps(folder: str | Path, grids: list[Grid]) -> list[Path]:
    """Writes one heatmap PNG per grid, named after its metric (``test_pixel_dice.png``), and
    the heatmap of its seed sd (``test_pixel_dice_sd.png``) when a cell has two or more runs."""
    paths = []
    for g in grids:
        stem = Path(folder) / g.metric.replace("/", "_")
        paths.append(write_atomic_bytes(stem.with_name(f"{stem.name}.png"), heatmap_figure(g)))
        if (g.count >= 2).any():
            png = heatmap_figure(g, "std")
            paths.append(write_atomic_bytes(stem.with_name(f"{stem.name}_sd.png"), png))
    return paths
