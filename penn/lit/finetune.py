"""Supervised fine-tuning of the pretrained encoders together with a sigmoid/softmax head."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LRScheduler
from typing_extensions import override

from penn.lit.step_group import GroupedStepsMixin
from penn.metrics import patch_metric_collection

__all__ = ["SupervisedModule", "FinetuneModule", "class_probabilities"]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) logits -> (B,) sigmoid probability; (B, C) logits -> (B, C) softmax."""
    return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(dim=1)


class SupervisedModule(L.LightningModule):
    """Shared training loop of the supervised modules: metrics, logging, steps, optimizer.

    Subclasses compute ``(loss, probabilities, targets)`` of a batch in :meth:`_outputs`; this
    class logs ``{stage}/{level}/loss`` and the six metrics at ``{stage}/{level}/``.

    Args:
        net: the network.
        n_classes: classes including background (2 for a binary target).
        optimizer: partial optimizer taking the parameters.
        level: metric level in the keys, ``patch`` or ``pixel``.
        member: which ensemble member this trains (0 for a single network).
        scheduler: partial learning-rate scheduler taking the optimizer, stepped once per
            training epoch (``model.finetune.scheduler``; None: a constant rate).
        scheduler_interval: ``epoch``, or ``step``: the scheduler is then stepped after every
            optimizer step and built with ``total_steps`` (the training's optimizer steps) as
            well, as :func:`penn.lit.schedule.warmup_cosine` takes it.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        n_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        level: str,
        member: int = 0,
        scheduler: Callable[..., LRScheduler] | None = None,
        scheduler_interval: str = "epoch",
    ):
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval={scheduler_interval!r}: use 'epoch' or 'step'")
        self.net, self.optimizer, self.level, self.member = net, optimizer, level, member
        self.scheduler, self.scheduler_interval = scheduler, scheduler_interval
        self.train_metrics = patch_metric_collection(n_classes, f"train/{level}/")
        self.val_metrics = patch_metric_collection(n_classes, f"val/{level}/")
        self.test_metrics = patch_metric_collection(n_classes, f"test/{level}/")

    @property
    def phase(self) -> str:
        """The training phase, which names the checkpoint folder and the timing keys:
        ``finetune``, or ``finetune_member<k>`` for ensemble member k >= 1."""
        return "finetune" if self.member == 0 else f"finetune_member{self.member}"

    def _outputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        return self._record(*self._outputs(batch), stage)

    def _record(self, loss, probs, targets, stage: str) -> torch.Tensor:
        """Updates and logs the stage's metrics and loss of a batch; returns the loss."""
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(probs, targets)
        on_step = stage == "train"
        self.log(
            f"{stage}/{self.level}/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            sync_dist=not on_step,
            batch_size=len(targets),
        )
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return loss

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _with_scheduler(self, optimizer: torch.optim.Optimizer):
        """The optimizer, and the configured scheduler on it (stepped per epoch or per step)."""
        if self.scheduler is None:
            return optimizer
        if self.scheduler_interval == "step":
            if not self.automatic_optimization:
                raise ValueError("scheduler_interval='step' needs one optimizer step per batch")
            total = int(self.trainer.estimated_stepping_batches)
            scheduler = self.scheduler(optimizer, total_steps=total)
        else:
            scheduler = self.scheduler(optimizer)
        schedule = {"scheduler": scheduler, "interval": self.scheduler_interval}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    @override
    def configure_optimizers(self):
        return self._with_scheduler(self.optimizer(self.net.parameters()))

    @override
    def on_train_epoch_end(self) -> None:
        # Lightning steps schedulers itself only under automatic optimization; grouped steps
        # (penn.lit.step_group) optimize manually, so the epoch's scheduler step is taken here
        if self.scheduler is not None and not self.automatic_optimization:
            self.lr_schedulers().step()


class FinetuneModule(GroupedStepsMixin, SupervisedModule):
    """Trains the whole network on labelled patches (the paper's step 7).

    Args:
        net: a patch classifier (``forward`` maps (B, 1, n, n) to logits (B, n_outputs)).
        n_classes: patch classes including background (2 for a binary target).
        optimizer: partial optimizer taking the parameters (SGD with momentum, Adam, LBFGS, ...).
        steps_per_batch: optimizer steps per training batch, one per ``micro_batch`` patches
            (``data.loader.steps_per_batch``; see :mod:`penn.lit.step_group`).
        micro_batch: patches per optimizer step (``data.loader.batch_size``).
        member: which ensemble member this trains (kept in the checkpoint, for resuming).
        scheduler: partial learning-rate scheduler stepped after every epoch (None: constant).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        n_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        steps_per_batch: int = 1,
        micro_batch: int | None = None,
        member: int = 0,
        scheduler: Callable[..., LRScheduler] | None = None,
    ):
        super().__init__(
            net, n_classes, optimizer, level="patch", member=member, scheduler=scheduler
        )
        self.save_hyperparameters(
            ignore=["net", "optimizer", "steps_per_batch", "micro_batch", "scheduler"]
        )
        self._init_step_group(steps_per_batch, micro_batch)
        for param in net.parameters():
            param.requires_grad_(True)

    @override
    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches)

    def _loss(self, patches: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss and class probabilities of a batch (BCE on one logit, else cross-entropy)."""
        logits = self(patches)
        if logits.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], targets.float())
        else:
            loss = F.cross_entropy(logits, targets)
        return {"loss": loss, "probs": class_probabilities(logits.detach())}

    @override
    def _outputs(self, batch):
        patches, targets = batch
        out = self._loss(patches, targets)
        return out["loss"], out["probs"], targets

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if not self.grouped:
            return super().training_step(batch, batch_idx)
        patches, targets = batch
        out = self._run_group(patches, targets, self._loss)
        probs = out["probs"].flatten(0, 1)  # (steps, B[, C]) -> (steps * B[, C]), batch order
        self._record(out["loss"].mean(), probs, targets, "train")
        return None

    @override
    def configure_optimizers(self):
        return self._with_scheduler(self._make_optimizer(self.optimizer, self.net.parameters()))
