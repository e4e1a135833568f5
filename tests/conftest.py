"""Shared fixtures: one tiny phantom for the whole run and a tiny composed config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"

# Hydra overrides that shrink a run to seconds on 2 CPU cores: data, inference and trainer ...
TINY_DATA = [
    "data.phantom.n_volumes=6",
    "data.phantom.shape=[6,96,128]",
    "data.phantom.n_vertebrae=3",
    "data.phantom.tumor_radius_px=[9.0,13.0]",
    "data.phantom.tumor_probability=1.0",
    "data.patches.size=16",
    "data.patches.stride=4",
    "data.split.val=0.2",
    "data.split.test=0.2",
    "data.loader.batch_size=32",
    "data.loader.steps_per_batch=1",  # limit_train_batches counts batches of 32, not groups
    "data.loader.max_eval_patches=500",
    "inference.stride=4",
    "inference.overlays=1",
    "trainer.accelerator=cpu",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]
# ... and PENN itself
TINY = [
    *TINY_DATA,
    "model.n_layers=2",
    "model.n_nodes=16",
    "model.pretrain.epochs=1",
    "model.finetune.epochs=1",
    "model.finetune.members=1",  # recipe=penn_phantom trains an ensemble of 3
]
# a pixel-wise baseline (model=unet, ...) at a few channels on small crops
TINY_SLICES = [
    *TINY_DATA,
    "model.finetune.epochs=1",
    "model.slices.batch=2",
    "model.slices.crop=64",
]


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Directory that holds the tiny phantom (``phantom/``), generated once per test run."""
    return tmp_path_factory.mktemp("data")


def compose_cfg(overrides: list[str], data_dir: Path, output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides])
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.output_dir = str(output_dir)
    return cfg


def assert_model_reproduces_test_counts(
    net, meta: dict, run_dir: Path, overrides: list[str], data_dir: Path
) -> None:
    """``net`` (the run's ``model.pt``) segments the run's first test volume again, with its
    stored read-out, threshold and post-processing, to the TP/FP/FN in ``evaluation.json``."""
    import json

    from hydra.utils import instantiate

    from penn.inference.predictor import predict_volumes
    from penn.io.labels import class_map
    from penn.postprocess import decide, postprocess

    dm = instantiate(compose_cfg(overrides, data_dir, run_dir / "again").data)
    dm.setup("test")
    test, inference = dm.splits["test"], meta["inference"]
    pred = predict_volumes(
        net,
        test.slices[:1],
        inference,
        progress=False,
        slice_spacings=test.slice_spacings(dm.plane)[:1],
    )[0]
    mask = postprocess(
        decide(pred.probs, inference["threshold"]), **inference["postprocess"]
    ).astype(bool)
    truth = class_map(test.labels[0], dm.classes).astype(bool)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    tp, fp, _, fn = evaluation["test_volumes"][test.names[0]][1]
    assert [(mask & truth).sum(), (mask & ~truth).sum(), (~mask & truth).sum()] == [tp, fp, fn]


@pytest.fixture
def cfg_tiny(phantom_dir, tmp_path) -> DictConfig:
    """The real train config shrunk to a tiny phantom, CPU, one epoch; output in tmp_path."""
    return compose_cfg([], phantom_dir, tmp_path / "run")
