"""Entry point: pretrain each stage greedily, fine-tune, calibrate on validation, test, write.

python -m penn.run                       # the built-in phantom
python -m penn.run data=lumbar_vb        # the real lumbar scans
python -m penn.run +experiment=sweep_layers
python -m penn.run model=unet            # a Table 2 baseline (model.level=pixel: whole slices)

Patch classifiers (``model.level: patch``: PENN, OP-convNet) train on the balanced patch stream
and segment with the patch grid; pixel-wise nets (``model.level: pixel``: UNet, MultiResUNet,
SAU-Net, D-TVNet) train on whole slices of the same splits. Both then go through the same
threshold calibration on validation, the same metrics and the same outputs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import hydra
import lightning as L
import numpy as np
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from penn.checkpoint import model_info
from penn.lit.phases import finetune, pretrain
from penn.lit.timing import machine_name
from penn.lit.trainer import close_loggers, make_loggers, resume_phase
from penn.reports.run_evaluation import evaluate_and_write
from penn.reports.run_files import metrics_table

log = logging.getLogger(__name__)


def make_datamodule(cfg: DictConfig):
    """``cfg.data``'s patch data module, or its whole-slice twin for pixel-wise nets.

    The twin is the patch module's ``slice_twin`` class attribute when it has one (the lesion
    benchmark's), else :class:`penn.data.slice_data.SliceDataModule`.
    """
    if model_info(cfg)["level"] == "patch":
        return instantiate(cfg.data)
    s = cfg.model.slices
    twin = getattr(
        get_class(cfg.data._target_), "slice_twin", "penn.data.slice_data.SliceDataModule"
    )
    return instantiate(
        cfg.data,
        _target_=twin,
        slice_batch=s.batch,
        context_offset=s.context_offset,
        crop=s.crop,
        slice_augment=s.augment,
    )


def check_context_patch(cfg: DictConfig, net, dm) -> None:
    """Refuses a context patch (``data.patches.context_dilation``) the network would not see."""
    wanted = getattr(dm, "context_dilation", 0) if model_info(cfg)["level"] == "patch" else 0
    if wanted != getattr(net, "context_dilation", 0):
        raise ValueError(
            f"data.patches.context_dilation={wanted}: model={cfg.model.name} takes "
            f"{'the patch alone' if wanted else 'a context patch'}; the context patch is a "
            "PENN option (model=penn, whose net reads data.patches.context_dilation)"
        )


def train(cfg: DictConfig) -> float:
    """The whole recipe; returns ``cfg.optimized_metric`` (for Hydra sweepers)."""
    out = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    dm = make_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    net = instantiate(cfg.model.net, n_outputs=dm.n_outputs)
    check_context_patch(cfg, net, dm)
    loggers = make_loggers(cfg)
    try:
        resume, record, start = resume_phase(cfg.ckpt_path), {}, time.perf_counter()
        pretrain(cfg, net, dm, loggers, resume)
        net = finetune(cfg, net, dm, loggers, resume, record)
        record["time/train_s"] = time.perf_counter() - start  # this process's share if resumed
        record["model/parameters"] = float(sum(p.numel() for p in net.parameters()))
        record["machine"] = machine_name(str(cfg.trainer.accelerator))
        if rank_zero_only.rank != 0:  # DDP: every rank trains; rank 0 alone tests and writes
            return 0.0
        metrics = evaluate_and_write(cfg, net, dm, out, loggers, record)
    finally:
        close_loggers(loggers)
    print(f"\n{metrics_table(metrics)}\n\nmetrics: {out / 'metrics.json'}")  # the one print
    value = metrics.get(cfg.optimized_metric, math.nan)
    return float(value) if value is not None and np.isfinite(value) else 0.0


@hydra.main(version_base="1.3", config_path="pkg://penn.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
