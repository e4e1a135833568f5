"""Training of the pixel-wise baselines (UNet, MultiResUNet, D-TVNet, SAU-Net) on whole slices.

Loss (docs/baseline_networks.md): BCE + soft Dice for one logit, cross-entropy + soft Dice over the
foreground classes for C logits; D-TVNet adds ``contour_weight`` * BCE on its contour branch
with ``pos_weight`` = background / contour pixels (D-TVNet's paper).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from typing_extensions import override

from penn.lit.finetune import SupervisedModule, class_probabilities
from penn.models.baselines.dtvnet import contour_target

__all__ = ["SegmentationModule", "segmentation_loss", "soft_dice_loss"]


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, pooled over the batch; mean over foreground classes for C > 1.

    Args:
        logits: (B, K, H, W); K = 1 (sigmoid) or the class count (softmax).
        masks: (B, H, W) integer class map.
    """
    if logits.shape[1] == 1:
        probs, truth = torch.sigmoid(logits[:, :1]), (masks[:, None] > 0).float()
    else:
        probs = logits.softmax(dim=1)[:, 1:]
        truth = F.one_hot(masks.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    dims = (0, 2, 3)
    dice = (2 * (probs * truth).sum(dims) + eps) / (probs.sum(dims) + truth.sum(dims) + eps)
    return 1 - dice.mean()


def segmentation_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    dice_weight: float,
    class_weights: list[float] | None = None,
):
    """BCE (K = 1) or cross-entropy (K > 1) + ``dice_weight`` * soft Dice loss.

    ``class_weights`` (K > 1 only): one weight per class for the cross-entropy, e.g. a rare
    tumour class weighted up; None weighs every pixel alike.
    """
    if logits.shape[1] == 1:
        if class_weights is not None:
            raise ValueError("model.finetune.class_weights needs a multi-class target (K > 1)")
        data_term = F.binary_cross_entropy_with_logits(logits[:, 0], (masks > 0).float())
    else:
        weight = None
        if class_weights is not None:
            if len(class_weights) != logits.shape[1]:
                raise ValueError(
                    f"model.finetune.class_weights={list(class_weights)}: need one weight per "
                    f"class ({logits.shape[1]}, background first)"
                )
            weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        data_term = F.cross_entropy(logits, masks.long(), weight=weight)
    return data_term + dice_weight * soft_dice_loss(logits, masks)


def contour_loss(contour_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE on the contour map, positives weighted by background / contour pixels."""
    target = contour_target((masks[:, None] > 0).float())
    n_contour = target.sum()
    pos_weight = (target.numel() - n_contour) / n_contour.clamp(min=1)
    return F.binary_cross_entropy_with_logits(contour_logits, target, pos_weight=pos_weight)


class SegmentationModule(SupervisedModule):
    """Trains a slice network on (images (B, C, H, W), masks (B, H, W)) batches.

    Args:
        net: pixel-wise network; returns logits (B, K, H, W), or (logits, contour logits).
        n_classes: classes including background (2 for a binary target).
        optimizer: partial optimizer taking the parameters (the baselines' protocol: AdamW 1e-4).
        dice_weight: weight of the soft Dice term (0: BCE / CE alone, MultiResUNet's faithful loss).
        contour_weight: weight of the contour term for nets with a contour branch (D-TVNet).
        member: which ensemble member this trains (kept in the checkpoint, for resuming).
        scheduler: partial learning-rate scheduler (None: constant).
        scheduler_interval: ``epoch`` or ``step``, when the scheduler is stepped.
        class_weights: per-class cross-entropy weights (:func:`segmentation_loss`).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        n_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        dice_weight: float,
        contour_weight: float,
        member: int = 0,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        class_weights: list[float] | None = None,
    ):
        super().__init__(
            net,
            n_classes,
            optimizer,
            level="pixel",
            member=member,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
        )
        # plain floats, not the config's ListConfig: checkpoints load with weights_only=True
        class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.dice_weight, self.contour_weight = dice_weight, contour_weight
        self.class_weights = class_weights

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, K, H, W) only; a contour branch is for training."""
        out = self.net(images)
        return out[0] if isinstance(out, tuple) else out

    @override
    def _outputs(self, batch):
        images, masks = batch
        out = self.net(images)
        logits, contour = out if isinstance(out, tuple) else (out, None)
        loss = segmentation_loss(logits, masks, self.dice_weight, self.class_weights)
        if contour is not None:
            loss = loss + self.contour_weight * contour_loss(contour, masks)
        probs = class_probabilities(logits.detach().movedim(1, -1).reshape(-1, logits.shape[1]))
        targets = masks > 0 if logits.shape[1] == 1 else masks
        return loss, probs, targets.reshape(-1).long()
