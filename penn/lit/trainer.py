"""Lightning plumbing shared by the entry points: loggers, trainers, checkpoints, resuming."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

__all__ = ["make_loggers", "make_trainer", "resume_phase", "log_final", "close_loggers"]

log = logging.getLogger(__name__)


def make_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiates every logger of ``cfg.logger`` and gives each the resolved config.

    A resumed run (``ckpt_path`` set) keeps the rows its CSV logs hold and appends to them;
    Lightning's CSV logger would otherwise delete them.
    """
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node]
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        if cfg.get("ckpt_path") and isinstance(logger, CSVLogger):
            _keep_csv_rows(logger)
        logger.log_hyperparams(hparams)
    return loggers


def _keep_csv_rows(logger: CSVLogger) -> None:
    """Lets a CSV logger append to the metrics file it finds instead of deleting it."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    rows = path.read_bytes()
    writer = logger.experiment  # creating the writer deletes the file
    path.write_bytes(rows)
    writer.metrics_keys = path.read_text().splitlines()[0].split(",")
    log.info("resumed run: appending to %s", path)


def make_trainer(
    cfg: DictConfig,
    phase: str,
    max_epochs: int,
    loggers: list[Logger],
    callbacks: list[L.Callback] = (),
) -> L.Trainer:
    """A Trainer for one phase, checkpointing into ``checkpoints/<phase>/`` (best and last).

    Pretraining stages have no validation, so their checkpoint is simply the latest epoch, and
    ``callbacks.early_stopping`` (when its patience is set) stops fine-tuning phases only.
    ``callbacks`` are added to the configured ones for this phase only.
    """
    dirpath = Path(cfg.paths.output_dir) / "checkpoints" / phase
    monitored = phase.startswith("finetune")
    checkpoint = instantiate(
        cfg.callbacks.checkpoint,
        dirpath=str(dirpath),
        **({} if monitored else {"monitor": None, "filename": "epoch{epoch:03d}"}),
    )
    checkpoints = [checkpoint]
    if monitored and checkpoint.save_last:
        # Lightning (2.6) writes last.ckpt only in an epoch that also wrote a top-k checkpoint,
        # so after an epoch whose validation loss did not improve it would be stale, and a run
        # resumed from it would redo that epoch. A second callback writes it after every epoch.
        checkpoint.save_last = False
        checkpoints.append(
            ModelCheckpoint(
                dirpath=str(dirpath),
                filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                monitor=None,
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    extra = [instantiate(node) for node in (cfg.callbacks.get("extra") or {}).values() if node]
    stopping = cfg.callbacks.get("early_stopping")
    if monitored and stopping and stopping.get("patience") is not None:
        extra.append(instantiate(stopping))
    return instantiate(
        cfg.trainer,
        max_epochs=max_epochs,
        logger=loggers or False,
        callbacks=[*checkpoints, *extra, *callbacks],
    )


def resume_phase(ckpt_path: str | None) -> tuple[str, int, str | None]:
    """Where an interrupted run goes on: (phase, stage, checkpoint) from a Lightning checkpoint.

    A pretraining checkpoint of stage k resumes that stage (earlier stages are inside it) and
    runs the rest; a fine-tuning checkpoint skips pretraining, and its second entry is the
    ensemble member it trains (0 for a single network).
    """
    if not ckpt_path:
        return "pretrain", 0, None
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint to resume from not found")
    try:
        hparams = torch.load(path, map_location="cpu", weights_only=True).get(
            "hyper_parameters", {}
        )
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: cannot read checkpoint (truncated or corrupt?): {err}") from err
    if "stage" in hparams:
        log.info("resuming pretraining stage %d from %s", hparams["stage"] + 1, path)
        return "pretrain", int(hparams["stage"]), str(path)
    member = int(hparams.get("member", 0))
    if member:
        log.info("resuming fine-tuning of ensemble member %d from %s", member, path)
    else:
        log.info("resuming fine-tuning from %s", path)
    return "finetune", member, str(path)


def log_final(
    loggers: list[Logger],
    metrics: dict[str, float],
    images: list[Path],
    table: tuple[list[str], list[list]] | None = None,
    model_file: Path | None = None,
) -> None:
    """Sends the final metrics to every logger; W&B also gets the overlay images, the per-volume
    ``table`` (columns, rows) as ``test/per_volume`` and ``model_file`` as a model artifact."""
    finite = {
        k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)
    }
    for logger in loggers:
        logger.log_metrics(finite)
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(finite)
            if images:
                logger.log_image(
                    "test/overlays",
                    [str(p) for p in images[:8]],
                    caption=[p.stem for p in images[:8]],
                )
            if table is not None:
                logger.log_table("test/per_volume", columns=table[0], data=table[1])
            if model_file is not None:
                _log_model(logger, Path(model_file))
        logger.save()


def _log_model(logger: WandbLogger, path: Path) -> None:
    """The model file as a W&B artifact of type ``model`` (uploaded by ``wandb sync`` offline)."""
    import wandb

    artifact = wandb.Artifact(f"model-{logger.experiment.id}", type="model")
    artifact.add_file(str(path), name=path.name)
    logger.experiment.log_artifact(artifact)


def close_loggers(loggers: list[Logger]) -> None:
    """Finalises loggers; W&B runs are closed so one failed job does not spoil a sweep."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            import wandb

            wandb.finish()
