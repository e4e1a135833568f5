"""A bare Lightning trainer for module tests: CPU, no logger, checkpoints, bars or summary."""

from __future__ import annotations

import lightning as L


def bare_trainer(max_epochs: int, **kwargs) -> L.Trainer:
    """``L.Trainer`` on CPU with nothing written or shown; ``kwargs`` add to it."""
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
