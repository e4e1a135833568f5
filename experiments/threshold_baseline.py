"""The intensity-threshold baseline on the phantom that a config describes.

    python experiments/threshold_baseline.py                      # today's default phantom
    python experiments/threshold_baseline.py data.phantom.n_volumes=16 \
        'data.phantom.viscera_contrast=[1.6,2.0]'     # the 2026-11-25 phantom

Generates the phantom volumes in memory (the same ones `python -m penn.run` writes for these
overrides; nothing is written) and prints the best Dice of any global intensity band for the
tumour (penn.metrics.best_interval_dice, pooled over all volumes, raw intensities) and, per
volume with a tumour, the median tumour / vertebral-body intensity ratio. A model must beat
the first number by a wide margin for the phantom to test anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from penn.metrics import best_interval_dice
from penn.phantom import LABELS, PhantomSpec, generate_volume

CONF = Path(__file__).resolve().parents[1] / "conf"


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    settings = OmegaConf.to_container(cfg.data.phantom, resolve=True)
    n_volumes, seed = settings.pop("n_volumes"), settings.pop("seed")
    spec = PhantomSpec(**settings)
    images, masks = [], []
    print("| volume | tumour voxels | tumour / body median intensity |")
    print("|---|---|---|")
    for i in range(n_volumes):
        image, labels = generate_volume(spec, np.random.default_rng([seed, i]))
        tumour = labels == LABELS["tumor"]
        images.append(image)
        masks.append(tumour)
        if tumour.any():
            ratio = np.median(image[tumour]) / np.median(image[labels == LABELS["vertebra"]])
            print(f"| phantom_{i:03d} | {int(tumour.sum())} | {ratio:.2f} |")
    dice = best_interval_dice(images, masks)
    print(f"\nbest global intensity band, tumour Dice pooled over {n_volumes} volumes: {dice:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
