"""Shared helpers of the prediction tests: a hand-built model file and a phantom-like volume.

The model is an untrained-architecture StackedSparseAutoencoder (8x8 patches, 2 hidden units)
whose weights are set by hand so that it finds bright regions: hidden unit j fires when a patch's
mean normalised intensity exceeds ``STEPS[j]``. Its output is deterministic and shaped like the
input's structures, which is what geometry tests need, and it is built in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from penn.checkpoint import save_model
from penn.models.sparse_ae import StackedSparseAutoencoder
from penn.predict import predict

CONF = Path(__file__).resolve().parents[1] / "conf"

PATCH = 8
STEPS = (0.25, 0.7)  # patch-mean thresholds of the two hidden units (normalised intensity)
GAIN = 40.0
NET = {
    "_target_": "penn.models.sparse_ae.StackedSparseAutoencoder",
    "patch_size": PATCH,
    "n_layers": 1,
    "n_nodes": 2,
}


def meta(n_outputs: int) -> dict:
    classes, names = ([[2]], ["tumor"]) if n_outputs == 1 else ([[1], [2]], ["vertebra", "tumor"])
    return {
        "net": NET | {"n_outputs": n_outputs},
        "model": {"level": "patch", "context_offset": 0},
        "data": {
            "plane": "sagittal",
            "preprocess": {
                "noise_threshold": 0.0,
                "smooth_sigma": 0.0,
                "clip_percentiles": [0.0, 100.0],
            },
            "patches": {"size": PATCH, "stride": 2, "rule": "fraction", "threshold": 0.6},
            "classes": classes,
            "class_names": names,
        },
        "inference": {
            "stride": 2,
            "batch_slices": 8,
            "threshold": 0.5,
            "slice_sigma_mm": 0.0,
            "postprocess": {"min_size": 0, "keep_largest": None, "opening_radius": 0},
        },
    }


def bright_region_net(n_outputs: int) -> StackedSparseAutoencoder:
    """1 output: tumor where h2 fires; 3 outputs: background / vertebra (h1 only) / tumor (h2)."""
    net = StackedSparseAutoencoder(PATCH, n_layers=1, n_nodes=2, n_outputs=n_outputs)
    with torch.no_grad():
        enc = net.stages[0].encoder
        enc.weight.fill_(GAIN / PATCH**2)
        enc.bias.copy_(torch.tensor([-GAIN * s for s in STEPS]))
        if n_outputs == 1:
            net.head.weight.copy_(torch.tensor([[0.0, 20.0]]))
            net.head.bias.fill_(-10.0)
        else:
            net.head.weight.copy_(torch.tensor([[0.0, 0.0], [8.0, -16.0], [0.0, 16.0]]))
            net.head.bias.copy_(torch.tensor([4.0, 0.0, 0.0]))
    return net.eval()


def write_model(path: Path, n_outputs: int, meta_override: dict | None = None) -> Path:
    return save_model(path, bright_region_net(n_outputs), meta_override or meta(n_outputs))


def spine_volume(shape=(10, 40, 72)) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) in RAS voxel order: three bodies stacked I->S, a tumour in one.

    Background 100, bodies 500, tumour 1000, so normalised intensities are 0, 0.44 and 1.
    """
    image = np.full(shape, 100.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    x0, x1 = 2, shape[0] - 2
    for z0 in (6, 30, 54):  # inferior to superior
        labels[x0:x1, 12:30, z0 : z0 + 14] = 1
    zz, yy = np.meshgrid(np.arange(shape[2]), np.arange(shape[1]))
    ball = (yy - 21) ** 2 + (zz - 37) ** 2 <= 36  # in the middle body, off-centre in y
    labels[x0 + 1 : x1 - 1][:, ball] = 2
    image[labels == 1] = 500.0
    image[labels == 2] = 1000.0
    return image, labels


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def run_predict(ckpt: Path, source: Path, out: Path, *overrides: str) -> list[dict]:
    """Runs `penn predict` in process with the composed predict config."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[
                f"ckpt={ckpt}",
                f"input={source}",
                f"output={out}",
                "progress=false",
                *overrides,
            ],
        )
    return predict(cfg)


def run_predict_shipped(source: Path, out: Path, *overrides: str) -> list[dict]:
    """Runs `penn predict` in process without ``ckpt=``: the model penn ships."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[f"input={source}", f"output={out}", "progress=false", *overrides],
        )
    return predict(cfg)
