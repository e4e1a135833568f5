"""Ensembles (``model.finetune.members``): averaged probabilities, the dense read-out, the model
file, and fine-tuning several members end to end, resumed from one of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from penn.checkpoint import CheckpointError, load_model, save_model
from penn.inference.predictor import predict_volumes
from penn.models.ensemble import Ensemble, members_of
from penn.models.sparse_ae import StackedSparseAutoencoder
from tests.conftest import TINY, assert_model_reproduces_test_counts
from tests.predict_helpers import meta
from tests.test_run import penn


def networks(n_outputs: int, count: int, context: int = 0) -> list:
    """``count`` randomly initialised networks of the architecture of ``predict_helpers.meta``."""
    torch.manual_seed(0)
    return [
        StackedSparseAutoencoder(
            8, n_layers=1, n_nodes=2, n_outputs=n_outputs, context_dilation=context
        ).eval()
        for _ in range(count)
    ]


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_ensemble_logits_give_the_mean_of_the_members_probabilities(n_outputs):
    members = networks(n_outputs, 3)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        logits = Ensemble(members)(x)
        if n_outputs == 1:
            got = torch.sigmoid(logits)
            want = torch.stack([torch.sigmoid(m(x)) for m in members]).mean(0)
        else:
            got = logits.softmax(dim=1)
            want = torch.stack([m(x).softmax(dim=1) for m in members]).mean(0)
    assert not torch.allclose(members[0](x), members[1](x))  # the members differ
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_an_ensemble_needs_two_members():
    with pytest.raises(ValueError, match="at least 2 members"):
        Ensemble(networks(1, 1))


def test_dense_readout_of_an_ensemble_is_the_mean_of_its_members_readouts():
    members = networks(1, 2, context=2)
    slices = [np.random.default_rng(0).random((3, 24, 30), dtype=np.float32)]
    inference = {"stride": 2, "batch_slices": 2, "aggregate": "center", "center_sigma": 2.0}
    ensemble = predict_volumes(Ensemble(members), slices, inference, device="cpu", progress=False)[
        0
    ]
    each = [predict_volumes(m, slices, inference, device="cpu", progress=False)[0] for m in members]
    assert not np.allclose(each[0].probs, each[1].probs)
    np.testing.assert_allclose(ensemble.probs, (each[0].probs + each[1].probs) / 2, atol=1e-6)
    np.testing.assert_allclose(
        ensemble.patch_probs, (each[0].patch_probs + each[1].patch_probs) / 2, atol=1e-6
    )


def test_model_file_keeps_every_member(tmp_path):
    members = networks(1, 3)
    path = save_model(tmp_path / "model.pt", Ensemble(members), meta(1))
    net, saved = load_model(path)
    assert saved["members"] == 3 and len(members_of(net)) == 3
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        for loaded, original in zip(members_of(net), members, strict=True):
            torch.testing.assert_close(loaded(x), original(x), atol=0, rtol=0)
    single, saved = load_model(save_model(tmp_path / "one.pt", members[0], meta(1)))
    assert saved["members"] == 1 and not isinstance(single, Ensemble)


def test_model_file_with_a_bad_member_count_is_refused(tmp_path):
    path = save_model(tmp_path / "model.pt", Ensemble(networks(1, 2)), meta(1))
    blob = torch.load(path, weights_only=True)
    blob["meta"]["members"] = 0
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="model.pt: members must be a positive integer"):
        load_model(path)


def test_run_fine_tunes_members_and_resumes_from_the_second(tmp_path):
    """Two members from one pretraining, each on its own stream: model.pt holds both and
    reproduces the run's test counts; a run resumed from the second member's checkpoint takes
    the first from its best checkpoint, and ends with the same weights."""
    data_dir, run_dir, again = tmp_path / "data", tmp_path / "run", tmp_path / "again"
    overrides = [*TINY, f"paths.data_dir={data_dir}", "model.finetune.members=2"]
    penn("penn.run", *overrides, f"hydra.run.dir={run_dir}")
    checkpoints = run_dir / "checkpoints"
    for ckpt in ("finetune/best.ckpt", "finetune_member1/best.ckpt", "finetune_start.pt"):
        assert (checkpoints / ckpt).is_file(), ckpt
    log = (run_dir / "run.log").read_text()
    assert "finetune epoch 1: " in log and "finetune_member1 epoch 1: " in log
    assert "time/finetune_member1/epoch_s" in (run_dir / "csv" / "metrics.csv").read_text()
    net, saved = load_model(run_dir / "model.pt")
    first, second = members_of(net)
    assert saved["members"] == 2
    assert not torch.equal(first.head.weight, second.head.weight)
    start = torch.load(checkpoints / "finetune_start.pt", weights_only=True)
    assert not torch.equal(second.head.weight, start["head.weight"])  # member 1 was trained

    assert_model_reproduces_test_counts(net, saved, run_dir, ["model.finetune.members=2"], data_dir)

    proc = penn(
        "penn.run",
        *overrides,
        f"hydra.run.dir={again}",
        f"ckpt_path={checkpoints / 'finetune_member1' / 'last.ckpt'}",
    )
    log = proc.stdout + proc.stderr + (again / "run.log").read_text()
    assert "resuming fine-tuning of ensemble member 1" in log
    assert not (again / "checkpoints" / "pretrain_stage1").exists()
    assert not (again / "checkpoints" / "finetune").exists()  # member 0 was not trained again
    assert " epoch 1: " not in log  # nor member 1: its checkpoint had finished its epoch
    resumed, _ = load_model(again / "model.pt")
    for a, b in zip(net.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resuming_a_member_the_config_does_not_have_is_refused(tmp_path):
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    overrides = [*TINY, f"paths.data_dir={data_dir}", "model.pretrain.epochs=0"]
    penn("penn.run", *overrides, "model.finetune.members=2", f"hydra.run.dir={run_dir}")
    proc = penn(
        "penn.run",
        *overrides,
        f"hydra.run.dir={tmp_path / 'again'}",
        f"ckpt_path={run_dir / 'checkpoints' / 'finetune_member1' / 'last.ckpt'}",
        check=False,
    )
    assert proc.returncode != 0
    assert "checkpoint of ensemble member 1, but model.finetune.members=1" in proc.stderr


def test_model_file_with_a_negative_slice_sigma_is_refused(tmp_path):
    path = save_model(tmp_path / "model.pt", networks(1, 1)[0], meta(1))
    blob = torch.load(path, weights_only=True)
    blob["meta"]["inference"]["slice_sigma_mm"] = -1.0
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="model.pt: inference.slice_sigma_mm must be >= 0"):
        load_model(path)
