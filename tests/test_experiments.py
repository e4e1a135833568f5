"""Every experiment file runs one job end to end with ``trainer.fast_dev_run=true`` (tiny data)."""

from __future__ import annotations

import json
import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from penn.run import train
from tests.conftest import CONF, TINY_DATA
from tests.synth.test_lesions import write_source

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# the experiment's own data and GPU trainer swapped for the tiny phantom on CPU
ON_TINY_DATA = [*TINY_DATA, "data=phantom", "++data.extra_train=[]", "trainer.fast_dev_run=true"]
# experiments on the lesion benchmark keep its data module and three classes, on a tiny source
LESION_EXPERIMENTS = {"lesion_model", "shipped_lesion"}
ON_TINY_LESIONS = [
    "++data.extra_train=[]",
    "data.external=null",
    "data.lesions.none_probability=0.0",
    "data.split.val=0.2",
    "data.split.test=0.2",
    "model.net.features=[4,4,8,8,8,4]",
    "model.slices.crop=32",
    "trainer.fast_dev_run=true",
]


def fast_run(overrides: list[str], data_dir, out) -> dict:
    name = overrides[0].removeprefix("+experiment=")
    if name in LESION_EXPERIMENTS:
        source = write_source(out.with_name(out.name + "_source"), 5)
        tiny = [f"data.root={source}", *ON_TINY_LESIONS]
    else:
        tiny = ON_TINY_DATA
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *tiny])
    with open_dict(cfg):
        cfg.paths.data_dir, cfg.paths.output_dir = str(data_dir), str(out)
    train(cfg)
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(
    "overrides",
    [[f"+experiment={name}"] for name in EXPERIMENTS]
    + [["+experiment=baselines", f"model={m}"] for m in ("sau_net", "opconvnet")]
    + [["+experiment=[paper,ablation_sparsity]"]],  # Table 1 at the paper's protocol
    ids=lambda o: " ".join(o),
)
def test_experiment_runs_one_job_with_fast_dev_run(overrides, phantom_dir, tmp_path):
    metrics = fast_run(overrides, phantom_dir, tmp_path)
    assert 0.0 <= metrics["test/pixel/dice"] <= 1.0
    assert metrics["train/steps"] >= 1 and math.isfinite(metrics["time/train_s"])
