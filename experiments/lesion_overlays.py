"""Overlay PNGs of implanted lesions, so a reader can judge their realism (docs/lesions.md).

    python experiments/lesion_overlays.py                       # 4 scans -> docs/images/lesions
    python experiments/lesion_overlays.py --cases vb2_02 vb2_10 --out /tmp/lesions
    python experiments/lesion_overlays.py data.lesions.seed=3   # any config override

For each scan with lesions (the fixed lesions of ``data.lesions.seed``, as the benchmark's
validation and test scans and `python -m penn.make_lesions` have them), one PNG for each of its
``--per-case`` largest lesions: the sagittal slice through the lesion centre before, after, and
after with the tumour (red) and vertebra (yellow) label contours, cropped around the lesion.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from penn.io.dataset import list_cases, read_case, read_dataset_json
from penn.io.files import write_atomic_bytes
from penn.synth.lesions import LesionSpec, implant_lesions, lesion_rng, on_disk_values

log = logging.getLogger("lesion_overlays")

CONF = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_CASES = ["vb2_02", "vb2_08", "vb2_10", "vb2_19", "vb2_20"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--per-case", type=int, default=2, help="lesions shown per scan")
    parser.add_argument("--out", type=Path, default=Path("docs/images/lesions"))
    return parser.parse_args(argv)


def lesion_figure(
    before: np.ndarray,
    after: np.ndarray,
    labels: np.ndarray,
    title: str,
    window: tuple[float, float],
) -> bytes:
    """PNG bytes of one (H, W) sagittal slice: before, after, after with label contours.

    Shown with superior up and anterior to the left, as in penn's other overlays, all three
    with the same grey-value ``window`` (low, high).
    """
    views = [np.rot90(a) for a in (before, after, after)]
    lo, hi = window
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    for ax, view, name in zip(axes, views, ("before", "after", "labels"), strict=True):
        ax.imshow(view, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    rotated = np.rot90(labels)
    axes[2].contour(rotated >= 1, levels=[0.5], colors="yellow", linewidths=0.6)
    axes[2].contour(rotated == 2, levels=[0.5], colors="red", linewidths=0.8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def crop_around(labels: np.ndarray, centre: tuple[int, int], half: int) -> tuple[slice, slice]:
    """A square window of side 2*half around ``centre``, shifted to stay inside the slice."""
    starts = [
        int(np.clip(c - half, 0, n - 2 * half)) for c, n in zip(centre, labels.shape, strict=True)
    ]
    return tuple(slice(s, s + 2 * half) for s in starts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["data=lumbar_vb_lesions", *args.overrides])
    lesion_cfg = OmegaConf.to_container(cfg.data.lesions, resolve=True)
    spec, seed = LesionSpec.from_config(lesion_cfg), int(lesion_cfg["seed"])
    root = Path(cfg.data.root)
    allowed = sorted(int(v) for v in read_dataset_json(root)["labels"].values())
    cases = {c.name: c for c in list_cases(root)}
    for name in args.cases:
        volume = read_case(cases[name], allowed)
        image, labels, records = implant_lesions(
            volume.image, volume.labels, volume.spacing, spec, lesion_rng(seed, name)
        )
        image = on_disk_values(image, volume)
        largest = sorted(range(len(records)), key=lambda i: -records[i]["voxels"])
        for k in sorted(largest[: args.per_case]):
            record = records[k]
            x, y, z = record["centre_voxel"]
            window = crop_around(labels[x], (y, z), half=48)
            title = (
                f"{name} lesion {k + 1}/{len(records)}: r {record['radius_mm']:.1f} mm, "
                f"{record['kind']} x{record['contrast']:.2f} (fluid x{record['fluid_ratio']:.2f}), "
                f"rim {record['rim']:.2f}, x={x}"
            )
            grey = tuple(np.percentile(volume.image[x], [0.5, 99.5]))  # the whole slice's range
            png = lesion_figure(
                volume.image[x][window], image[x][window], labels[x][window], title, grey
            )
            path = write_atomic_bytes(args.out / f"{name}_lesion{k + 1}.png", png)
            log.info("wrote %s (%d KB)", path, len(png) // 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
