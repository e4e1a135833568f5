"""How much would vetoing tumour outside the vertebral bodies give? An upper bound, from the truth.

    python experiments/body_veto_ceiling.py outputs/train/RUN [the run's data overrides ...]

Segments the validation and test volumes with a trained binary tumour model exactly as its
model.pt says (read-out, threshold, post-processing), then drops every predicted 3D component
with less than half of its voxels inside the TRUE vertebral bodies (labels >= 1). A three-class
model would have to predict the bodies itself, so this is a ceiling for such a veto, not a
result. Prints the pixel Dice (mean per volume; as in penn.metrics, a volume without tumour and
without prediction has no Dice and is left out) with and without the veto, and the per-volume
figures with it.
"""

from __future__ import annotations

import sys

import numpy as np
from skimage import measure
from trained_run import load_run, pixel_dice

from penn.evaluation import class_map, predict_volumes
from penn.inference import decide, postprocess


def veto(mask: np.ndarray, body: np.ndarray) -> np.ndarray:
    """``mask`` without its components that lie mostly outside ``body``."""
    components = measure.label(mask)
    inside = np.bincount(components.ravel(), weights=body.ravel(), minlength=components.max() + 1)
    total = np.bincount(components.ravel(), minlength=components.max() + 1)
    keep = inside >= 0.5 * total
    keep[0] = False
    return keep[components]


def main(argv: list[str] | None = None) -> int:
    _, dm, net, meta = load_run(__doc__.splitlines()[0], argv)
    inference = meta["inference"]
    for split in ("val", "test"):
        part = dm.splits[split]
        pred = predict_volumes(net, part.slices, inference, meta.get("model"), progress=False,
                               slice_spacings=part.slice_spacings(dm.plane))  # fmt: skip
        plain, vetoed = [], []
        for p, labels in zip(pred, part.labels, strict=True):
            truth = class_map(labels, dm.classes).astype(bool)
            mask = postprocess(decide(p.probs, inference["threshold"]), **inference["postprocess"])
            mask = mask.astype(bool)
            plain.append(pixel_dice(mask, truth))
            vetoed.append(pixel_dice(veto(mask, labels >= 1), truth))
        print(f"{split}: pixel Dice {100 * np.nanmean(plain):.1f} %, with the body veto "
              f"{100 * np.nanmean(vetoed):.1f} % (per volume: "
              f"{', '.join(f'{100 * v:.0f}' for v in vetoed)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
