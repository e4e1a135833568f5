"""Segments volumes with a trained network: probabilities per volume on the scan's own grid."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from penn.inference.dense import segment_slices, segment_slices_pixelwise
from penn.io.dataset import list_cases, read_case, read_dataset_json
from penn.io.volume import DataError, Volume
from penn.models.ensemble import members_of
from penn.preprocess import PLANE_AXIS, label_slices, preprocess_volume, resize_in_plane, to_slices

__all__ = ["Prediction", "default_device", "predict_volumes", "SegmentedFolder", "segment_folder"]

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Dense output for one volume, in slice order (S, ...).

    Attributes:
        probs: (S, K, H, W) pixel class probabilities (K = 1 for a binary network).
        patch_probs: (S, K, ny, nx) probabilities of the patches of the inference grid, for patch
            classifiers; None for pixel-wise nets, whose patch decisions are the patch labelling
            rule applied to their predicted class map.
        labels: (S, H, W) uint8 predicted classes after thresholding and post-processing.
    """

    probs: np.ndarray
    patch_probs: np.ndarray | None
    labels: np.ndarray | None = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict_volumes(
    net,
    slices: list[np.ndarray],
    inference: dict,
    model: dict | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    patches: bool = True,
    shapes: list[tuple[int, int]] | None = None,
    slice_spacings: list[float] | None = None,
) -> list[Prediction]:
    """Dense probabilities for each volume's (S, H, W) slices.

    Args:
        net: a patch classifier, or a pixel-wise net when ``model['level'] == 'pixel'``.
        slices: per volume, preprocessed (S, H, W) slices.
        inference: the inference config (``stride`` of the patch grid, ``batch_slices``,
            ``aggregate``: how patch probabilities become pixel probabilities).
        model: ``level`` (``patch`` default, or ``pixel``) and, for pixel-wise nets,
            ``context_offset`` (SAU-Net's neighbour offset, 0 otherwise).
        device: where to run (default: CUDA when there is a GPU, else CPU).
        progress: a progress bar over each volume's slices.
        patches: keep the patch-grid probabilities (False: ``patch_probs`` is None).
        shapes: per volume, the (H, W) of its own slices when ``slices`` were resampled to
            the network's spacing (``data.preprocess.spacing``): the pixel probabilities are
            resampled back to it (bilinear); the patch grid stays on the working grid.
        slice_spacings: per volume, the distance between its slices in mm; needed when
            ``inference.slice_sigma_mm`` > 0, which smooths the pixel probabilities across
            slices (:func:`smooth_across_slices`; the patch grid is left as the
            network gave it).
    """
    predictions = _predict(net, slices, inference, model, device, progress, patches)
    if shapes is not None:
        for pred, shape in zip(predictions, shapes, strict=True):
            pred.probs = resize_in_plane(pred.probs, shape, order=1)
    sigma = float(inference.get("slice_sigma_mm", 0.0))
    if sigma > 0:
        if slice_spacings is None:
            raise ValueError(
                f"inference.slice_sigma_mm={sigma:g} smooths across slices: pass each volume's "
                "slice spacing (slice_spacings)"
            )
        for pred, spacing in zip(predictions, slice_spacings, strict=True):
            pred.probs = smooth_across_slices(pred.probs, sigma, spacing)
    return predictions


def _predict(net, slices, inference, model, device, progress, patches) -> list[Prediction]:
    """Each member's read-out; an ensemble's probabilities (and patch grids) are their mean."""
    members = members_of(net)
    total = None
    for member in members:
        pred = _predict_one(member, slices, inference, model, device, progress, patches)
        if total is None:
            total = pred
            continue
        for acc, p in zip(total, pred, strict=True):
            acc.probs += p.probs
            if acc.patch_probs is not None:
                acc.patch_probs += p.patch_probs
    if len(members) > 1:
        for acc in total:
            acc.probs /= len(members)
            if acc.patch_probs is not None:
                acc.patch_probs /= len(members)
    return total


def _predict_one(net, slices, inference, model, device, progress, patches) -> list[Prediction]:
    model = model or {}
    device = device or default_device()
    net = net.eval().to(device)
    if model.get("level", "patch") == "pixel":
        offset = int(model.get("context_offset", 0))
        return [
            Prediction(
                segment_slices_pixelwise(
                    net,
                    s,
                    inference["batch_slices"],
                    device,
                    offset,
                    progress=progress,
                    channels_last=bool(inference.get("channels_last", False)),
                ),
                None,
            )
            for s in slices
        ]
    return [
        Prediction(
            *segment_slices(
                net,
                s,
                inference["stride"],
                inference["batch_slices"],
                device,
                progress=progress,
                aggregate=inference.get("aggregate", "mean"),  # files saved before it: mean
                center_sigma=inference.get("center_sigma", 0.0),
                patches=patches,
            )
        )
        for s in slices
    ]


@dataclass
class SegmentedFolder:
    """Every labelled case of a dataset folder, segmented (probabilities, not yet decided).

    Attributes:
        volumes: the cases as read (canonical RAS+ orientation, raw labels, voxel spacing).
        labels: per case, the raw (S, H, W) label slices on the scan's own grid.
        working_labels: the same on the network's working grid (``data.preprocess.spacing``).
        predictions: per case, the network's :class:`Prediction` on the scan's own grid.
    """

    volumes: list[Volume]
    labels: list[np.ndarray]
    working_labels: list[np.ndarray]
    predictions: list[Prediction]


def segment_folder(
    net, meta: dict, root, inference: dict, progress: bool = True
) -> SegmentedFolder:
    """Reads, preprocesses (as ``meta['data']`` says) and segments every labelled case of ``root``.

    Args:
        net: the trained network of a model file; ``meta`` its metadata
            (:func:`penn.checkpoint.load_model`).
        root: a dataset folder in the nnU-Net raw layout.
        inference: the inference settings (the model file's, possibly overridden).
        progress: a progress bar over each volume's slices.
    """
    data = meta["data"]
    allowed = sorted(int(v) for v in read_dataset_json(root)["labels"].values())
    plane, spacing = data["plane"], data["preprocess"].get("spacing")
    volumes, slices, labels, working_labels = [], [], [], []
    for case in list_cases(root):
        volume = read_case(case, allowed)
        volumes.append(volume)
        image = preprocess_volume(
            volume.image, plane, voxel_spacing=volume.spacing, **data["preprocess"]
        )
        slices.append(image)
        labels.append(to_slices(volume.labels, plane))
        working_labels.append(label_slices(volume.labels, plane, spacing, volume.spacing))
    if not slices:
        raise DataError(f"{root}: no labelled volumes")
    predictions = predict_volumes(
        net,
        slices,
        inference,
        meta["model"],
        progress=progress,
        shapes=[lab.shape[1:] for lab in labels],
        slice_spacings=[v.spacing[PLANE_AXIS[plane]] for v in volumes],
    )
    return SegmentedFolder(volumes, labels, working_labels, predictions)


def smooth_across_slices(probs: np.ndarray, sigma_mm: float, slice_spacing: float) -> np.ndarray:
    """Gaussian smoothing of (S, K, H, W) pixel probabilities along the slice axis.

    The network sees one slice at a time; a lesion spans several slices, a spurious spot in one
    slice often only one. Smoothing with a Gaussian of ``sigma_mm`` (mirrored at the first and
    last slice) lowers such spots and keeps structures that continue across slices.

    Args:
        probs: (S, K, H, W) probabilities, slices in order.
        sigma_mm: the Gaussian's sigma in mm (0: ``probs`` unchanged).
        slice_spacing: distance between neighbouring slices in mm.
    """
    if sigma_mm <= 0:
        return probs
    if not slice_spacing or slice_spacing <= 0:
        raise ValueError(f"slice spacing {slice_spacing!r} mm: smoothing across slices needs > 0")
    return ndimage.gaussian_filter1d(probs, sigma_mm / slice_spacing, axis=0, mode="reflect")
