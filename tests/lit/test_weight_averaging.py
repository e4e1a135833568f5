"""Weight averaging in fine-tuning (``model.finetune.weight_average``): what the run keeps."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

import penn.lit.phases
from penn.lit.phases import finetune
from penn.lit.trainer import close_loggers, make_loggers, make_trainer
from penn.run import make_datamodule
from tests.conftest import compose_cfg

EMA = "{_target_:lightning.pytorch.callbacks.EMAWeightAveraging,decay:0.6}"


class _Trajectory(L.Callback):
    """The training weights after every training batch (optimizer step)."""

    def __init__(self):
        self.weights: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append([p.detach().clone() for p in pl_module.net.parameters()])


def _fine_tune(cfg, monkeypatch, resume=("pretrain", 0, None)):
    """Fine-tunes the tiny network afresh (or resumes: ``resume`` as penn.lit.trainer.resume_phase
    gives it); returns the kept network and the training weights after every step."""
    trajectory = _Trajectory()

    def with_trajectory(cfg, phase, epochs, loggers, callbacks=()):
        return make_trainer(cfg, phase, epochs, loggers, [*callbacks, trajectory])

    monkeypatch.setattr(penn.lit.phases, "make_trainer", with_trajectory)
    L.seed_everything(0)
    dm = make_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    L.seed_everything(cfg.seed, workers=True)
    net = instantiate(cfg.model.net, n_outputs=dm.n_outputs)
    loggers = make_loggers(cfg)
    try:
        net = finetune(cfg, net, dm, loggers, resume)
    finally:
        close_loggers(loggers)
    return net, trajectory.weights


def _ema(trajectory: list[list[torch.Tensor]], decay: float) -> list[list[torch.Tensor]]:
    """The exponential mean after each step: the first step's weights, then decay-weighted."""
    means = [trajectory[0]]
    for weights in trajectory[1:]:
        means.append([decay * m + (1 - decay) * w for m, w in zip(means[-1], weights, strict=True)])
    return means


def test_ema_weights_of_the_best_epoch_are_kept_and_training_is_unchanged(
    phantom_dir, tmp_path, monkeypatch
) -> None:
    common = ["model.finetune.epochs=2", "trainer.limit_train_batches=3"]
    plain_cfg = compose_cfg(common, phantom_dir, tmp_path / "plain")
    plain, plain_steps = _fine_tune(plain_cfg, monkeypatch)
    cfg = compose_cfg(
        [*common, f"model.finetune.weight_average={EMA}"], phantom_dir, tmp_path / "ema"
    )
    kept, steps = _fine_tune(cfg, monkeypatch)

    # swapping the mean in for validation and out again leaves the training weights exact
    assert len(steps) == len(plain_steps) == 6
    for a, b in zip(steps, plain_steps, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    means = _ema(steps, 0.6)
    folder = tmp_path / "ema" / "checkpoints" / "finetune"
    best = torch.load(folder / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    # the kept network is the mean at the end of the best epoch (3 steps an epoch) ...
    expected = means[3 * best["epoch"] + 2]
    for got, want in zip(kept.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    # ... not the trained weights of that epoch; last.ckpt holds the final mean to resume from
    assert any(
        not torch.allclose(g, w)
        for g, w in zip(kept.parameters(), steps[3 * best["epoch"] + 2], strict=True)
    )
    final = [last["state_dict"][f"net.{name}"] for name, _ in kept.named_parameters()]
    for got, want in zip(final, means[-1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert "current_model_state" in last  # the training weights, for a resumed fit
    with pytest.raises(AssertionError):  # a plain run keeps training weights, not the mean
        for got, want in zip(plain.parameters(), means[-1], strict=True):
            torch.testing.assert_close(got.detach(), want)


def test_a_resumed_fine_tuning_goes_on_from_the_checkpoints_mean(
    phantom_dir, tmp_path, monkeypatch
) -> None:
    common = ["trainer.limit_train_batches=3", f"model.finetune.weight_average={EMA}"]
    first = compose_cfg([*common, "model.finetune.epochs=1"], phantom_dir, tmp_path / "first")
    _fine_tune(first, monkeypatch)
    last = tmp_path / "first" / "checkpoints" / "finetune" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)

    resumed = compose_cfg([*common, "model.finetune.epochs=2"], phantom_dir, tmp_path / "again")
    kept, steps = _fine_tune(resumed, monkeypatch, resume=("finetune", 0, str(last)))
    assert len(steps) == 3  # the second epoch only
    names = [name for name, _ in kept.named_parameters()]
    mean = [saved["state_dict"][f"net.{name}"] for name in names]
    for weights in steps:  # the saved mean goes on, it does not restart from the first step
        mean = [0.6 * m + 0.4 * w for m, w in zip(mean, weights, strict=True)]
    final = torch.load(
        tmp_path / "again" / "checkpoints" / "finetune" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )["state_dict"]
    for name, want in zip(names, mean, strict=True):
        torch.testing.assert_close(final[f"net.{name}"], want, rtol=1e-5, atol=1e-6)


def test_each_ensemble_member_keeps_the_mean_of_its_own_steps(
    phantom_dir, tmp_path, monkeypatch
) -> None:
    overrides = [
        "model.finetune.epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=0",
        "model.finetune.members=2",
        f"model.finetune.weight_average={EMA}",
    ]
    ensemble, steps = _fine_tune(compose_cfg(overrides, phantom_dir, tmp_path), monkeypatch)
    assert len(steps) == 6  # 3 steps of member 0, then 3 of member 1
    for member, own in zip(ensemble.members, (steps[:3], steps[3:]), strict=True):
        # without validation the run keeps last.ckpt: the mean after the member's last step,
        # counted from its own first step (a callback shared between members would skip them)
        for got, want in zip(member.parameters(), _ema(own, 0.6)[-1], strict=True):
            torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
