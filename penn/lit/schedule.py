"""Learning-rate schedules stepped after every optimizer step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine"]


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    final_fraction: float = 0.0,
) -> LambdaLR:
    """A linear warm-up from 0 over ``warmup_steps``, then a cosine decay to
    ``final_fraction`` of the base rate at ``total_steps``.

    Args:
        optimizer: the optimizer whose base rates are scaled.
        total_steps: optimizer steps of the whole training (Lightning's
            ``estimated_stepping_batches``; :class:`~penn.lit.finetune.SupervisedModule` passes it).
        warmup_steps: steps of the linear warm-up.
        final_fraction: the rate at the last step, as a fraction of the base rate.
    """
    total, warmup = max(int(total_steps), 1), max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
