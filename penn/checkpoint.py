"""The exported model file: weights plus everything needed to segment a new scan.

``model.pt`` holds the network's config, its weights, the preprocessing and patch settings and
the calibrated threshold, as plain Python types and tensors, so it loads with
``torch.load(weights_only=True)`` (no arbitrary pickle code runs).
"""

from __future__ import annotations

import io as _bytesio
import logging
import pickle
import zipfile
from pathlib import Path

import torch
from hydra.utils import instantiate

from penn.io.files import write_atomic_bytes
from penn.models.ensemble import Ensemble, members_of
from penn.preprocess import PLANE_AXIS

__all__ = [
    "CheckpointError",
    "FORMAT",
    "save_model",
    "load_model",
    "check_meta",
    "model_level",
    "model_info",
]

log = logging.getLogger(__name__)

# the model-file format; files of another version are refused (retrain them with this one)
FORMAT = "penn-model/2"


class CheckpointError(ValueError):
    """An unreadable or inconsistent model file; the message names the file."""


def save_model(path: str | Path, net: torch.nn.Module, meta: dict) -> Path:
    """Writes ``{"format", "meta", "state_dict"}`` atomically.

    Args:
        path: output file.
        net: the trained network, or an :class:`~penn.models.ensemble.Ensemble` of them (its
            member count goes into ``meta["members"]``).
        meta: plain data: ``net`` (the Hydra config that builds one network), ``model``
            (``level`` patch or pixel, ``context_offset``), ``data`` (plane, preprocess,
            patches, classes, class_names), ``inference`` (threshold, ...).
    """
    meta = meta | {"members": len(members_of(net))}
    buffer = _bytesio.BytesIO()
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"format": FORMAT, "meta": meta, "state_dict": state}, buffer)
    return write_atomic_bytes(path, buffer.getvalue())


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Loads a model file safely and rebuilds its network.

    Raises:
        CheckpointError: missing, truncated or corrupt file, a file that is not a penn model,
            or weights that do not match the network its config describes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:120]  # torch's messages run long
        raise CheckpointError(
            f"{path}: cannot read model file (truncated, corrupt or not a torch file): "
            f"{type(err).__name__}: {first}"
        ) from err
    found = blob.get("format") if isinstance(blob, dict) else None
    if isinstance(found, str) and found.startswith("penn-model/") and found != FORMAT:
        raise CheckpointError(
            f"{path}: model file format {found!r} is not this penn's {FORMAT!r}: "
            "retrain the model with this version"
        )
    if found != FORMAT:
        raise CheckpointError(
            f"{path}: not a penn model file (expected format {FORMAT!r}; "
            "Lightning .ckpt files are for resuming, use the run's model.pt)"
        )
    meta = blob.get("meta")
    check_meta(path, meta)
    target = str(meta["net"].get("_target_", ""))
    if not target.startswith("penn."):
        raise CheckpointError(f"{path}: refusing to build network {target!r} outside penn")
    members = [instantiate(meta["net"]) for _ in range(meta["members"])]
    net = members[0] if len(members) == 1 else Ensemble(members)
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not match the network in its config: {err}"
        ) from err
    patch_size = getattr(net, "patch_size", None)
    if model_level(meta) == "patch" and patch_size != meta["data"]["patches"]["size"]:
        raise CheckpointError(
            f"{path}: network patch size {patch_size} != "
            f"data.patches.size {meta['data']['patches']['size']}"
        )
    return net.eval(), meta


# keys a model file's meta must hold for a new scan to be segmented as in training
_REQUIRED = {
    "": ("members",),
    "net": ("_target_", "n_outputs"),
    "model": ("level",),
    "data": ("plane", "preprocess", "patches", "classes", "class_names"),
    "data.preprocess": ("noise_threshold", "smooth_sigma", "clip_percentiles"),
    "data.patches": ("size", "stride", "rule", "threshold"),
    "inference": ("stride", "batch_slices", "threshold", "postprocess", "slice_sigma_mm"),
}


def model_info(cfg) -> dict:
    """How the network sees the data: ``level`` patch or pixel, and ``context_offset``, the
    neighbour slices of 2.5D input (SAU-Net, seg_unet; 0: one slice)."""
    level = cfg.model.get("level", "patch")
    if level not in ("patch", "pixel"):
        raise ValueError(f"model.level={level!r}: use 'patch' or 'pixel'")
    offset = int(cfg.model.slices.context_offset) if level == "pixel" else 0
    return {"level": level, "context_offset": offset}


def model_level(meta: dict) -> str:
    """``patch`` (a patch classifier) or ``pixel`` (a whole-slice network)."""
    return meta["model"]["level"]


def _node(meta: dict, dotted: str):
    for key in filter(None, dotted.split(".")):
        meta = meta[key]
    return meta


def check_meta(path: str | Path, meta: object) -> None:
    """Checks that a model file's meta is complete and consistent with itself.

    Raises:
        CheckpointError: a missing key, an unknown plane, a patch size that differs between the
            network and the patch settings, or an output count that does not fit the classes.
    """
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: model file has no meta dict")
    for dotted, keys in _REQUIRED.items():
        try:
            node = _node(meta, dotted)
        except (KeyError, TypeError):
            raise CheckpointError(f"{path}: meta has no {dotted!r} section") from None
        missing = [k for k in keys if not isinstance(node, dict) or k not in node]
        if missing:
            where = f"meta[{dotted!r}]" if dotted else "meta"
            raise CheckpointError(f"{path}: {where} lacks {missing}")
    data, net, inference = meta["data"], meta["net"], meta["inference"]
    if data["plane"] not in PLANE_AXIS:
        raise CheckpointError(
            f"{path}: unknown plane {data['plane']!r}; use one of {list(PLANE_AXIS)}"
        )
    level = model_level(meta)
    if level not in ("patch", "pixel"):
        raise CheckpointError(f"{path}: unknown model level {level!r}")
    if level == "patch" and net.get("patch_size") != data["patches"]["size"]:
        raise CheckpointError(
            f"{path}: network patch size {net.get('patch_size')} != "
            f"data.patches.size {data['patches']['size']}"
        )
    if level == "patch" and (net.get("context_dilation") or 0) != (
        data["patches"].get("context_dilation") or 0
    ):
        raise CheckpointError(
            f"{path}: network context dilation {net.get('context_dilation')} != "
            f"data.patches.context_dilation {data['patches'].get('context_dilation')}"
        )
    classes, names = data["classes"], data["class_names"]
    if not classes or len(classes) != len(names):
        raise CheckpointError(f"{path}: {len(classes)} classes but class names {names}")
    expected = 1 if len(classes) == 1 else len(classes) + 1
    if net["n_outputs"] != expected:
        raise CheckpointError(
            f"{path}: network has {net['n_outputs']} outputs, "
            f"{len(classes)} class(es) need {expected}"
        )
    if expected == 1 and not isinstance(inference["threshold"], (int, float)):
        raise CheckpointError(f"{path}: binary model without a numeric inference.threshold")
    members = meta["members"]
    if not (isinstance(members, int) and members >= 1):
        raise CheckpointError(f"{path}: members must be a positive integer, got {members!r}")
    if not (isinstance(inference["stride"], int) and inference["stride"] >= 1):
        raise CheckpointError(
            f"{path}: inference.stride must be a positive integer, got {inference['stride']!r}"
        )
    sigma = inference["slice_sigma_mm"]
    if isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise CheckpointError(f"{path}: inference.slice_sigma_mm must be >= 0, got {sigma!r}")
