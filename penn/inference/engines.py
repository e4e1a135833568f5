"""Engines that classify every patch of a slice: band by band on the CPU, fully convolutional on a
GPU, or patch by patch (unfold) for any network.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from penn.inference.fcn import to_fully_convolutional
from penn.models.sparse_ae import StackedSparseAutoencoder

__all__ = ["ENGINES", "classify_unfolded", "patch_logits"]

log = logging.getLogger(__name__)


_POOL: dict = {}  # the worker threads of parallel, kept warm between calls: {(pid, n): pool}


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads with one intra-op thread each, made once per process.

    New threads cost milliseconds before their first product (OpenMP and oneDNN set up per
    thread), which is a third of a 512 x 512 slice at stride 8. A forked child (a DataLoader
    worker) gets a pool of its own, since the parent's threads do not exist in it.
    """
    key = (os.getpid(), threads)
    pool = _POOL.get(key)
    if pool is None:
        pool = _POOL[key] = ThreadPoolExecutor(
            threads,
            thread_name_prefix="penn-dense",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
    return pool


def parallel(jobs: list, work, threads: int) -> None:
    """Runs ``work(job, scratch)`` for every job on ``threads`` threads, one intra-op thread each.

    Jobs are taken from a shared queue, so a core slowed down by another process only slows its
    own thread (a single GEMM on two intra-op threads stalls at every barrier instead). Each
    thread keeps its own ``scratch`` dict of reusable buffers for the call. The process-wide
    thread setting is restored afterwards.
    """
    if threads <= 1 or len(jobs) <= 1:
        scratch: dict = {}
        for job in jobs:
            work(job, scratch)
        return
    queue, lock = iter(jobs), threading.Lock()

    def loop() -> None:
        scratch: dict = {}
        with torch.inference_mode():
            while True:
                with lock:
                    job = next(queue, None)
                if job is None:
                    return
                work(job, scratch)

    before = torch.get_num_threads()
    pool = thread_pool(threads)
    try:
        for future in [pool.submit(loop) for _ in range(min(threads, len(jobs)))]:
            future.result()
    finally:
        torch.set_num_threads(before)  # the pool's initializer sets the process-wide default


class RowsEngine:
    """A stacked sparse autoencoder as matrix products over bands of patch rows (CPU).

    One band holds about ``chunk_positions`` patches (whole grid rows): the first layer is a
    convolution over the band's rows of the slice, and every later layer one ``addmm`` into a
    reused buffer followed by an in-place sigmoid, so a band's activations stay in cache.
    """

    def __init__(
        self,
        net: StackedSparseAutoencoder,
        stride: int,
        chunk_positions: int,
        threads: int,
    ):
        self.n, self.stride = net.patch_size, stride
        self.dilation, self.channels = net.context_dilation, net.in_channels
        self.chunk_positions, self.threads = max(1, int(chunk_positions)), max(1, int(threads))
        linears = [stage.encoder for stage in net.stages] + [net.head]
        self.layers = [(lin.weight.detach().t().contiguous(), lin.bias.detach()) for lin in linears]
        first = linears[0].weight.detach()
        kernels = first.reshape(first.shape[0], self.channels, self.n, self.n)
        # (h, 1, n, n) kernels of the patch and, with a context patch, of its context
        self.conv_weight, *context = (
            kernels[:, c : c + 1].contiguous(memory_format=torch.channels_last)
            for c in range(self.channels)
        )
        self.context_weight = context[0] if context else None
        self.n_outputs = linears[-1].out_features

    def __call__(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K, ny, nx) of every grid patch of x (B, 1, H, W) (and of the context image
        (B, 1, H', W') for the same grid, when the network has a context patch)."""
        n, s = self.n, self.stride
        ny, nx = (x.shape[2] - n) // s + 1, (x.shape[3] - n) // s + 1
        if (context is None) != (self.dilation == 0):
            raise ValueError("a context image goes with, and only with, a context-patch network")
        x = x.contiguous()
        context = None if context is None else context.contiguous()
        out = x.new_empty(x.shape[0], ny, nx, self.n_outputs)
        # bands of equal height (at most chunk_positions patches), a multiple of the thread
        # count per slice where there are rows enough, so that no thread waits for a short band
        n_bands = -(-ny // max(1, self.chunk_positions // nx))
        if self.threads > 1 and ny >= self.threads:
            n_bands = -(-n_bands // self.threads) * self.threads
        edges = np.linspace(0, ny, n_bands + 1).round().astype(int)
        bands = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
        jobs = [(b, r0, r1) for b in range(x.shape[0]) for r0, r1 in bands]
        work = lambda job, scratch: self._band(x, context, out, *job, scratch)  # noqa: E731
        parallel(jobs, work, self.threads)
        return out.permute(0, 3, 1, 2)

    def _buffer(self, scratch: dict, name: str, rows: int, cols: int) -> torch.Tensor:
        buf = scratch.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = scratch[name] = torch.empty(rows, cols)
        return buf[:rows]

    def _band(self, x, context, out, b: int, r0: int, r1: int, scratch: dict) -> None:
        n, s, d = self.n, self.stride, self.dilation
        nx = out.shape[2]
        m = (r1 - r0) * nx
        (w0, b0), *rest = self.layers
        band = x[b : b + 1, :, r0 * s : (r1 - 1) * s + n]
        z = F.conv2d(band, self.conv_weight, b0, stride=s)
        if context is not None:
            band = context[b : b + 1, :, r0 * s : (r1 - 1) * s + d * (n - 1) + 1]
            zc = F.conv2d(band, self.context_weight, stride=s, dilation=d)
            z = z + zc[:, :, :, :nx]
        h = z.permute(0, 2, 3, 1).reshape(m, -1)
        h.sigmoid_()
        for i, (w, bias) in enumerate(rest[:-1]):
            h = torch.addmm(bias, h, w, out=self._buffer(scratch, f"h{1 + i % 2}", m, w.shape[1]))
            h.sigmoid_()
        w, bias = rest[-1]
        torch.addmm(bias, h, w, out=out[b, r0:r1].view(m, -1))


ENGINES = ("auto", "rows", "fcn", "fcn_stacked", "unfold")


def classify_unfolded(
    net: nn.Module,
    x: torch.Tensor,
    stride: int,
    batch_patches: int,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (B, K, ny, nx) of any patch classifier on every grid patch of x (B, 1, H, W).

    Patches are unfolded at ``stride`` (row-major grid, corner (i * stride, j * stride)) and
    classified ``batch_patches`` at a time. A network with a context patch
    (``context_dilation`` d > 0) also gets the context image of the same grid
    (:func:`penn.patches.context.context_image`), unfolded with dilation d as the second channel.
    """
    n, d = net.patch_size, getattr(net, "context_dilation", 0)
    if (context is None) != (d == 0):
        raise ValueError("a context image goes with, and only with, a context-patch network")
    ny, nx = (x.shape[2] - n) // stride + 1, (x.shape[3] - n) // stride + 1
    patches = F.unfold(x, n, stride=stride).transpose(1, 2).reshape(-1, 1, n, n)  # (B*L, 1, n, n)
    if context is not None:
        cy, cx = ((size - d * (n - 1) - 1) // stride + 1 for size in context.shape[2:])
        samples = F.unfold(context, n, dilation=d, stride=stride).view(-1, n * n, cy, cx)
        samples = samples[:, :, :ny, :nx].flatten(2).transpose(1, 2).reshape(-1, 1, n, n)
        patches = torch.cat([patches, samples], dim=1)  # (B*L, 2, n, n)
    logits = torch.cat([net(chunk) for chunk in patches.split(batch_patches)])
    return logits.reshape(x.shape[0], ny, nx, -1).permute(0, 3, 1, 2)


def patch_logits(net: nn.Module, stride: int, batch_patches: int):
    """A function (x (B, 1, H, W), context=None) -> logits (B, K, ny, nx) over the patch grid.

    A :class:`StackedSparseAutoencoder` runs as its fully convolutional twin; any other patch
    classifier with a ``patch_size`` attribute, input (B, 1, n, n) and output (B, K), classifies
    the unfolded patches ``batch_patches`` at a time (put it in eval mode first).
    """
    if isinstance(net, StackedSparseAutoencoder):
        return to_fully_convolutional(net, stride).to(next(net.parameters()).device)
    return lambda x, context=None: classify_unfolded(net, x, stride, batch_patches, context)


def dense_logits(
    net: nn.Module,
    stride: int,
    device: torch.device,
    engine: str,
    batch_patches: int,
    chunk_positions: int,
    threads: int | None,
    autocast_dtype: torch.dtype | None,
):
    """The function (x (B, 1, H, W), context image or None) -> logits (B, K, ny, nx) that
    ``engine`` names."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: use one of {ENGINES}")
    is_penn = isinstance(net, StackedSparseAutoencoder)
    if engine == "auto":
        # on a GPU the stacked-rows first layer beat the one-channel convolution (gpu bench)
        engine = "unfold" if not is_penn else "fcn_stacked" if device.type != "cpu" else "rows"
    if engine != "unfold" and not is_penn:
        raise ValueError(f"engine={engine!r} needs a StackedSparseAutoencoder, got {type(net)}")
    if engine == "rows":
        if device.type != "cpu":
            raise ValueError(f"engine={engine!r} runs on the CPU; use 'fcn' on a GPU")
        threads = torch.get_num_threads() if threads is None else threads
        return RowsEngine(net, stride, chunk_positions, threads)
    if engine == "unfold":
        return lambda x, context=None: classify_unfolded(net, x, stride, batch_patches, context)
    fcn = to_fully_convolutional(net, stride, stacked_rows=engine == "fcn_stacked")
    fcn = fcn.to(device, memory_format=torch.channels_last)

    def run(x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if context is not None:
            context = context.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return fcn(x, context).float()

    return run
