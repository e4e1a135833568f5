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


def split_dice(masks: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float, list]:
    """(mean per volume, pooled, per volume) pixel Dice of boolean masks against their truths."""
    pairs = list(zip(masks, truths, strict=True))
    tp = sum(int((m & t).sum()) for m, t in pairs)
    fp = sum(int((m & ~t).sum()) for m, t in pairs)
    fn = sum(int((~m & t).sum()) for m, t in pairs)
    per = [pixel_dice(m, t) for m, t in pairs]
    return float(np.nanmean(per)), 2 * tp / max(2 * tp + fp + fn, 1), per


def dice_cells(row: dict) -> str:
    """The table cells "val pooled | val mean | test Dice | test pooled | per test volume" (percent)
    of ``row = {"val": split_dice(...), "test": split_dice(...)}``."""
    per = " ".join("–" if np.isnan(v) else f"{100 * v:.0f}" for v in row["test"][2])
    return (f"{100 * row['val'][1]:.1f} | {100 * row['val'][0]:.1f} "
            f"| {100 * row['test'][0]:.1f} | {100 * row['test'][1]:.1f} | {per}")  # fmt: skip
