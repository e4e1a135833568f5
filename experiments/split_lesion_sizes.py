"""How large are the target's 3D components in each volume of a split? Prints one line per split.

    python experiments/split_lesion_sizes.py [--seeds 42 1 2] [-- overrides]

For each seed the data module's split by volume is rebuilt (``seed=S`` plus the overrides) and
each validation and test volume's connected components of the target (3D, full connectivity) are
listed by voxel count, smallest first. Shows which splits' validation volumes hold the small
lesions that decide a test mean.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from skimage import measure
from trained_run import set_up_data

from penn.evaluation import class_map


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    args = parser.parse_args(argv[:split_at])
    print("| seed | split | volume: component sizes (voxels) |")
    print("|---|---|---|")
    for seed in args.seeds:
        _, dm = set_up_data([f"seed={seed}", *argv[split_at + 1 :]])
        for split in ("val", "test"):
            cells = []
            for name, labels in zip(dm.splits[split].names, dm.splits[split].labels, strict=True):
                sizes = np.bincount(measure.label(class_map(labels, dm.classes) > 0).ravel())[1:]
                cells.append(f"{name}: {', '.join(str(int(n)) for n in sorted(sizes)) or '–'}")
            print(f"| {seed} | {split} | {'; '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
