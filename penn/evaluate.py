"""Entry point: score a trained model on every labelled volume of a dataset.

    python -m penn.evaluate ckpt=outputs/train/<run>/model.pt data.root=/path/to/dataset
    penn evaluate -m outputs/train/<run>/model.pt -d /path/to/dataset

To score a folder of masks that exist already: ``penn evaluate -p PRED_DIR -g LABEL_DIR``
(:mod:`penn.reports.folder_scores`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from penn.checkpoint import load_model
from penn.cli import one_line_errors, require_options
from penn.inference.predictor import segment_folder
from penn.reports.run_files import metrics_table, write_metrics
from penn.scoring import score
from penn.weights import model_file

log = logging.getLogger(__name__)


def resolve_classes(cfg: DictConfig, meta: dict) -> list[list[int]]:
    """The label values of each class: as trained, or the binary target named in the config."""
    trained = meta["data"]["classes"]
    if cfg.data.target is None:
        return trained
    if len(trained) != 1:
        raise ValueError(
            f"data.target={cfg.data.target!r} needs a binary model; this one has "
            f"classes {meta['data']['class_names']}"
        )
    if cfg.data.target not in cfg.data.targets:
        raise ValueError(f"data.target={cfg.data.target!r} is not one of {list(cfg.data.targets)}")
    return [list(cfg.data.targets[cfg.data.target])]


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Segments and scores every case of ``cfg.data.root``; writes ``metrics.json``."""
    net, meta = load_model(model_file(cfg.ckpt))
    inference = dict(meta["inference"])
    inference.update(
        {k: v for k, v in OmegaConf.to_container(cfg.inference).items() if v is not None}
    )
    names = meta["data"]["class_names"] if cfg.data.target is None else [cfg.data.target]
    metrics = score_folder(
        net,
        meta,
        Path(cfg.data.root),
        resolve_classes(cfg, meta),
        names,
        inference,
        progress=cfg.progress,
    )
    out = Path(cfg.paths.output_dir)
    write_metrics(out / "metrics.json", metrics)
    print(f"\n{metrics_table(metrics)}\n\nmetrics: {out / 'metrics.json'}")  # the one print
    return metrics


def score_folder(
    net,
    meta: dict,
    root: Path,
    classes: list[list[int]],
    names: list[str],
    inference: dict,
    progress: bool = True,
) -> dict[str, float]:
    """The ``test/...`` metrics of a model on every labelled case of a dataset folder.

    Each scan is preprocessed as ``meta['data']`` says (resampled to its ``spacing`` when it has
    one), segmented, and scored on its own grid.
    """
    folder = segment_folder(net, meta, root, inference, progress=progress)
    metrics, _ = score(
        folder.predictions,
        folder.labels,
        classes,
        names,
        meta["data"]["patches"],
        inference,
        inference["threshold"],
        "test",
        patch_labels=folder.working_labels,
    )
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://penn.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    require_options(cfg, "penn evaluate")
    with one_line_errors("penn evaluate", bool(cfg.debug)):
        evaluate(cfg)


if __name__ == "__main__":
    main()
