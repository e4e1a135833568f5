"""How does a trained model do when the scans' contrast changes? A synthetic check.

    python experiments/contrast_check.py outputs/train/RUN DATA_ROOT [--split val]
        [--json docs/results/issue2/contrast_check.jsonl]

Takes the run's test scans (the names in its ``evaluation.json``; with ``--split val`` its
validation scans, from the run's split rebuilt with its ``.hydra/overrides.yaml``, so that a
choice between settings need not look at the test scans) from DATA_ROOT, passes their
intensities through fixed curves, writes them to a temporary folder and scores the run's
``model.pt`` on each version. With u the intensity over the scan's 99.5th percentile, clipped to
[0, 1] (air stays 0):

- ``as_acquired``: unchanged;
- ``gamma_0.5`` / ``gamma_2``: u ** 0.5 (dark tissue brighter) / u ** 2 (darker);
- ``bright_dimmed``: u up to 0.6 unchanged, then falling linearly to 0.3 at 1, a non-monotone
  curve that turns the brightest tissue (on lumbar-vb's T2: fluid, fat) dark, as a T1 or
  fat-suppressed scan would turn some of it.

These are not other sequences, only contrast changes of real anatomy. ``as_acquired`` differs
from the run's own test score only by that clipping at the 99.5th percentile. Prints one JSON
line per curve; ``--json`` also appends them to that file. Nothing
under DATA_ROOT is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from spacing_check import dice_of, write_folder

from penn.checkpoint import load_model

CONF = Path(__file__).resolve().parents[1] / "conf"
CURVES = {
    "as_acquired": lambda u: u,
    "gamma_0.5": lambda u: u**0.5,
    "gamma_2": lambda u: u**2,
    "bright_dimmed": lambda u: np.interp(u, [0.0, 0.6, 1.0], [0.0, 0.6, 0.3]),
}


def recontrast(volume, curve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = volume.image.astype(np.float32)
    top = float(np.percentile(image[image > 0], 99.5))
    u = np.clip(image / top, 0.0, 1.0)
    return (curve(u) * top).astype(np.float32), volume.labels, volume.affine


def split_names(run: Path, split: str) -> set[str]:
    """The names of the run's ``split`` volumes (validation: its split rebuilt)."""
    if split == "test":
        return set(json.loads((run / "evaluation.json").read_text())["test_volumes"])
    overrides = [o for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
                 if o.split("=")[0].lstrip("+~").startswith(("data", "seed"))]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return set(dm.splits[split].names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    net, meta = load_model(args.run / "model.pt")
    names = split_names(args.run, args.split)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, curve in CURVES.items():
            folder = write_folder(Path(tmp) / name, args.data_root, names,
                                  lambda v, c=curve: recontrast(v, c))  # fmt: skip
            row = {
                "run": str(args.run),
                "curve": name,
                "split": args.split,
                "volumes": len(names),
                **dice_of(net, meta, folder),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with args.json.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
