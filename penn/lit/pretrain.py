"""Greedy layer-wise pretraining: one LightningModule fit per sparse-autoencoder stage."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from typing_extensions import override

from penn.models.sparse_ae import StackedSparseAutoencoder

__all__ = ["PretrainModule"]


class PretrainModule(L.LightningModule):
    """Trains autoencoder ``stage`` (0-based) on the codes of the frozen stages before it.

    Unsupervised (PAPER.md step 6): patch labels in the batch are ignored. Only the parameters of
    ``net.stages[stage]`` have ``requires_grad``; the optimizer sees nothing else.

    Args:
        net: the whole stack (earlier stages already pretrained).
        stage: index of the stage to train.
        lambda_l2, beta, rho, l2_on: sparse autoencoder loss settings
            (see ``SparseAutoencoder.loss``).
        optimizer: partial optimizer taking the parameters.
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
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net, self.stage, self.optimizer = net, stage, optimizer
        for name, param in net.named_parameters():
            param.requires_grad_(name.startswith(f"stages.{stage}."))

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        patches, _ = batch
        with torch.no_grad():
            codes = self.net.encode(patches, depth=self.stage)
        hp = self.hparams
        loss, terms = self.net.stages[self.stage].loss(
            codes, hp.lambda_l2, hp.beta, hp.rho, hp.l2_on
        )
        prefix = f"pretrain/stage{self.stage + 1}"
        self.log(
            f"{prefix}/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True
        )
        self.log_dict({f"{prefix}/{k}": v for k, v in terms.items()}, on_step=False, on_epoch=True)
        return loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.net.stages[self.stage].parameters())
