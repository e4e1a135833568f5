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

from penn.io import write_atomic_bytes

__all__ = ["CheckpointError", "FORMAT", "save_model", "load_model"]

log = logging.getLogger(__name__)

FORMAT = "penn-model/1"


class CheckpointError(ValueError):
    """An unreadable or inconsistent model file; the message names the file."""


def save_model(path: str | Path, net: torch.nn.Module, meta: dict) -> Path:
    """Writes ``{"format", "meta", "state_dict"}`` atomically.

    Args:
        path: output file.
        net: the trained network.
        meta: plain data: ``net`` (the Hydra config that builds the network), ``data``
            (plane, preprocess, patches, classes, class_names), ``inference`` (threshold, ...).
    """
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
        raise CheckpointError(f"{path}: cannot read model file (truncated or corrupt?): {err}") from err
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a penn model file (expected format {FORMAT!r}; "
                              "Lightning .ckpt files are for resuming, use the run's model.pt)")
    meta = blob["meta"]
    target = str(meta["net"].get("_target_", ""))
    if not target.startswith("penn."):
        raise CheckpointError(f"{path}: refusing to build network {target!r} outside penn")
    net = instantiate(meta["net"])
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the network in its config: {err}") from err
    return net.eval(), meta
