"""Greedy layer-wise pretraining: one LightningModule fit per sparse-autoencoder stage."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from typing_extensions import override

from penn.lit.step_group import GroupedStepsMixin
from penn.models.sparse_ae import StackedSparseAutoencoder

__all__ = ["PretrainModule"]


class PretrainModule(GroupedStepsMixin, L.LightningModule):
    """Trains autoencoder ``stage`` (0-based) on the codes of the frozen stages before it.

    Unsupervised (the paper's step 6): patch labels in the batch are ignored. Only the parameters of
    ``net.stages[stage]`` have ``requires_grad``; the optimizer sees nothing else.

    Args:
        net: the whole stack (earlier stages already pretrained).
        stage: index of the stage to train.
        lambda_l2, beta, rho, l2_on: sparse autoencoder loss settings
            (see ``SparseAutoencoder.loss``).
        optimizer: partial optimizer taking the parameters.
        steps_per_batch: optimizer steps per training batch, one per ``micro_batch`` patches
            (``data.loader.steps_per_batch``; see :mod:`penn.lit.step_group`).
        micro_batch: patches per optimizer step (``data.loader.batch_size``).
    """

    def __init__(
        self,
        net: StackedSparseAutoencoder,
        stage: int,
        lambda_l2: float,
        beta: float,
        rho: float,
        l2_on: str,
        optimizer: Callable[..., torch.optim.Optimizer],
        steps_per_batch: int = 1,
        micro_batch: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "steps_per_batch", "micro_batch"])
        self.net, self.stage, self.optimizer = net, stage, optimizer
        self._init_step_group(steps_per_batch, micro_batch)
        for name, param in net.named_parameters():
            param.requires_grad_(name.startswith(f"stages.{stage}."))

    def _loss(self, patches: torch.Tensor, _targets=None) -> dict[str, torch.Tensor]:
        """The stage's sparse-autoencoder loss and its terms on a batch of patches."""
        with torch.no_grad():
            codes = self.net.encode(patches, depth=self.stage)
        hp = self.hparams
        loss, terms = self.net.stages[self.stage].loss(
            codes, hp.lambda_l2, hp.beta, hp.rho, hp.l2_on
        )
        return {"loss": loss, **terms}

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        patches, targets = batch
        if self.grouped:
            out = {k: v.mean() for k, v in self._run_group(patches, targets, self._loss).items()}
        else:
            out = self._loss(patches)
        prefix = f"pretrain/stage{self.stage + 1}"
        loss = out.pop("loss")
        self.log(
            f"{prefix}/loss",
            loss,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=len(patches),
        )
        self.log_dict(
            {f"{prefix}/{k}": v for k, v in out.items()},
            on_step=False,
            on_epoch=True,
            batch_size=len(patches),
        )
        return None if self.grouped else loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self._make_optimizer(self.optimizer, self.net.stages[self.stage].parameters())
