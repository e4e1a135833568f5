"""The pixel Dice a perfect patch classifier would reach, per labelling rule and read-out.

    python experiments/patch_rule_ceiling.py data/phantom --label 2
    python experiments/patch_rule_ceiling.py ../shared/data/lumbar-vb --label 1 --patch 32

Each patch gets its true label (the 60 % `fraction` rule or the `center` rule, as
penn.patches), then every pixel gets the read-out of those labels: `mean` over the covering
patches (the paper), the centred patch (`center`), or it smoothed by a Gaussian. The best
threshold's Dice (mean per volume and pooled over the volumes with the label) is the ceiling
that the labelling rule and read-out put on a model, before any classification error.
Slices are the first array axis (sagittal for RAS volumes, penn's default plane).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def readouts(patch: int) -> dict:
    return {
        "mean": lambda p: ndimage.uniform_filter(p, patch, mode="constant"),
        "center, sigma 4": lambda p: ndimage.gaussian_filter(p, 4, mode="constant"),
        "center, sigma 2": lambda p: ndimage.gaussian_filter(p, 2, mode="constant"),
        "center": lambda p: p,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="dataset in the nnU-Net raw layout")
    parser.add_argument("--label", type=int, default=2, help="label value of the target")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.6, help="fraction rule threshold")
    args = parser.parse_args(argv)
    masks = [
        np.asarray(nib.as_closest_canonical(nib.load(f)).dataobj) == args.label
        for f in sorted((args.root / "labelsTr").glob("*.nii*"))
    ]
    masks = [m for m in masks if m.any()]
    thresholds = np.round(np.arange(0.05, 0.96, 0.05), 2)
    print(f"{len(masks)} volumes with label {args.label} under {args.root}")
    print("| rule | read-out | best threshold | Dice, mean per volume | Dice, pooled |")
    print("|---|---|---|---|---|")
    for rule in ("fraction", "center"):
        for name, readout in readouts(args.patch).items():
            counts = np.zeros((len(masks), len(thresholds), 3))
            for v, mask in enumerate(masks):
                for s in mask:
                    m = s.astype(np.float32)
                    if rule == "fraction":
                        frac = ndimage.uniform_filter(m, args.patch, mode="constant")
                        m = (frac >= args.threshold).astype(np.float32)
                    dense = readout(m)
                    for t, thr in enumerate(thresholds):
                        pred = dense >= thr
                        counts[v, t] += [(pred & s).sum(), (pred & ~s).sum(), (~pred & s).sum()]
            tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
            per_volume = (2 * tp / np.maximum(2 * tp + fp + fn, 1)).mean(0)
            pooled = 2 * tp.sum(0) / np.maximum(2 * tp.sum(0) + fp.sum(0) + fn.sum(0), 1)
            best = int(np.argmax(pooled))
            print(f"| {rule} | {name} | {thresholds[best]:.2f} | {100 * per_volume[best]:.1f} "
                  f"| {100 * pooled[best]:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
