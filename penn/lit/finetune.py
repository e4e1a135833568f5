"""Supervised fine-tuning of the pretrained encoders together with a sigmoid/softmax head."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from typing_extensions import override

from penn.metrics import patch_metric_collection

__all__ = ["FinetuneModule", "class_probabilities"]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) logits -> (B,) sigmoid probability; (B, C) logits -> (B, C) softmax."""
    return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(dim=1)


class FinetuneModule(L.LightningModule):
    """Trains the whole network on labelled patches (PAPER.md step 7).

    Args:
        net: a patch classifier (``forward`` maps (B, 1, n, n) to logits (B, n_outputs)).
        n_classes: patch classes including background (2 for a binary target).
        optimizer: partial optimizer taking the parameters (SGD with momentum, Adam, LBFGS, ...).
    """

    def __init__(self, net: torch.nn.Module, n_classes: int,
                 optimizer: Callable[..., torch.optim.Optimizer]):  # fmt: skip
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net, self.optimizer = net, optimizer
        for param in net.parameters():
            param.requires_grad_(True)
        self.train_metrics = patch_metric_collection(n_classes, "train/patch/")
        self.val_metrics = patch_metric_collection(n_classes, "val/patch/")
        self.test_metrics = patch_metric_collection(n_classes, "test/patch/")

    @override
    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches)

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        patches, targets = batch
        logits = self(patches)
        if logits.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], targets.float())
        else:
            loss = F.cross_entropy(logits, targets)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(class_probabilities(logits.detach()), targets)
        on_step = stage == "train"
        self.log(
            f"{stage}/patch/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            sync_dist=not on_step,
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

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.net.parameters())
