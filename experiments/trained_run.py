"""What the re-scoring scripts share: a trained run's model, its data split, one Dice convention.

Used by compare_readouts.py, hysteresis_check.py and body_veto_ceiling.py (run from the repository
root as ``python experiments/NAME.py RUN [the run's data overrides ...]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from penn.checkpoint import load_model

CONF = Path(__file__).resolve().parents[1] / "conf"


def set_up_data(overrides: list[str]):
    """(config, set-up DataModule) composed from ``conf/`` with these Hydra overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return cfg, dm


def load_run(description: str, argv: list[str] | None = None):
    """(arguments, set-up DataModule, network, model.pt metadata) of ``RUN [overrides ...]``.

    The overrides must rebuild the run's split (its ``data.*`` overrides and ``seed``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", type=Path, help="a penn.run output folder holding model.pt")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides that rebuild its data")
    args = parser.parse_args(argv)
    _, dm = set_up_data(args.overrides)
    net, meta = load_model(args.run / "model.pt")
    return args, dm, net, meta


def pixel_dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (penn.metrics leaves such a volume out
    of the mean, so average with ``np.nanmean``)."""
    tp, fp, fn = (mask & truth).sum(), (mask & ~truth).sum(), (~mask & truth).sum()
    return float("nan") if tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn))
