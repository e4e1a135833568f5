"""End-to-end: `python -m penn.run` and `python -m penn.evaluate` on a tiny phantom."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from penn.checkpoint import CheckpointError, load_model
from tests.conftest import TINY
from tests.processes import run_module

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}


def penn(module: str, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m module *overrides`` in a process of its own (tests/processes.py)."""
    proc = run_module(module, list(overrides), env=ENV, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(proc.args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the tests below: (run dir, data dir)."""
    base = tmp_path_factory.mktemp("e2e")
    data_dir, run_dir = base / "data", base / "run"
    proc = penn(
        "penn.run",
        *TINY,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        "data.external={name:self,root:${data.root}}",  # the phantom itself as external data
    )
    (base / "console.txt").write_text(proc.stdout + proc.stderr)
    return run_dir, data_dir


def test_external_validation_rescores_the_test_volumes_as_the_run_did(trained):
    """Every case of the external collection (here the phantom itself) gets a row per scope; the
    test volumes among them score what the run's own test scoring counted."""
    run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for scope in ("whole", "extent"):
        for key in ("pixel/dice", "pixel_pooled/dice", "pixel/iou", "pixel/hd95_mm"):
            assert f"external/{scope}/{key}" in metrics
    assert metrics["recipe"] is None
    rows = list(csv.DictReader((run_dir / "external" / "self.csv").open()))
    assert len(rows) == 2 * 6  # 6 phantom volumes, whole and extent
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    whole = {r["case"]: r for r in rows if r["scope"] == "whole"}
    for name, counts in evaluation["test_volumes"].items():
        tp, fp, _, fn = counts[1]
        expected = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
        got = float(whole[name]["dice"]) if whole[name]["dice"] else math.nan
        assert got == pytest.approx(expected, nan_ok=True)


def test_test_masks_scored_as_a_folder_give_the_runs_test_counts(trained, tmp_path):
    """The run's test_masks/, scored by penn evaluate -p -g against the labels, give each test
    volume the Dice the run counted (the phantom's tumour target: label value 2)."""
    from penn.reports.folder_scores import evaluate_folder

    run_dir, data_dir = trained
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in evaluation["test_volumes"]:
        source = data_dir / "phantom" / "labelsTr" / f"{name}.nii.gz"
        (labels / source.name).symlink_to(source)
        assert (run_dir / "test_masks" / source.name).is_file()
    summary = evaluate_folder(run_dir / "test_masks", labels, tmp_path / "out", progress=False)
    for name, counts in evaluation["test_volumes"].items():
        tp, fp, _, fn = counts[1]
        if tp + fp + fn:
            expected = 2 * tp / (2 * tp + fp + fn)
            assert summary["cases"][name]["2"]["dice"] == pytest.approx(expected)


def test_run_writes_every_metric_checkpoints_and_model(trained):
    run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for level in ("pixel", "pixel_pooled", "patch"):
        for m in ("precision", "recall", "accuracy", "f1", "iou", "dice"):
            assert f"test/{level}/{m}" in metrics
    assert 0.0 <= metrics["test/pixel_pooled/accuracy"] <= 1.0
    assert 0.0 < metrics["calibration/threshold"] < 1.0
    for ckpt in ("finetune/best.ckpt", "finetune/last.ckpt", "pretrain_stage2/last.ckpt"):
        assert (run_dir / "checkpoints" / ckpt).is_file()
    net, meta = load_model(run_dir / "model.pt")
    assert meta["data"]["class_names"] == ["tumor"] and net.patch_size == 16
    assert list((run_dir / "overlays").glob("*.png"))
    csv = (run_dir / "csv" / "metrics.csv").read_text()
    assert "pretrain/stage1/loss" in csv and "val/patch/f1" in csv and "test/pixel/dice" in csv
    assert "time/finetune/epoch_s" in csv and "time/pretrain_stage2/samples_s" in csv
    assert "lr-Adam" in csv  # the learning rate per epoch (conf/callbacks, LearningRateMonitor)


def test_no_progress_bars_when_the_trainer_has_none(trained):
    """``trainer.enable_progress_bar=false`` (in TINY) also silences the dense segmentation's
    bars over validation and test volumes, which would otherwise fill batch jobs' logs."""
    run_dir, _ = trained
    console = (run_dir.parent / "console.txt").read_text()
    assert "calibrated threshold" in console  # the run's log lines are there
    assert "segment:" not in console


def test_epoch_times_are_logged_and_project_the_protocol(trained):
    """penn.lit.timing.EpochTimer's lines in run.log, read by experiments/protocol_time.py."""
    import runpy

    run_dir, _ = trained
    log = (run_dir / "run.log").read_text()
    # TINY: 5 training batches of 32 per epoch, one epoch per phase
    assert "finetune epoch 1: " in log and ", 160 samples, " in log
    project = runpy.run_path(str(ROOT / "experiments" / "protocol_time.py"))["project"]
    result = project(run_dir, 500, wall_s=100.0)
    assert result["pretrain_epochs_run"] == {"pretrain_stage1": 1, "pretrain_stage2": 1}
    assert result["pretrain_patches_per_epoch"] == {"pretrain_stage1": 160, "pretrain_stage2": 160}
    fits = sum(result["pretrain_epoch_s"].values())  # one epoch each: the fit times themselves
    assert result["everything_else_s"] == pytest.approx(100.0 - fits)
    assert result["projected_min"] == pytest.approx((100.0 - fits + 500 * fits) / 60)


def test_evaluate_reproduces_the_runs_test_metrics(trained, tmp_path):
    run_dir, data_dir = trained
    # evaluating on the whole phantom scores train/val volumes too; check the key set and that
    # a dataset folder with exactly the test volume gives the run's per-volume numbers
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    name = sorted(evaluation["test_volumes"])[0]
    subset = tmp_path / "subset"
    (subset / "imagesTr").mkdir(parents=True)
    (subset / "labelsTr").mkdir()
    phantom = data_dir / "phantom"
    (subset / "dataset.json").write_text((phantom / "dataset.json").read_text())
    os.symlink(
        phantom / "imagesTr" / f"{name}_0000.nii.gz", subset / "imagesTr" / f"{name}_0000.nii.gz"
    )
    os.symlink(phantom / "labelsTr" / f"{name}.nii.gz", subset / "labelsTr" / f"{name}.nii.gz")
    out = tmp_path / "eval"
    proc = penn(
        "penn.evaluate",
        f"ckpt={run_dir / 'model.pt'}",
        f"data.root={subset}",
        f"hydra.run.dir={out}",
        "progress=false",
    )
    assert "segment:" not in proc.stdout + proc.stderr  # no bars with progress=false
    metrics = json.loads((out / "metrics.json").read_text())
    tp, fp, tn, fn = evaluation["test_volumes"][name][1]
    assert metrics["test/pixel_pooled/accuracy"] == pytest.approx((tp + tn) / (tp + fp + tn + fn))


def test_data_folder_is_never_written(trained):
    run_dir, data_dir = trained
    before = tree(data_dir)
    penn(
        "penn.run",
        *TINY,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}_again",
        "model.pretrain.epochs=0",
        "trainer.limit_train_batches=1",
    )
    assert tree(data_dir) == before


def test_interrupted_training_resumes_from_its_checkpoint(trained, tmp_path):
    run_dir, data_dir = trained
    ckpt = run_dir / "checkpoints" / "pretrain_stage2" / "last.ckpt"
    proc = penn(
        "penn.run",
        *TINY,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path}",
        f"ckpt_path={ckpt}",
        "model.pretrain.epochs=2",
    )
    log = proc.stdout + proc.stderr + (tmp_path / "run.log").read_text()
    assert "resuming pretraining stage 2" in log
    assert not (tmp_path / "checkpoints" / "pretrain_stage1").exists()  # stage 1 skipped
    assert (tmp_path / "checkpoints" / "pretrain_stage2" / "last.ckpt").is_file()
    assert (tmp_path / "metrics.json").is_file()


def test_truncated_model_file_gives_a_clear_error(trained, tmp_path):
    run_dir, _ = trained
    broken = tmp_path / "model.pt"
    broken.write_bytes((run_dir / "model.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="model.pt: cannot read model file"):
        load_model(broken)


def test_missing_data_folder_stops_with_its_name(tmp_path):
    proc = penn(
        "penn.run",
        "data=lumbar_vb",
        f"data.root={tmp_path / 'absent'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode != 0
    assert "absent: data folder not found" in proc.stderr


def test_grouped_steps_run_end_to_end_and_count_every_step(tmp_path):
    """data.loader.steps_per_batch=2 on the CPU: two optimizer steps per loader batch, each
    counted in the checkpoints' global_step (limit_train_batches counts loader batches)."""
    import torch

    penn(
        "penn.run",
        *TINY,
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path}",
        "data.loader.on_device=true",
        "data.loader.steps_per_batch=2",
        "model.pretrain.epochs=2",
        "model.finetune.epochs=2",
    )
    for phase in ("pretrain_stage1", "pretrain_stage2", "finetune"):
        ckpt = torch.load(tmp_path / "checkpoints" / phase / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 2 * 5 * 2, phase  # epochs x batches x steps per batch
    assert json.loads((tmp_path / "metrics.json").read_text())["test/pixel/dice"] >= 0.0


def test_last_checkpoint_follows_every_epoch_even_without_improvement(tmp_path):
    """With the learning rate at 0 the validation loss never improves after the first epoch, so
    only epoch 0 is 'best'; last.ckpt must still be the last epoch's, or a resumed run would
    repeat epochs (Lightning writes its own last.ckpt only beside a new top-k checkpoint)."""
    import torch

    penn(
        "penn.run",
        *TINY,
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path}",
        "model.pretrain.epochs=0",
        "model.finetune.epochs=3",
        "model.finetune.optimizer.lr=0.0",
    )
    folder = tmp_path / "checkpoints" / "finetune"
    last = torch.load(folder / "last.ckpt", weights_only=False)
    best = torch.load(folder / "best.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 3 * 5)
    assert best["epoch"] == 0
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_model_file_of_another_format_version_is_refused_in_one_line(tmp_path):
    import torch

    path = tmp_path / "old.pt"
    torch.save({"format": "penn-model/1", "meta": {}, "state_dict": {}}, path)
    message = r"old\.pt: model file format 'penn-model/1' .*retrain"
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("model",), "meta has no 'model' section"),
        (("members",), r"meta lacks \['members'\]"),
        (("inference", "slice_sigma_mm"), r"meta\['inference'\] lacks \['slice_sigma_mm'\]"),
    ],
)
def test_a_model_file_without_a_key_of_its_format_is_refused_naming_it(drop, named, tmp_path):
    """Every key of format penn-model/2 is required: no defaults stand in for a missing one."""
    import torch

    from tests.predict_helpers import write_model

    path = write_model(tmp_path / "model.pt", 1)
    blob = torch.load(path, weights_only=True)
    node = blob["meta"]
    for key in drop[:-1]:
        node = node[key]
    del node[drop[-1]]
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=named):
        load_model(path)
