"""Dense segmentation of slices: PENN's patch classifier over the inference grid, or a pixel-wise
network, in batches of slices, with the copy back to the host overlapping the next batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from penn.inference.engines import dense_logits
from penn.inference.readout import centre_readout, grid_padding, spread_mean
from penn.patches.context import context_image, gaussian_blur

__all__ = ["AGGREGATES", "segment_slices", "segment_slices_pixelwise"]

AGGREGATES = ("mean", "center")  # patch grid -> pixel probabilities (see segment_slices)


@torch.inference_mode()
def segment_slices(
    net: nn.Module,
    slices: np.ndarray,
    stride: int,
    batch_slices: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
    batch_patches: int = 4096,
    engine: str = "auto",
    chunk_positions: int = 2048,
    threads: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    aggregate: str = "mean",
    center_sigma: float = 0.0,
    pin_memory: bool = True,
    patches: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities of every pixel of a stack of slices.

    Memory beyond the returned arrays is bounded by ``batch_slices`` slices (and, on the
    CPU, ``chunk_positions`` patches per thread), whatever the number of slices. On a GPU the
    results of one batch are copied back into page-locked buffers while the next batch runs, so
    transfers and host copies overlap the network (two batches of buffers, reused).

    Args:
        net: trained patch classifier (see :func:`patch_logits`).
        slices: (S, H, W) float32 preprocessed slices.
        stride: patch grid step in pixels (1 = a patch centred on every pixel).
        batch_slices: slices per forward pass (bounds memory).
        device: where to run.
        batch_patches: patches per forward pass for classifiers without a convolutional twin.
        engine: ``auto`` (a :class:`StackedSparseAutoencoder` runs band by band on the CPU
            (``rows``: the first layer as a convolution per band, the later ones as matrix
            products), as its convolutional twin with the first layer over stacked rows on a GPU
            (``fcn_stacked``); other classifiers as unfolded patches), or one of ``rows``,
            ``fcn`` (the twin with a one-channel n x n first layer), ``fcn_stacked``, ``unfold``
            to force one.
        chunk_positions: patches per band of the ``rows`` engine (a band's activations should
            fit in a core's cache).
        threads: threads of the ``rows`` engine (default: ``torch.get_num_threads()``).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the ``fcn`` engine under autocast on a
            GPU (default: float32 throughout).
        aggregate: how a pixel's probability comes from the patch grid (:data:`AGGREGATES`):
            ``mean`` (the paper: the mean over the patches that cover it) or ``center`` (the
            patch centred on it, linearly interpolated between grid points when ``stride`` > 1;
            the read-out that matches the centre-pixel labelling rule). For ``center`` the
            slice is reflect-padded by n // 2 so that border pixels have a centred patch too,
            and ``stride`` must divide n // 2.
        center_sigma: with ``center``, a Gaussian of this standard deviation (pixels) over
            the centre read-out: a mean of the nearby patches weighted by the distance of their
            centres (0: none; as sigma grows it approaches a smooth version of ``mean``).
        pin_memory: on a GPU, copy each batch through page-locked memory (PyTorch's caching
            host allocator; 0 to 8 % more slices/s than without on an H200, docs/results/gpu).
        patches: also return the patch-grid probabilities (False: None in their place, one
            full-size map less to copy back at stride 1).

    Returns:
        (pixel probabilities (S, K, H, W), patch probabilities (S, K, ny, nx) or None) as
        float32, where K = 1 (probability of the positive class) for a binary network, else the
        class count;
        the patch grid starts at (0, 0) and row/col i is the patch with corner i * stride.
    """
    n, device = net.patch_size, torch.device(device)
    was_training = net.training
    net.eval().to(device)
    classify = dense_logits(
        net, stride, device, engine, batch_patches, chunk_positions, threads, autocast_dtype
    )
    n_slices, height, width = slices.shape
    if n_slices == 0:
        raise ValueError("segment_slices: no slices given (shape (0, H, W))")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}: use one of {AGGREGATES}")
    ny, nx, pads = grid_padding(height, width, n, stride, aggregate)
    head = n // 2
    mode = "reflect" if max(pads[:2]) < width and max(pads[2:]) < height else "replicate"
    dilation = getattr(net, "context_dilation", 0)
    first_centre = 0 if aggregate == "center" else n // 2  # centre pixel of grid patch 0
    last_centre = ((ny - 1) * stride + first_centre, (nx - 1) * stride + first_centre)
    out: list[np.ndarray] | None = None
    copy_back = _CopyBack(device)
    batches = range(0, n_slices, batch_slices)
    for start in tqdm(batches, desc="segment", disable=not progress, leave=False):
        batch = torch.from_numpy(np.ascontiguousarray(slices[start : start + batch_slices]))
        if pin_memory and device.type == "cuda":
            batch = batch.pin_memory()
        x = batch.to(device, non_blocking=pin_memory)[:, None]
        context = None
        if dilation:  # the context patches of the same grid (penn.patches.context)
            context = context_image(x, dilation, n, first_centre, last_centre)
        x = F.pad(x, pads, mode=mode)
        logits = classify(x, context)
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
        if aggregate == "center":
            pixel = gaussian_blur(centre_readout(probs, stride, height, width), center_sigma)
            probs = probs[:, :, head // stride :, head // stride :]  # the unpadded patch grid
        else:
            pixel = spread_mean(probs, n, stride, height, width)
        maps = [pixel, probs.float()] if patches else [pixel]
        if out is None:
            out = [np.empty((n_slices, *m.shape[1:]), dtype=np.float32) for m in maps]
        copy_back.put(maps, [o[start : start + len(batch)] for o in out])
    copy_back.finish()
    net.train(was_training)
    return out[0], out[1] if patches else None


class _CopyBack:
    """Copies device tensors into numpy arrays; on CUDA asynchronously, overlapping the next batch.

    Each batch's maps go to page-locked staging tensors with ``non_blocking`` copies and an event;
    the staging is copied into the numpy targets only when its slot comes round again (two
    slots) or at :meth:`finish`, so the host never waits for the batch that is still running.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.slots: list[list[torch.Tensor] | None] = [None, None]
        self.pending: list[tuple | None] = [None, None]
        self.turn = 0

    def put(self, maps: list[torch.Tensor], targets: list[np.ndarray]) -> None:
        if not self.cuda:
            for m, t in zip(maps, targets, strict=True):
                t[...] = m.float().numpy()
            return
        slot = self.turn
        self.turn ^= 1
        self._drain(slot)
        staging = self.slots[slot]
        if staging is None or any(
            s.shape[1:] != m.shape[1:] or len(s) < len(m)
            for s, m in zip(staging, maps, strict=True)
        ):
            staging = [torch.empty(m.shape, dtype=torch.float32, pin_memory=True) for m in maps]
            self.slots[slot] = staging
        views = [s[: len(m)] for s, m in zip(staging, maps, strict=True)]
        for v, m in zip(views, maps, strict=True):
            v.copy_(m, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending[slot] = (event, views, targets)

    def _drain(self, slot: int) -> None:
        if self.pending[slot] is None:
            return
        event, views, targets = self.pending[slot]
        event.synchronize()
        for v, t in zip(views, targets, strict=True):
            t[...] = v.numpy()
        self.pending[slot] = None

    def finish(self) -> None:
        """Waits for the copies still in flight, oldest first."""
        for slot in (self.turn, self.turn ^ 1):
            self._drain(slot)


@torch.inference_mode()
def _segment_chunk(net, volume, start: int, stop: int, offset: int, device, layout) -> np.ndarray:
    """Probabilities of slices ``start:stop`` from ``net.segment_volume`` on them and their
    neighbours; at the volume's ends its own edge replication applies, as for the triplets."""
    lo, hi = max(start - offset, 0), min(stop + offset, len(volume))
    x = volume[lo:hi, None].to(device).contiguous(memory_format=layout)
    logits = net.segment_volume(x, offset)[start - lo : stop - lo]
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
    return probs.float().cpu().numpy()


@torch.inference_mode()
def segment_slices_pixelwise(
    net: nn.Module,
    slices: np.ndarray,
    batch_slices: int,
    device: str | torch.device = "cpu",
    context_offset: int = 0,
    progress: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Class probabilities (S, K, H, W) float32 of a pixel-wise net on (S, H, W) slices.

    ``net`` maps (B, C, H, W) to logits (B, K, H, W), or to a tuple whose first item they are
    (D-TVNet's contour branch is ignored). With ``context_offset`` k > 0 (SAU-Net) each slice
    is fed with its neighbours i - k and i + k (edges replicated) as three channels.
    K = 1: sigmoid; else softmax, as for every baseline. ``progress`` shows a bar over the batches.
    A net with ``segment_volume(slices, offset)`` (SAU-Net) computes each slice's features once
    per batch instead of once per triplet it is part of: the batch's slices and the ``k`` beyond
    each end go through it, and the batch's logits are kept (identical to the triplets').
    ``channels_last`` runs the net in channels-last memory layout (the same probabilities,
    faster convolutions on CPU); the net is given back in its usual layout.
    """
    was_training = net.training
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net.eval().to(device, memory_format=layout)
    volume = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    last, chunks = len(volume) - 1, []
    starts = range(0, len(volume), batch_slices)
    for start in tqdm(starts, desc="segment", disable=not progress, leave=False):
        stop = min(start + batch_slices, len(volume))
        if context_offset and hasattr(net, "segment_volume"):
            chunks.append(_segment_chunk(net, volume, start, stop, context_offset, device, layout))
            continue
        index = torch.arange(start, stop)
        if context_offset:
            picks = [(index + d).clamp(0, last) for d in (-context_offset, 0, context_offset)]
            x = torch.stack([volume[p] for p in picks], dim=1)
        else:
            x = volume[index][:, None]
        logits = net(x.to(device).contiguous(memory_format=layout))
        logits = logits[0] if isinstance(logits, tuple) else logits
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
        chunks.append(probs.float().cpu().numpy())
    net.to(memory_format=torch.contiguous_format).train(was_training)
    return np.concatenate(chunks)
