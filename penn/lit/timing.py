"""Wall time and throughput of every training epoch, in the logs and the metrics files."""

from __future__ import annotations

import logging
import os
import time

import lightning as L
import torch
from typing_extensions import override

__all__ = ["EpochTimer", "machine_name"]

log = logging.getLogger(__name__)


def _now(module: L.LightningModule) -> float:
    """The time once the module's queued GPU work is done."""
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)
    return time.perf_counter()


def machine_name(accelerator: str) -> str:
    """Where a run trains, for its results: the GPU's name, or ``CPU, <n> cores``."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {len(os.sched_getaffinity(0))} cores"


class EpochTimer(L.Callback):
    """Logs each training epoch's wall time and samples per second.

    Keys ``time/<phase>/epoch_s`` and ``time/<phase>/samples_s``, where the phase is
    ``pretrain_stage<k>`` for a pretraining stage, else the module's ``phase`` (``finetune``, or
    ``finetune_member<k>`` for ensemble member k >= 1); the same figures go
    to the Python log (``run.log``). An epoch's time runs from its start to its end, data loading
    included and validation left out. At the end of each fit the log also gets the time from the
    first epoch's start to the end, over the epoch count: the cost of one more epoch, validation
    and checkpoints included, which ``experiments/protocol_time.py`` reads.
    """

    def __init__(self):
        self._start: float | None = None
        self._fit_start: float | None = None
        self._validation = self._validation_start = 0.0
        self._samples = self._epochs = 0

    @staticmethod
    def phase(module: L.LightningModule) -> str:
        stage = getattr(module, "stage", None)
        if stage is not None:
            return f"pretrain_stage{stage + 1}"
        return getattr(module, "phase", "finetune")

    @override
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._fit_start, self._epochs = None, 0

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._validation, self._samples = _now(module), 0.0, 0
        if self._fit_start is None:
            self._fit_start = self._start
        self._epochs += 1

    @override
    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._fit_start is None:
            return
        seconds = _now(module) - self._fit_start
        log.info(
            "%s: %d epochs in %.2f s (%.3f s per epoch, validation and checkpoints included)",
            self.phase(module),
            self._epochs,
            seconds,
            seconds / self._epochs,
        )

    @override
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        self._samples += len(batch[0])

    @override
    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._validation_start = _now(module)

    @override
    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._validation += _now(module) - self._validation_start

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._start is None or not self._samples:
            return
        seconds = _now(module) - self._start - self._validation
        phase = self.phase(module)
        rate = self._samples / seconds
        module.log_dict(
            {f"time/{phase}/epoch_s": seconds, f"time/{phase}/samples_s": rate},
            on_step=False,
            on_epoch=True,
        )
        log.info(
            "%s epoch %d: %.2f s, %d samples, %.0f samples/s",
            phase,
            trainer.current_epoch + 1,
            seconds,
            self._samples,
            rate,
        )
