"""The training phases of a run: greedy pretraining of each autoencoder stage, then supervised
fine-tuning of every ensemble member, each resumable from its last checkpoint.
"""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from penn.checkpoint import model_info
from penn.io.files import write_atomic_bytes
from penn.lit.finetune import FinetuneModule
from penn.lit.mining import HardNegativeMining
from penn.lit.pretrain import PretrainModule
from penn.lit.segmentation import SegmentationModule
from penn.lit.trainer import make_trainer
from penn.models.ensemble import Ensemble

__all__ = ["pretrain", "step_group", "supervised_module", "n_members", "finetune"]

log = logging.getLogger(__name__)


def pretrain(cfg: DictConfig, net, dm, loggers, resume: tuple[str, int, str | None]) -> None:
    """Greedy layer-wise pretraining, one ``Trainer.fit`` per stage (the paper's step 6)."""
    phase, first_stage, ckpt = resume
    if phase == "finetune" or cfg.model.get("pretrain") is None or cfg.model.pretrain.epochs <= 0:
        return
    for stage in range(first_stage, len(net.stages)):
        module = PretrainModule(
            net,
            stage,
            optimizer=instantiate(cfg.model.pretrain.optimizer),
            **cfg.model.sae,
            **step_group(cfg),
        )
        trainer = make_trainer(
            cfg, f"pretrain_stage{stage + 1}", cfg.model.pretrain.epochs, loggers
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt if stage == first_stage else None)


def step_group(cfg: DictConfig) -> dict[str, int]:
    """Optimizer steps per training batch (``data.loader.steps_per_batch``) and their size.

    Groups of steps apply to the patch stream of patch classifiers (PENN, OP-convNet); a
    pixel-wise net trains on batches of whole slices, one step each.
    """
    steps = int(cfg.data.loader.get("steps_per_batch", 1))
    if steps > 1 and model_info(cfg)["level"] != "patch":
        log.info(
            "data.loader.steps_per_batch=%d applies to patch classifiers; %s trains on whole "
            "slices, one optimizer step per batch",
            steps,
            cfg.model.name,
        )
        steps = 1
    return {"steps_per_batch": steps, "micro_batch": int(cfg.data.loader.batch_size)}


def supervised_module(cfg: DictConfig, net, n_classes: int, member: int = 0):
    """Fine-tuning on patches, or slice segmentation (BCE/CE + soft Dice) for pixel-wise nets."""
    train = cfg.model.finetune
    optimizer = instantiate(train.optimizer)
    scheduler = instantiate(train.scheduler) if train.get("scheduler") else None
    if model_info(cfg)["level"] == "patch":
        return FinetuneModule(
            net,
            n_classes,
            optimizer=optimizer,
            member=member,
            scheduler=scheduler,
            **step_group(cfg),
        )
    return SegmentationModule(
        net,
        n_classes,
        optimizer=optimizer,
        dice_weight=train.dice_weight,
        contour_weight=train.contour_weight,
        member=member,
        scheduler=scheduler,
        scheduler_interval=train.get("scheduler_interval", "epoch"),
        class_weights=train.get("class_weights"),
    )


def n_members(cfg: DictConfig) -> int:
    """``model.finetune.members``: networks fine-tuned and averaged (1: a single network)."""
    members = int(cfg.model.finetune.get("members", 1) or 1)
    if members < 1:
        raise ValueError(f"model.finetune.members={members}: need at least 1")
    return members


def finetune(
    cfg: DictConfig,
    net,
    dm,
    loggers,
    resume: tuple[str, int, str | None],
    record: dict[str, float] | None = None,
):
    """Supervised training of the whole network; returns the trained network.

    ``record``, when given, receives how the training went: ``train/epochs`` and
    ``train/steps`` (summed over the members trained here) and ``train/stopped_early`` (1.0 when
    every one of them was stopped by ``callbacks.early_stopping``, else 0.0).

    With ``model.finetune.members`` = m > 1, m copies of the (pretrained) network are fine-tuned,
    member k on its own patch stream (``data.split.seed`` + k for the balanced draws and their
    order; ``seed`` + k for augmentation and the mining pool; member 0 trains exactly as a single
    network would), and the :class:`~penn.models.ensemble.Ensemble` of their best checkpoints is
    returned. The starting weights are kept in
    ``checkpoints/finetune_start.pt``, so a run resumed from member k's checkpoint restores the
    earlier members from their best checkpoints beside it and starts the later ones afresh.
    """
    members = n_members(cfg)
    phase, resumed_member, ckpt = resume
    if phase != "finetune":  # a fresh fine-tuning (a pretraining checkpoint is not for it)
        resumed_member, ckpt = 0, None
    first = resumed_member
    if first >= members:
        raise ValueError(
            f"{ckpt}: checkpoint of ensemble member {first}, but model.finetune.members={members}"
        )
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    start = _start_weights(net, members, folder, ckpt)
    trained = []
    for member in range(members):
        if member > 0:
            net = copy.deepcopy(net)
            net.load_state_dict(start)
        if member < first:  # finished before the interruption
            module = supervised_module(cfg, net, dm.n_classes, member)
            best = _best_checkpoint(Path(ckpt).parents[1] / module.phase)
            _restore(module, best)
            log.info("restored finished ensemble member %d from %s", member, best)
        else:
            if member > 0:
                L.seed_everything(cfg.seed + member, workers=True)
            dm.stream_offset = member
            done = _fit_member(cfg, net, dm, loggers, member, ckpt if member == first else None)
            if record is not None:
                _add_record(record, done)
        trained.append(net)
    dm.stream_offset = 0
    return trained[0] if members == 1 else Ensemble(trained)


def _start_weights(net, members: int, folder: Path, ckpt: str | None) -> dict | None:
    """The weights every member starts from (None for a single network).

    A fresh fine-tuning takes ``net``'s and writes them to ``folder/finetune_start.pt``; a resumed
    one reads them from beside its checkpoint (``checkpoints/finetune_start.pt``).
    """
    if members == 1:
        return None
    target = folder / "finetune_start.pt"
    if ckpt is None:
        start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    else:
        source = Path(ckpt).parents[1] / "finetune_start.pt"
        if not source.is_file():
            raise FileNotFoundError(
                f"{source}: the ensemble's starting weights, needed to resume {ckpt}, are missing"
            )
        start = torch.load(source, map_location="cpu", weights_only=True)
    if rank_zero_only.rank == 0:
        buffer = io.BytesIO()
        torch.save(start, buffer)
        write_atomic_bytes(target, buffer.getvalue())
    return start


def _best_checkpoint(folder: Path) -> Path:
    """A finished member's best checkpoint (``best.ckpt``; ``last.ckpt`` without validation)."""
    for name in ("best.ckpt", "last.ckpt"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no best.ckpt or last.ckpt of a finished ensemble member")


def _restore(module: L.LightningModule, path: str | Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)


def _add_record(record: dict[str, float], done: dict[str, float]) -> None:
    for key in ("train/epochs", "train/steps"):
        record[key] = record.get(key, 0.0) + done[key]
    record["train/stopped_early"] = min(
        record.get("train/stopped_early", 1.0), done["train/stopped_early"]
    )


def _fit_member(cfg: DictConfig, net, dm, loggers, member: int, ckpt: str | None) -> dict:
    """Fine-tunes one network (ensemble member ``member``); leaves its best weights in ``net``
    (with ``model.finetune.weight_average``, the averaged weights of the best epoch) and returns
    its epochs, optimizer steps and whether early stopping ended it."""
    module = supervised_module(cfg, net, dm.n_classes, member)
    callbacks = []
    mining = cfg.model.finetune.get("hard_negatives")
    if model_info(cfg)["level"] == "patch" and mining and mining.fraction > 0:
        callbacks.append(HardNegativeMining(mining.fraction, mining.pool, seed=cfg.seed + member))
    average = cfg.model.finetune.get("weight_average")
    if average:  # a fresh callback per member: it counts the steps of its own fit
        callbacks.append(instantiate(average))
    if n_members(cfg) > 1:
        log.info(
            "fine-tuning ensemble member %d (members 0 to %d) into checkpoints/%s",
            member,
            n_members(cfg) - 1,
            module.phase,
        )
    trainer = make_trainer(cfg, module.phase, cfg.model.finetune.epochs, loggers, callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        _restore(module, best)
        log.info("restored best fine-tuning checkpoint %s", best)
    stopped = any(getattr(c, "stopped_epoch", 0) > 0 for c in trainer.early_stopping_callbacks)
    if stopped:
        log.info("early stopping ended fine-tuning after %d epochs", trainer.current_epoch)
    return {
        "train/epochs": float(trainer.current_epoch),
        "train/steps": float(trainer.global_step),
        "train/stopped_early": float(stopped),
    }
