"""Dense segmentation with the fully convolutional twin of a trained patch network.

A patch classifier whose first layer sees the n x n patch and whose other layers act on that
layer's codes is exactly a network of one n x n convolution followed by 1 x 1 convolutions.
Run at a stride s over a whole slice it classifies every patch of the grid in one pass; each
pixel then takes the mean class probability of the patches that cover it (PAPER.md step 8).
Other patch classifiers (e.g. OP-convNet) classify the same grid of patches, unfolded in batches.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from skimage import measure, morphology
from torch import nn
from tqdm.auto import tqdm

from penn.models.sparse_ae import StackedSparseAutoencoder

__all__ = [
    "to_fully_convolutional",
    "patch_logits",
    "classify_unfolded",
    "segment_slices",
    "segment_slices_pixelwise",
    "decide",
    "calibrate_threshold",
    "postprocess",
]

log = logging.getLogger(__name__)


def to_fully_convolutional(net: StackedSparseAutoencoder, stride: int) -> nn.Sequential:
    """Rewrites the patch network as convolutions: n x n (stride s), then 1 x 1 layers.

    The first encoder's weight (h, n*n) is reshaped to (h, 1, n, n): patches are flattened row by
    row, which is the layout of a convolution kernel. Output: logits (B, n_outputs, ny, nx).
    """
    n = net.patch_size
    layers: list[nn.Module] = []
    for i, stage in enumerate(net.stages):
        lin = stage.encoder
        if i == 0:
            conv = nn.Conv2d(1, lin.out_features, n, stride=stride)
            conv.weight.data.copy_(lin.weight.data.view(lin.out_features, 1, n, n))
        else:
            conv = nn.Conv2d(lin.in_features, lin.out_features, 1)
            conv.weight.data.copy_(lin.weight.data[:, :, None, None])
        conv.bias.data.copy_(lin.bias.data)
        layers += [conv, nn.Sigmoid()]
    head = nn.Conv2d(net.head.in_features, net.head.out_features, 1)
    head.weight.data.copy_(net.head.weight.data[:, :, None, None])
    head.bias.data.copy_(net.head.bias.data)
    return nn.Sequential(*layers, head).eval()


def _pad_amount(length: int, patch_size: int, stride: int) -> int:
    """Pixels to add so that the stride grid reaches the last pixel."""
    padded = max(length, patch_size)
    return (padded - length) + (-(padded - patch_size)) % stride


def _spread(patch_values: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """Sums each patch's value over the pixels it covers (separable transposed box filter)."""
    k = patch_values.shape[1]
    ones_y = patch_values.new_ones(k, 1, patch_size, 1)
    ones_x = patch_values.new_ones(k, 1, 1, patch_size)
    out = F.conv_transpose2d(patch_values, ones_y, stride=(stride, 1), groups=k)
    return F.conv_transpose2d(out, ones_x, stride=(1, stride), groups=k)


def classify_unfolded(
    net: nn.Module, x: torch.Tensor, stride: int, batch_patches: int
) -> torch.Tensor:
    """Logits (B, K, ny, nx) of any patch classifier on every grid patch of x (B, 1, H, W).

    Patches are unfolded at ``stride`` (row-major grid, corner (i * stride, j * stride)) and
    classified ``batch_patches`` at a time.
    """
    n = net.patch_size
    ny, nx = (x.shape[2] - n) // stride + 1, (x.shape[3] - n) // stride + 1
    patches = F.unfold(x, n, stride=stride).transpose(1, 2).reshape(-1, 1, n, n)  # (B*L, 1, n, n)
    logits = torch.cat([net(chunk) for chunk in patches.split(batch_patches)])
    return logits.reshape(x.shape[0], ny, nx, -1).permute(0, 3, 1, 2)


def patch_logits(net: nn.Module, stride: int, batch_patches: int):
    """A function x (B, 1, H, W) -> logits (B, K, ny, nx) over the patch grid at ``stride``.

    A :class:`StackedSparseAutoencoder` runs as its fully convolutional twin; any other patch
    classifier with a ``patch_size`` attribute, input (B, 1, n, n) and output (B, K), classifies
    the unfolded patches ``batch_patches`` at a time (put it in eval mode first).
    """
    if isinstance(net, StackedSparseAutoencoder):
        return to_fully_convolutional(net, stride).to(next(net.parameters()).device)
    return lambda x: classify_unfolded(net, x, stride, batch_patches)


@torch.inference_mode()
def segment_slices(
    net: nn.Module,
    slices: np.ndarray,
    stride: int,
    batch_slices: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
    batch_patches: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of every pixel of a stack of slices.

    Args:
        net: trained patch classifier (see :func:`patch_logits`).
        slices: (S, H, W) float32 preprocessed slices.
        stride: patch grid step in pixels (1 = a patch centred on every pixel).
        batch_slices: slices per forward pass (bounds memory).
        device: where to run.
        batch_patches: patches per forward pass for classifiers without a convolutional twin.

    Returns:
        (pixel probabilities (S, K, H, W), patch probabilities (S, K, ny, nx)) as float32, where
        K = 1 (probability of the positive class) for a binary network, else the class count;
        the patch grid starts at (0, 0) and row/col i is the patch with corner i * stride.
    """
    n = net.patch_size
    was_training = net.training
    net.eval().to(device)
    classify = patch_logits(net, stride, batch_patches)
    _, height, width = slices.shape
    pad_y, pad_x = _pad_amount(height, n, stride), _pad_amount(width, n, stride)
    pixel_chunks, patch_chunks, counts = [], [], None
    batches = range(0, len(slices), batch_slices)
    for start in tqdm(batches, desc="segment", disable=not progress, leave=False):
        x = torch.from_numpy(slices[start : start + batch_slices]).to(device)[:, None]
        mode = "reflect" if pad_y < height and pad_x < width else "replicate"
        x = F.pad(x, (0, pad_x, 0, pad_y), mode=mode)
        logits = classify(x)
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
        if counts is None:
            counts = _spread(torch.ones_like(probs[:1, :1]), n, stride)
        pixel = _spread(probs, n, stride) / counts
        pixel_chunks.append(pixel[:, :, :height, :width].float().cpu().numpy())
        patch_chunks.append(probs.float().cpu().numpy())
    net.train(was_training)
    return np.concatenate(pixel_chunks), np.concatenate(patch_chunks)


@torch.inference_mode()
def segment_slices_pixelwise(net: nn.Module, slices: np.ndarray, batch_slices: int,
                             device: str | torch.device = "cpu",
                             context_offset: int = 0) -> np.ndarray:  # fmt: skip
    """Class probabilities (S, K, H, W) float32 of a pixel-wise net on (S, H, W) slices.

    ``net`` maps (B, C, H, W) to logits (B, K, H, W), or to a tuple whose first item they are
    (D-TVNet's contour branch is ignored). With ``context_offset`` k > 0 (SAU-Net) each slice
    is fed with its neighbours i - k and i + k (edges replicated) as three channels.
    K = 1: sigmoid; else softmax (BASELINES §3).
    """
    was_training = net.training
    net.eval().to(device)
    volume = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    last, chunks = len(volume) - 1, []
    for start in range(0, len(volume), batch_slices):
        index = torch.arange(start, min(start + batch_slices, len(volume)))
        if context_offset:
            picks = [(index + d).clamp(0, last) for d in (-context_offset, 0, context_offset)]
            x = torch.stack([volume[p] for p in picks], dim=1)
        else:
            x = volume[index][:, None]
        logits = net(x.to(device))
        logits = logits[0] if isinstance(logits, tuple) else logits
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
        chunks.append(probs.float().cpu().numpy())
    net.train(was_training)
    return np.concatenate(chunks)


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class map from probabilities (S, K, H, W): threshold for K = 1, argmax otherwise."""
    if probs.shape[1] == 1:
        return (probs[:, 0] >= threshold).astype(np.uint8)
    return probs.argmax(axis=1).astype(np.uint8)


def calibrate_threshold(
    probs: list[np.ndarray], truths: list[np.ndarray], thresholds: np.ndarray
) -> tuple[float, float]:
    """The threshold that maximises pooled pixel Dice over validation volumes.

    Balancing trains the network on a 0.4 positive prior that the scans do not have, so the
    0.5 decision threshold is not the best one; it is chosen on the validation split only.

    Args:
        probs: per volume, positive-class probabilities (any shape).
        truths: per volume, boolean truth of the same shape.
        thresholds: candidate thresholds, increasing.

    Returns:
        (best threshold, its pooled validation Dice).
    """
    edges = np.concatenate([thresholds, [np.inf]])
    pos = sum(np.histogram(p[t], bins=edges)[0] for p, t in zip(probs, truths, strict=True))
    neg = sum(np.histogram(p[~t], bins=edges)[0] for p, t in zip(probs, truths, strict=True))
    n_pos = sum(int(t.sum()) for t in truths)
    tp = np.cumsum(pos[::-1])[::-1]  # pixels >= each threshold
    fp = np.cumsum(neg[::-1])[::-1]
    dice = 2 * tp / np.maximum(2 * tp + fp + (n_pos - tp), 1)
    best = int(np.argmax(dice))
    return float(thresholds[best]), float(dice[best])


def postprocess(labels: np.ndarray, min_size: int, keep_largest: int | None,
                opening_radius: int) -> np.ndarray:  # fmt: skip
    """Optional clean-up of a class map, per foreground class, in 3D.

    Args:
        labels: (S, H, W) class map.
        min_size: remove connected components smaller than this many voxels (0: keep all).
        keep_largest: keep only this many largest components per class (None: all).
        opening_radius: binary opening within each slice with a disk of this radius (0: none).
    """
    out = np.zeros_like(labels)
    for c in np.unique(labels[labels > 0]):
        mask = labels == c
        if opening_radius > 0:
            footprint = morphology.disk(opening_radius)[None]
            mask = morphology.binary_opening(mask, footprint)
        if min_size > 0 or keep_largest:
            components = measure.label(mask)
            sizes = np.bincount(components.ravel())[1:]
            keep = np.flatnonzero(sizes >= min_size) + 1
            if keep_largest:
                keep = keep[np.argsort(sizes[keep - 1])[::-1][:keep_largest]]
            mask = np.isin(components, keep)
        out[mask] = c
    return out
