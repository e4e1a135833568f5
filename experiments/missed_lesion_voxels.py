"""Where are the lesion voxels a model misses? Reads `penn.predict` output against the labels.

    python -m penn.predict ckpt=RUN/model.pt input=IMAGES output=OUT write_probabilities=true
    python experiments/missed_lesion_voxels.py OUT DATA_ROOT [--label 2] [--mask-value 1]
        [--reference 1] [--edges 0 1.3 1.45 1.6 1.8 inf]

For every volume folder in OUT (``mask.nii.gz``, ``probabilities.nii.gz``) the labels are read from
``DATA_ROOT/labelsTr/<volume>.nii.gz`` and the image from ``imagesTr/<volume>_0000.nii.gz``, all
on the scan's own grid (penn.predict writes there). Prints, per volume: the target's voxels found
(TP) and missed (FN) in each slice along the first axis, how deep the missed voxels lie inside
the target (in-plane distance to its edge, px), their image intensity relative to the median of
the reference label (the vertebral body on the phantom), and the model's probability at them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

EDGES = (0.0, 1.3, 1.45, 1.6, 1.8, np.inf)  # default intensity bins (x the reference median)


def in_plane_depth(mask: np.ndarray) -> np.ndarray:
    """Distance (px) of each voxel of ``mask`` to the nearest voxel outside it, slice by slice."""
    return np.stack([ndimage.distance_transform_edt(s) for s in mask])


def describe(
    name: str,
    pred: np.ndarray,
    prob: np.ndarray,
    labels: np.ndarray,
    image: np.ndarray,
    label: int,
    reference: int,
    edges: tuple[float, ...] = EDGES,
) -> list[str]:
    """Report lines for one volume: counts, per-slice recall, and what the missed voxels are like.

    ``edges``: intensity bins (relative to the median of the ``reference`` label) for the share
    of target voxels found in each.
    """
    truth = labels == label
    tp, fn, fp = truth & pred, truth & ~pred, pred & ~truth
    lines = [f"{name}: truth {truth.sum()}, TP {tp.sum()}, FN {fn.sum()}, FP {fp.sum()}"]
    slices = [
        f"{k}: {truth[k].sum()}/{tp[k].sum()}" for k in range(truth.shape[0]) if truth[k].any()
    ]
    lines.append("  per slice (truth/TP): " + ", ".join(slices))
    if fn.any() and tp.any():
        depth = in_plane_depth(truth)
        ref = np.median(image[labels == reference]) if (labels == reference).any() else 1.0
        lines.append(
            f"  depth px (FN / TP median): {np.median(depth[fn]):.1f} / {np.median(depth[tp]):.1f};"
            f" FN within 2 px of the edge: {100 * (depth[fn] <= 2).mean():.0f} %"
        )
        lines.append(
            f"  intensity / reference median (FN / TP): {np.median(image[fn]) / ref:.2f} / "
            f"{np.median(image[tp]) / ref:.2f}"
        )
        relative, found = image[truth] / ref, pred[truth]
        cells = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            inside = (relative >= lo) & (relative < hi)
            if inside.any():
                cells.append(f"{lo:g}-{hi:g}: {100 * found[inside].mean():.0f} % of {inside.sum()}")
        lines.append("  found by intensity / reference: " + ", ".join(cells))
        lines.append(
            f"  probability (FN median, 90th pct / TP median): {np.median(prob[fn]):.2f}, "
            f"{np.percentile(prob[fn], 90):.2f} / {np.median(prob[tp]):.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="a penn.predict output folder")
    parser.add_argument("data", type=Path, help="the dataset root (nnU-Net raw layout)")
    parser.add_argument("--label", type=int, default=2, help="the target's label value")
    parser.add_argument(
        "--mask-value", type=int, default=1,
        help="the target's value in mask.nii.gz (1 for a binary model; its class index with "
        "data.target=all)",
    )  # fmt: skip
    parser.add_argument("--reference", type=int, default=1, help="label whose median is 1.0")
    parser.add_argument(
        "--edges", type=float, nargs="+", default=list(EDGES), help="intensity bin edges"
    )
    args = parser.parse_args(argv)
    folders = sorted(p for p in args.predictions.iterdir() if (p / "mask.nii.gz").exists())
    if not folders:
        parser.error(f"{args.predictions}: no <volume>/mask.nii.gz in it")
    for folder in folders:
        name = folder.name
        mask = np.asanyarray(nib.load(folder / "mask.nii.gz").dataobj)
        pred = mask == args.mask_value
        prob = np.asanyarray(nib.load(folder / "probabilities.nii.gz").dataobj, dtype=np.float32)
        labels = np.asanyarray(nib.load(args.data / "labelsTr" / f"{name}.nii.gz").dataobj)
        image = np.asanyarray(nib.load(args.data / "imagesTr" / f"{name}_0000.nii.gz").dataobj)
        if prob.shape != labels.shape:
            parser.error(f"{folder}: probabilities {prob.shape} but labels {labels.shape}")
        lines = describe(
            name, pred, prob, labels.astype(int), image, args.label, args.reference,
            tuple(args.edges),
        )  # fmt: skip
        print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
