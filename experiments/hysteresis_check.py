"""Would hysteresis thresholding help a trained binary model? Re-scores it, choosing on validation.

    python experiments/hysteresis_check.py outputs/train/RUN [the run's data overrides ...]

Predicts the validation and test volumes once with the run's stored read-out, then tries every
(low, high, min_size): voxels >= low kept where their 3D component reaches >= high
(``skimage.filters.apply_hysteresis_threshold``; high = 0 is a plain threshold at low), then
components under min_size dropped. Prints the eight best settings by pooled validation Dice with
their test Dice (mean per volume and pooled), and the best plain threshold for comparison.
"""

from __future__ import annotations

import sys

import numpy as np
from skimage import measure
from skimage.filters import apply_hysteresis_threshold
from trained_run import load_run, pixel_dice

from penn.evaluation import class_map, predict_volumes

LOWS = np.round(np.arange(0.30, 0.995, 0.03), 3)
HIGHS = (0.0, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
MIN_SIZES = (0, 250, 1000)


def segment(probs: np.ndarray, low: float, high: float, min_size: int) -> np.ndarray:
    mask = apply_hysteresis_threshold(probs, low, high) if high > low else probs >= low
    if min_size:
        components = measure.label(mask)
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = sizes[components] >= min_size
    return mask


def dice(probs: list, truths: list, setting: tuple) -> tuple[float, float]:
    """(mean per volume, as penn.metrics takes it; pooled) of one setting."""
    per, tp_fp_fn = [], np.zeros(3)
    for p, t in zip(probs, truths, strict=True):
        m = segment(p, *setting)
        tp_fp_fn += [(m & t).sum(), (m & ~t).sum(), (~m & t).sum()]
        per.append(pixel_dice(m, t))
    tp, fp, fn = tp_fp_fn
    return float(np.nanmean(per)), float(2 * tp / (2 * tp + fp + fn))


def main(argv: list[str] | None = None) -> int:
    _, dm, net, meta = load_run(__doc__.splitlines()[0], argv)
    probs, truths = {}, {}
    for split in ("val", "test"):
        part = dm.splits[split]
        pred = predict_volumes(
            net,
            part.slices,
            meta["inference"],
            meta.get("model"),
            progress=False,
            slice_spacings=part.slice_spacings(dm.plane),
        )
        probs[split] = [p.probs[:, 0] for p in pred]
        truths[split] = [class_map(labels, dm.classes).astype(bool) for labels in part.labels]
    settings = [(lo, hi, ms) for lo in LOWS for hi in HIGHS for ms in MIN_SIZES if not 0 < hi <= lo]
    scored = sorted(((dice(probs["val"], truths["val"], s)[1], s) for s in settings), reverse=True)
    plain = next(item for item in scored if item[1][1] == 0)
    print("| low | high | min_size | val pooled | test Dice | test pooled |")
    print("|---|---|---|---|---|---|")
    for val, setting in [*scored[:8], plain]:
        test = dice(probs["test"], truths["test"], setting)
        high = "none" if setting[1] == 0 else setting[1]
        print(f"| {setting[0]} | {high} | {setting[2]} | {100 * val:.1f} | "
              f"{100 * test[0]:.1f} | {100 * test[1]:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
