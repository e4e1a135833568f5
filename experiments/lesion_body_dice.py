"""Vertebral-body Dice of lesion-benchmark runs: vertebra and tumour together, as one mask.

    python experiments/lesion_body_dice.py outputs/lesion/w4_f03 outputs/lesion/vertebra_only

A three-class model's ``vertebra`` Dice leaves out the lesions inside the bodies, while a
vertebra-only model (``data.target=vertebra``) segments the bodies with their lesions. To
compare the two like for like, this scores every predicted foreground voxel (any class > 0)
against every labelled one, per scan: on the run's test split (its ``test_masks``, the fixed
lesions of its ``data.lesions.seed``) and on its external lesion collection (segmented again
with the run's ``model.pt``), over the whole volume and over the labelled extent as
``penn.reports.external`` does. Prints one Markdown table (percent, mean per scan) and writes
``body_dice.json`` into each run folder.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from penn.checkpoint import load_model
from penn.io.files import write_json
from penn.io.nifti import read_volume
from penn.metrics import confusion_counts, metrics_from_counts
from penn.reports.external import AXIAL_AXIS, labelled_extent, segmented_cases
from penn.run import make_datamodule
from penn.synth.lesion_dataset import lesion_dataset
from penn.synth.lesions import LesionSpec


def body_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two body masks (penn.metrics' counts; NaN when both are empty)."""
    counts = confusion_counts(pred.astype(np.uint8), truth.astype(np.uint8), 2)[1]
    return metrics_from_counts(*counts)["dice"]


def extent_of(truth: np.ndarray) -> tuple[slice, ...]:
    region = [slice(None)] * truth.ndim
    region[AXIAL_AXIS] = labelled_extent(truth)
    return tuple(region)


def split_scores(run: Path, cfg) -> dict[str, float]:
    """Body Dice of each test scan's written mask against the run's own test labels."""
    dm = make_datamodule(cfg)
    dm.setup("fit")
    scores = {}
    for volume in dm.splits["test"].volumes:
        path = run / "test_masks" / f"{volume.name}.nii.gz"
        mask, affine, _, _ = read_volume(path)
        if mask.shape != volume.labels.shape or not np.allclose(affine, volume.affine, atol=1e-3):
            raise ValueError(f"{path}: not on the grid of test scan {volume.name}")
        scores[volume.name] = body_dice(mask > 0, volume.labels > 0)
    return scores


def external_scores(run: Path, cfg) -> dict[str, dict[str, float]]:
    """Body Dice on the run's external lesion collection, whole volume and labelled extent."""
    external = cfg.data.external
    lesions = OmegaConf.to_container(cfg.data.lesions, resolve=True)
    root = lesion_dataset(
        external.root,
        Path(cfg.paths.data_dir) / external.name,
        LesionSpec.from_config(lesions),
        int(lesions["seed"]),
    )
    net, meta = load_model(run / "model.pt")
    scores = {"whole": {}, "extent": {}}
    for volume, labels in segmented_cases(net, meta, root):
        mask, truth = labels > 0, volume.labels > 0
        region = extent_of(truth)
        scores["whole"][volume.name] = body_dice(mask, truth)
        scores["extent"][volume.name] = body_dice(mask[region], truth[region])
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of data=lumbar_vb_lesions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lines = [
        "| run | classes | test body Dice | external body Dice, extent | external, whole |",
        "|---|---|---|---|---|",
    ]
    for run in args.runs:
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        result = {"test": split_scores(run, cfg)} | {
            f"external/{scope}": per_case for scope, per_case in external_scores(run, cfg).items()
        }
        means = {key: float(np.mean(list(per_case.values()))) for key, per_case in result.items()}
        write_json(run / "body_dice.json", {"mean": means, "per_scan": result})
        lines.append(
            f"| {run} | {cfg.data.target} | {100 * means['test']:.1f} "
            f"| {100 * means['external/extent']:.1f} | {100 * means['external/whole']:.1f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
