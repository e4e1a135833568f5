"""penn's segmentation network, its learning-rate schedule and extra training collections."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from penn.io.volume import DataError
from penn.lit.schedule import warmup_cosine
from penn.models.seg_unet import SegUNet
from tests.conftest import CONF, TINY_SLICES


def _rates(total: int, warmup: int, final: float = 0.0) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = warmup_cosine(
        optimizer, total_steps=total, warmup_steps=warmup, final_fraction=final
    )
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_warmup_rises_linearly_then_the_cosine_falls_to_its_floor():
    rates = _rates(total=12, warmup=4, final=0.1)
    assert rates[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    # step 4 + k of the 8 cosine steps: 2 * (0.1 + 0.9 * (1 + cos(pi k / 8)) / 2)
    expected = [2 * (0.1 + 0.45 * (1 + math.cos(math.pi * k / 8))) for k in range(8)]
    assert rates[4:] == pytest.approx(expected)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:], strict=False))


def test_seg_unet_keeps_any_slice_size_and_each_slice_of_a_batch_is_its_own():
    torch.manual_seed(0)
    net = SegUNet(in_channels=1, n_outputs=2, features=[4, 4, 8, 8, 16, 4]).eval()
    x = torch.rand(1, 1, 50, 37)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, 2, 50, 37) and torch.isfinite(out).all()
    # a batch of two gives each image the output it gets alone (instance norm, no batch stats)
    with torch.no_grad():
        pair = net(torch.cat([x, torch.rand(1, 1, 50, 37)]))
    assert torch.allclose(pair[:1], out, atol=1e-5)
    # a slice of 16 px or less still has 2 x 2 pixels at the coarsest level (1 x 1 would leave
    # its instance norm one pixel, an error)
    with torch.no_grad():
        assert net(torch.rand(1, 1, 4, 12)).shape == (1, 2, 4, 12)


def _slice_cfg(overrides: list[str], data_dir, out):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY_SLICES, *overrides])
    with open_dict(cfg):
        cfg.paths.data_dir, cfg.paths.output_dir = str(data_dir), str(out)
    return cfg


def test_seg_unet_recipe_trains_a_step_schedule_and_writes_a_model(phantom_dir, tmp_path):
    from penn.run import train

    overrides = [
        "recipe=seg_lumbar_vb",
        "model.net.features=[4,4,8,8,16,4]",
        "model.finetune.scheduler.warmup_steps=2",
        "callbacks.extra.learning_rate.logging_interval=step",  # the rate of every step
        "trainer.log_every_n_steps=1",
    ]
    cfg = _slice_cfg(overrides, phantom_dir, tmp_path / "run")
    assert cfg.model.finetune.scheduler_interval == "step"
    assert cfg.data.preprocess.spacing == 1.5 and cfg.recipe_name == "seg_lumbar_vb"
    train(cfg)
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as handle:
        rates = [float(r["lr-AdamW"]) for r in csv.DictReader(handle) if r.get("lr-AdamW")]
    # 1 epoch of 5 steps: warm-up 1e-3, 2e-3, then the cosine over the last 3 steps (2e-3 x 1,
    # 0.75, 0.25); a schedule stepped per epoch would keep 1e-3 for all five
    assert rates == pytest.approx([1e-3, 2e-3, 2e-3, 1.5e-3, 0.5e-3])
    assert (tmp_path / "run" / "model.pt").is_file()


def test_extra_training_collections_join_the_training_split_only(phantom_dir, tmp_path):
    cfg = _slice_cfg(["model=unet"], phantom_dir, tmp_path / "run")
    base = instantiate(cfg.data)
    base.prepare_data()
    base.setup("fit")
    extra = tmp_path / "other"
    shutil.copytree(base.root, extra)
    for folder in ("imagesTr", "labelsTr"):  # rename the cases so they do not repeat
        for path in (extra / folder).iterdir():
            path.rename(path.with_name("x" + path.name))
    with open_dict(cfg):
        cfg.data.extra_train = [str(extra)]
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert dm.splits["val"].names == base.splits["val"].names
    assert dm.splits["test"].names == base.splits["test"].names
    added = sorted(set(dm.splits["train"].names) - set(base.splits["train"].names))
    n_cases = len(list((extra / "imagesTr").iterdir()))
    assert len(added) == n_cases and all(name.startswith("x") for name in added)
    first = dm.splits["train"].names.index(added[0])
    source = {
        name: slices
        for split in base.splits.values()
        for name, slices in zip(split.names, split.slices, strict=True)
    }
    np.testing.assert_array_equal(dm.splits["train"].slices[first], source[added[0][1:]])


def test_an_extra_collection_with_repeated_names_is_refused(phantom_dir, tmp_path):
    cfg = _slice_cfg(["model=unet"], phantom_dir, tmp_path / "run")
    base = instantiate(cfg.data)
    base.prepare_data()
    with open_dict(cfg):
        cfg.data.extra_train = [str(base.root)]
    dm = instantiate(cfg.data)
    with pytest.raises(DataError, match="repeat"):
        dm.setup("fit")
