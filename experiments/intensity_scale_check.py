"""How much does each scan's intensity scale move the vertebral-body marrow? One line per volume.

    python experiments/intensity_scale_check.py [--marrow-label 1] [-- overrides]

Rebuilds the data module's split (``seed`` and ``data.*`` overrides, e.g.
``data.preprocess.median_to=0.32``) and, for the training and validation volumes only (the test
volumes' labels are not read), prints the median of the preprocessed marrow (label
``--marrow-label``), of the preprocessed non-zero voxels, and their ratio, then their means,
ranges and coefficients of variation. A scale that follows a lesion shows as a wide marrow range.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from trained_run import set_up_data


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marrow-label", type=int, default=1)
    args = parser.parse_args(argv[:split_at])
    _, dm = set_up_data(argv[split_at + 1 :])
    marrow, median = [], []
    print("| split | volume | marrow | median non-zero | ratio |")
    print("|---|---|---|---|---|")
    for split in ("train", "val"):
        volumes = dm.splits[split]
        for name, slices, labels in zip(volumes.names, volumes.slices, volumes.labels,
                                        strict=True):  # fmt: skip
            marrow.append(float(np.median(slices[labels == args.marrow_label])))
            median.append(float(np.median(slices[slices > 0])))
            ratio = marrow[-1] / median[-1]
            print(f"| {split} | {name} | {marrow[-1]:.3f} | {median[-1]:.3f} | {ratio:.2f} |")
    for label, values in (("marrow", np.array(marrow)), ("median non-zero", np.array(median)),
                          ("ratio", np.array(marrow) / np.array(median))):  # fmt: skip
        print(f"{label}: mean {values.mean():.3f}, {values.min():.3f}-{values.max():.3f}, "
              f"CV {100 * values.std() / values.mean():.1f} %")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
