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

import copy
import io
import logging
import math
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from penn.checkpoint import save_model
from penn.evaluation import calibrate_decision, class_map, predict_volumes, score
from penn.external import evaluate_external
from penn.io import write_atomic_bytes, write_json, write_nifti
from penn.lit.baseline import SegmentationModule
from penn.lit.finetune import FinetuneModule
from penn.lit.pretrain import PretrainModule
from penn.mining import HardNegativeMining
from penn.models.ensemble import Ensemble
from penn.prediction import labelled_mask
from penn.preprocess import from_slices, resize_in_plane
from penn.reports import metrics_table, write_csv, write_metrics, write_overlays
from penn.runtime import close_loggers, log_final, make_loggers, make_trainer, resume_phase

log = logging.getLogger(__name__)


def model_info(cfg: DictConfig) -> dict:
    """How the network sees the data: ``level`` patch or pixel, SAU-Net's ``context_offset``."""
    level = cfg.model.get("level", "patch")
    if level not in ("patch", "pixel"):
        raise ValueError(f"model.level={level!r}: use 'patch' or 'pixel'")
    offset = int(cfg.model.slices.context_offset) if level == "pixel" else 0
    return {"level": level, "context_offset": offset}


def make_datamodule(cfg: DictConfig):
    """``cfg.data``'s patch data module, or its whole-slice twin for pixel-wise nets.

    The twin is the patch module's ``slice_twin`` class attribute when it has one (the lesion
    benchmark's), else :class:`penn.slices.SliceDataModule`.
    """
    if model_info(cfg)["level"] == "patch":
        return instantiate(cfg.data)
    s = cfg.model.slices
    twin = getattr(get_class(cfg.data._target_), "slice_twin", "penn.slices.SliceDataModule")
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
    )


def n_members(cfg: DictConfig) -> int:
    """``model.finetune.members``: networks fine-tuned and averaged (1: a single network)."""
    members = int(cfg.model.finetune.get("members", 1) or 1)
    if members < 1:
        raise ValueError(f"model.finetune.members={members}: need at least 1")
    return members


def finetune(cfg: DictConfig, net, dm, loggers, resume: tuple[str, int, str | None]):
    """Supervised training of the whole network; returns the trained network.

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
            _fit_member(cfg, net, dm, loggers, member, ckpt if member == first else None)
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


def _fit_member(cfg: DictConfig, net, dm, loggers, member: int, ckpt: str | None) -> None:
    """Fine-tunes one network (ensemble member ``member``); leaves its best weights in ``net``
    (with ``model.finetune.weight_average``, the averaged weights of the best epoch)."""
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


def evaluate_and_write(cfg: DictConfig, net, dm, out: Path, loggers) -> dict[str, float]:
    """Calibrates on validation, scores the test split, writes metrics, model and overlays."""
    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    model = model_info(cfg)
    val, val_labels = dm.splits["val"], dm.native_labels("val")
    progress = bool(cfg.trainer.get("enable_progress_bar", True))  # bars over each volume
    val_pred = predict_volumes(
        net,
        val.slices,
        inference,
        model,
        progress=progress,
        shapes=_shapes(val_labels),
        slice_spacings=val.slice_spacings(dm.plane),
    )
    val_truth = [class_map(lab, dm.classes) for lab in val_labels]
    threshold, min_size, calibration = calibrate_decision(val_pred, val_truth, inference)
    inference["postprocess"]["min_size"] = min_size
    val_metrics, _ = score(
        val_pred,
        val_labels,
        dm.classes,
        dm.class_names,
        dm.patch_cfg,
        inference,
        threshold,
        "val",
        patch_labels=val.labels,
    )
    test, test_labels = dm.splits["test"], dm.native_labels("test")
    test_pred = predict_volumes(
        net,
        test.slices,
        inference,
        model,
        progress=progress,
        shapes=_shapes(test_labels),
        slice_spacings=test.slice_spacings(dm.plane),
    )
    metrics, per_volume = score(
        test_pred,
        test_labels,
        dm.classes,
        dm.class_names,
        dm.patch_cfg,
        inference,
        threshold,
        "test",
        patch_labels=test.labels,
    )
    metrics.update({k: v for k, v in val_metrics.items() if k.startswith("val/pixel")})
    metrics["calibration/threshold"] = math.nan if threshold is None else threshold
    write_metrics(out / "metrics.json", metrics)
    write_json(
        out / "evaluation.json",
        {
            "calibration": calibration,
            "threshold": threshold,
            "balance": dm.balance_log,
            "test_volumes": dict(zip(test.names, per_volume, strict=True)),
            "counts_columns": ["tp", "fp", "tn", "fn"],
            "class_names": dm.class_names,
        },
    )
    save_model(
        out / "model.pt",
        net,
        {
            "net": OmegaConf.to_container(cfg.model.net, resolve=True)
            | {"n_outputs": dm.n_outputs},
            "model": model,
            "data": {
                "plane": dm.plane,
                "preprocess": dm.preprocess_cfg,
                "patches": dm.patch_cfg,
                "classes": dm.classes,
                "class_names": dm.class_names,
            },
            "inference": inference | {"threshold": threshold},
        },
    )
    overlays = []
    for name, slices, labels, pred in zip(
        test.names, test.slices, test_labels, test_pred, strict=True
    ):
        overlays += write_overlays(
            out / "overlays",
            name,
            resize_in_plane(slices, labels.shape[1:], order=1),
            class_map(labels, dm.classes),
            pred.labels,
            cfg.inference.overlays,
        )
    write_test_masks(out / "test_masks", test.volumes, test_pred, dm.classes, dm.plane)
    metrics |= external_validation(cfg, out, progress)
    metrics["recipe"] = cfg.get("recipe_name")
    write_metrics(out / "metrics.json", metrics)
    log_final(loggers, metrics, overlays)
    return metrics


def write_test_masks(folder: Path, volumes, predictions, classes, plane: str) -> None:
    """Each test volume's scored mask as ``folder/NAME.nii.gz``, in the scan's own geometry with
    the label values of the data (``penn evaluate -p folder -g labelsTr`` scores them again)."""
    for volume, pred in zip(volumes, predictions, strict=True):
        mask = labelled_mask(from_slices(pred.labels, plane), classes)
        write_nifti(folder / f"{volume.name}.nii.gz", mask, volume, dtype=mask.dtype)


def external_validation(cfg: DictConfig, out: Path, progress: bool) -> dict[str, float]:
    """``external/...`` metrics of the run's model on ``data.external`` (none when it is null);
    its per-case rows go to ``external/<name>.csv``."""
    external = cfg.data.get("external")
    if not external:
        return {}
    metrics, rows = evaluate_external(out / "model.pt", external.root, progress=progress)
    write_csv(out / "external" / f"{external.name}.csv", rows)
    return metrics


def _shapes(labels: list[np.ndarray]) -> list[tuple[int, int]]:
    """Each volume's own in-plane slice shape, which the pixel probabilities are resampled to."""
    return [lab.shape[1:] for lab in labels]


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
        resume = resume_phase(cfg.ckpt_path)
        pretrain(cfg, net, dm, loggers, resume)
        net = finetune(cfg, net, dm, loggers, resume)
        if rank_zero_only.rank != 0:  # DDP: every rank trains; rank 0 alone tests and writes
            return 0.0
        metrics = evaluate_and_write(cfg, net, dm, out, loggers)
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
