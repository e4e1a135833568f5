"""The pixel-wise baselines through `penn.run`: same splits, calibration, metrics and outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from penn.checkpoint import load_model
from penn.data.slice_data import augment_slice
from penn.inference.dense import segment_slices_pixelwise
from penn.inference.predictor import Prediction
from penn.io.dataset import list_cases, read_case
from penn.models.baselines.sau_net import SAUNet
from penn.preprocess import preprocess_volume, to_slices
from penn.run import train
from penn.scoring import score
from tests.conftest import CONF, TINY_SLICES

# each network at a few channels, so that a run takes seconds
SMALL = {
    "unet": ["model.net.base_channels=4"],
    "multiresunet": ["model.net.base_channels=4"],
    "dtvnet": ["model.net.base_channels=4", "model.net.aux_channels=2"],
    "sau_net": [
        "model.net.stem_channels=4",
        "model.net.growth=2",
        "model.net.decoder_channels=8",
        "model.net.feature_channels=4",
    ],
}
METRICS = ("precision", "recall", "accuracy", "f1", "iou", "dice")


def run(model: str, data_dir, out, *extra: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY_SLICES, f"model={model}", *SMALL[model], *extra])
    with open_dict(cfg):
        cfg.paths.data_dir, cfg.paths.output_dir = str(data_dir), str(out)
    train(cfg)
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("model", sorted(SMALL))
def test_each_baseline_trains_calibrates_and_scores_like_penn(model, phantom_dir, tmp_path):
    metrics = run(model, phantom_dir, tmp_path)
    for level in ("pixel", "pixel_pooled", "patch"):
        for name in METRICS:
            assert 0.0 <= metrics[f"test/{level}/{name}"] <= 1.0
    assert 0.0 < metrics["calibration/threshold"] < 1.0
    assert (tmp_path / "checkpoints" / "finetune" / "best.ckpt").is_file()
    net, meta = load_model(tmp_path / "model.pt")
    assert meta["model"]["level"] == "pixel"
    assert meta["model"]["context_offset"] == (1 if model == "sau_net" else 0)
    csv = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "train/pixel/loss" in csv and "val/pixel/dice" in csv
    # no early stopping by default: the one configured epoch, then the record of the run
    assert (metrics["train/epochs"], metrics["train/stopped_early"]) == (1.0, 0.0)
    assert metrics["model/parameters"] == sum(p.numel() for p in net.parameters())
    assert metrics["time/train_s"] > 0 and metrics["time/segment_s_per_volume"] > 0
    assert metrics["machine"].startswith("CPU, ") and metrics["test/pixel/hd95_mm"] >= 0


def test_early_stopping_ends_fine_tuning_when_validation_dice_stalls(phantom_dir, tmp_path):
    """An improvement of 2 (Dice) is impossible: patience 1 stops after the second epoch."""
    extra = [
        "model.finetune.epochs=6",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=2.0",
    ]
    metrics = run("unet", phantom_dir, tmp_path, *extra)
    assert (metrics["train/epochs"], metrics["train/stopped_early"]) == (2.0, 1.0)
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    cells = [r.split(",") for r in rows[1:]]
    validations = [
        c for c in cells if c[header.index("val/pixel/dice")] and c[header.index("epoch")]
    ]
    assert len(validations) == 2
    per_epoch = int(validations[0][header.index("step")]) + 1
    assert metrics["train/steps"] == 2 * per_epoch


def test_model_file_reproduces_the_runs_test_counts(phantom_dir, tmp_path):
    """SAU-Net's model.pt, reloaded, segments a test volume to exactly the run's counts."""
    run("sau_net", phantom_dir, tmp_path)
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    net, meta = load_model(tmp_path / "model.pt")
    assert isinstance(net, SAUNet)
    data = meta["data"]
    cases = {c.name: c for c in list_cases(phantom_dir / "phantom")}
    name, counts = next(iter(evaluation["test_volumes"].items()))
    volume = read_case(cases[name], [0, 1, 2])
    slices = preprocess_volume(volume.image, data["plane"], **data["preprocess"])
    probs = segment_slices_pixelwise(net, slices, 4, "cpu", meta["model"]["context_offset"])
    truth = to_slices(volume.labels, data["plane"])
    inference = meta["inference"]
    _, rows = score(
        [Prediction(probs, None)],
        [truth],
        data["classes"],
        data["class_names"],
        data["patches"],
        inference,
        inference["threshold"],
        "test",
    )
    assert rows[0] == counts


def test_perfect_pixel_prediction_scores_one_at_every_level():
    labels = np.zeros((2, 40, 40), np.uint8)
    labels[:, 5:35, 8:30] = 2
    probs = (labels == 2).astype(np.float32)[:, None]
    patches = {"size": 16, "rule": "fraction", "threshold": 0.6}
    inference = {
        "stride": 4,
        "postprocess": {"min_size": 0, "keep_largest": None, "opening_radius": 0},
    }
    metrics, rows = score(
        [Prediction(probs, None)], [labels], [[2]], ["tumor"], patches, inference, 0.5, "test"
    )
    tumor = 2 * 30 * 22
    assert rows[0][1] == [tumor, 0, 2 * 40 * 40 - tumor, 0]  # the tumor class: tp, fp, tn, fn
    assert metrics["test/pixel/dice"] == 1.0 and metrics["test/patch/f1"] == 1.0


AUGMENT = {
    "rotation_deg": 0.0,
    "scale": [1.0, 1.0],
    "elastic_px": 0.0,
    "elastic_grid": 5,
    "gamma": [1.0, 1.0],
    "noise_std": 0.0,
}


def test_augmentation_without_strength_is_the_identity():
    torch.manual_seed(0)
    image = torch.rand(3, 24, 20)
    mask = (torch.rand(24, 20) > 0.5).long() * 2
    out, out_mask = augment_slice(image, mask, AUGMENT)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
    assert torch.equal(out_mask, mask)


def test_augmentation_moves_image_and_mask_together_and_keeps_classes():
    torch.manual_seed(1)
    image = torch.zeros(1, 64, 64)
    image[0, 20:44, 24:40] = 1.0
    mask = (image[0] > 0.5).long() * 2
    cfg = AUGMENT | {"rotation_deg": 10.0, "scale": [0.9, 1.1], "elastic_px": 2.0}
    out, out_mask = augment_slice(image, mask, cfg)
    assert set(out_mask.unique().tolist()) <= {0, 2}
    assert not torch.equal(out_mask, mask)  # it did move ...
    inside = out[0][out_mask == 2]
    outside = out[0][out_mask == 0]
    assert inside.mean() > 0.9 and outside.mean() < 0.1  # ... and the image moved with it
