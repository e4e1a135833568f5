"""Dense segmentation with the fully convolutional twin of a trained patch network.

A patch classifier whose first layer sees the n x n patch and whose other layers act on that
layer's codes is exactly a network of one n x n convolution followed by 1 x 1 convolutions.
Run at a stride s over a whole slice it classifies every patch of the grid in one pass; each
pixel then takes the mean class probability of the patches that cover it (the paper's step 8).
Other patch classifiers (e.g. OP-convNet) classify the same grid of patches, unfolded in batches.
A network with a context patch (:mod:`penn.context`) also gets the context image of the grid's
centres; the context half of its first layer is a convolution of dilation d over that image.

Speed (docs/results/bench.json, ``make bench``): on a CPU the network runs as plain matrix
products over bands of patch rows, one band per thread and one intra-op thread each, so almost all
of the time is spent in GEMMs at the machine's matrix-product rate; on a GPU it runs as the
convolutional twin (channels-last, the first layer over n stacked rows, 1.4-1.8x faster than the
one-channel convolution on an H200; optional autocast). Pixel probabilities come from cumulative
sums of the patch grid (a summed-area table), not from a transposed convolution.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage import measure, morphology
from torch import nn
from tqdm.auto import tqdm

from penn.context import context_image, gaussian_blur
from penn.models.sparse_ae import StackedSparseAutoencoder

__all__ = [
    "FullyConvolutional",
    "to_fully_convolutional",
    "patch_logits",
    "classify_unfolded",
    "segment_slices",
    "ENGINES",
    "AGGREGATES",
    "segment_slices_pixelwise",
    "decide",
    "calibrate_threshold",
    "postprocess",
    "smooth_across_slices",
]

log = logging.getLogger(__name__)


class StackedRowsConv(nn.Module):
    """The one-channel n x n first convolution, computed as a 1 x n convolution over n channels.

    Channel dy holds the slice moved up by dy rows (one ``unfold`` over the rows at the stride),
    so the kernel's rows become input channels: the same products, summed in another order. On an
    H200 it ran 1.4-1.8x faster than the one-channel convolution at stride 1 (docs/results/gpu),
    probably because cuDNN's tensor-core kernels want channel counts in multiples of 8 (not
    profiled). The stacked input is n times the slice (32 MB for a 512 x 512 float32 slice at
    stride 1).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        (n, _), (stride, _) = conv.kernel_size, conv.stride
        self.n, self.stride = n, stride
        # (h, 1, n [dy], n [dx]) -> (h, n [dy], 1, n [dx])
        self.weight = nn.Parameter(conv.weight.detach().permute(0, 2, 1, 3).contiguous())
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, h, ny, nx)
        rows = x[:, 0].unfold(1, self.n, self.stride)  # (B, ny, W, n): row i * s + dy
        rows = rows.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(rows, self.weight, self.bias, stride=(1, self.stride))


class FullyConvolutional(nn.Module):
    """A patch network's convolutional twin: the first layer over the slice (plus, with a context
    patch, a dilated convolution over the context image), then 1 x 1 layers.

    ``forward(x (B, 1, H, W), context (B, 1, H', W') or None)`` -> logits (B, K, ny, nx); the
    context image is :func:`penn.context.context_image` for the same grid of centres.
    """

    def __init__(self, first: nn.Module, context: nn.Conv2d | None, rest: nn.Sequential):
        super().__init__()
        self.first, self.context, self.rest = first, context, rest

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        z = self.first(x)
        if self.context is not None:
            if context is None:
                raise ValueError("this network takes a context image (penn.context.context_image)")
            z = z + self.context(context)[:, :, : z.shape[2], : z.shape[3]]
        return self.rest(z)


def to_fully_convolutional(
    net: StackedSparseAutoencoder, stride: int, stacked_rows: bool = False
) -> FullyConvolutional:
    """Rewrites the patch network as convolutions: n x n (stride s), then 1 x 1 layers.

    The first encoder's weight (h, n*n) is reshaped to (h, 1, n, n): patches are flattened row by
    row, which is the layout of a convolution kernel. With a context patch its second n*n
    columns become a convolution of dilation d over the context image. Output: logits
    (B, n_outputs, ny, nx). ``stacked_rows``: the first layer as :class:`StackedRowsConv` (the
    same function; faster on a GPU).
    """
    n, d = net.patch_size, net.context_dilation
    first = net.stages[0].encoder
    hidden = first.out_features
    weight = first.weight.data.view(hidden, net.in_channels, n, n)
    conv = nn.Conv2d(1, hidden, n, stride=stride)
    conv.weight.data.copy_(weight[:, :1])
    conv.bias.data.copy_(first.bias.data)
    context = None
    if d > 0:
        context = nn.Conv2d(1, hidden, n, stride=stride, dilation=d, bias=False)
        context.weight.data.copy_(weight[:, 1:])
    layers: list[nn.Module] = [nn.Sigmoid()]
    for stage in net.stages[1:]:
        lin = stage.encoder
        layer = nn.Conv2d(lin.in_features, lin.out_features, 1)
        layer.weight.data.copy_(lin.weight.data[:, :, None, None])
        layer.bias.data.copy_(lin.bias.data)
        layers += [layer, nn.Sigmoid()]
    head = nn.Conv2d(net.head.in_features, net.head.out_features, 1)
    head.weight.data.copy_(net.head.weight.data[:, :, None, None])
    head.bias.data.copy_(net.head.bias.data)
    first_layer = StackedRowsConv(conv) if stacked_rows else conv
    return FullyConvolutional(first_layer, context, nn.Sequential(*layers, head)).eval()


def _pad_amount(length: int, patch_size: int, stride: int) -> int:
    """Pixels to add so that the stride grid reaches the last pixel."""
    padded = max(length, patch_size)
    return (padded - length) + (-(padded - patch_size)) % stride


def _spread_axis(values: torch.Tensor, dim: int, patch_size: int, stride: int) -> torch.Tensor:
    """Along ``dim``, sums the values of the patches that cover each pixel.

    ``values`` has one entry per patch along ``dim`` (L of them, corners at ``i * stride``); the
    result has one per pixel, (L - 1) * stride + patch_size. Differences of a cumulative sum (the
    1D summed-area table) in float64 replace a box filter. When the stride divides the patch
    size, every pixel of a stride-wide block is covered by the same patches: the sums are taken
    per block and the caller repeats them (see :func:`_spread_mean`).
    """
    length = values.shape[dim]
    table = torch.cat([torch.zeros_like(values.narrow(dim, 0, 1)), values.cumsum(dim)], dim)
    if patch_size % stride == 0:
        pos = torch.arange(length + patch_size // stride - 1, device=values.device)
        lo = (pos - patch_size // stride + 1).clamp(min=0)
    else:
        pos = torch.arange((length - 1) * stride + patch_size, device=values.device) // stride
        lo = (torch.arange(pos.numel(), device=values.device) - patch_size) // stride + 1
        lo = lo.clamp(min=0)
    hi = pos.clamp(max=length - 1) + 1
    return table.index_select(dim, hi) - table.index_select(dim, lo)


def _spread_mean(
    patch_values: torch.Tensor, patch_size: int, stride: int, height: int, width: int
) -> torch.Tensor:
    """Mean value of the patches covering each pixel: (B, K, ny, nx) -> (B, K, height, width).

    Separable sums from summed-area tables (:func:`_spread_axis`) divided by the number of
    covering patches; when the stride divides the patch size, the block means are repeated
    ``stride`` times along each axis.
    """
    ny, nx = patch_values.shape[2:]
    v = patch_values.double()
    sums = _spread_axis(_spread_axis(v, 2, patch_size, stride), 3, patch_size, stride)
    count_y = _spread_axis(v.new_ones(ny), 0, patch_size, stride)
    count_x = _spread_axis(v.new_ones(nx), 0, patch_size, stride)
    mean = (sums / (count_y[:, None] * count_x[None, :])).float()
    if patch_size % stride == 0 and stride > 1:  # each block mean over its stride x stride pixels
        b, k, by, bx = mean.shape
        mean = mean[:, :, :, None, :, None].expand(b, k, by, stride, bx, stride)
        mean = mean.reshape(b, k, by * stride, bx * stride)
    return mean[:, :, :height, :width]


def _centre_readout(grid: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """Pixel values from grid values at pixels (i * stride, j * stride), bilinear in between."""
    if stride > 1:
        size = ((grid.shape[2] - 1) * stride + 1, (grid.shape[3] - 1) * stride + 1)
        grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=True)
    return grid[:, :, :height, :width]


_POOL: dict = {}  # the worker threads of _parallel, kept warm between calls: {(pid, n): pool}


def _thread_pool(threads: int) -> ThreadPoolExecutor:
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


def _parallel(jobs: list, work, threads: int) -> None:
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
    pool = _thread_pool(threads)
    try:
        for future in [pool.submit(loop) for _ in range(min(threads, len(jobs)))]:
            future.result()
    finally:
        torch.set_num_threads(before)  # the pool's initializer sets the process-wide default


class _RowsEngine:
    """A stacked sparse autoencoder as matrix products over bands of patch rows (CPU).

    One band holds about ``chunk_positions`` patches (whole grid rows): its patches are copied out
    of the slice as a (positions, n*n) matrix (im2col through a strided view, or the first layer
    as a convolution), and every layer is one ``addmm`` into a reused buffer followed by an
    in-place sigmoid, so a band's activations stay in cache.
    """

    def __init__(
        self,
        net: StackedSparseAutoencoder,
        stride: int,
        chunk_positions: int,
        threads: int,
        first_layer: str,
    ):
        if first_layer not in ("gemm", "conv"):
            raise ValueError(f"first_layer={first_layer!r}: use 'gemm' or 'conv'")
        self.n, self.stride, self.first_layer = net.patch_size, stride, first_layer
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
        _parallel(jobs, work, self.threads)
        return out.permute(0, 3, 1, 2)

    def _buffer(self, scratch: dict, name: str, rows: int, cols: int) -> torch.Tensor:
        buf = scratch.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = scratch[name] = torch.empty(rows, cols)
        return buf[:rows]

    def _band(self, x, context, out, b: int, r0: int, r1: int, scratch: dict) -> None:
        n, s, d = self.n, self.stride, self.dilation
        nx, width = out.shape[2], x.shape[3]
        m = (r1 - r0) * nx
        (w0, b0), *rest = self.layers
        if self.first_layer == "gemm":
            cols = self._buffer(scratch, "cols", m, self.channels * n * n)
            patches = cols.view(r1 - r0, nx, self.channels, n, n)
            band = x[b, 0, r0 * s :].as_strided((r1 - r0, nx, n, n), (s * width, s, width, 1))
            patches[:, :, 0].copy_(band)
            if context is not None:  # the context samples: the same grid, d pixels apart
                cw = context.shape[3]
                band = context[b, 0, r0 * s :].as_strided(
                    (r1 - r0, nx, n, n), (s * cw, s, d * cw, d)
                )
                patches[:, :, 1].copy_(band)
            h = torch.addmm(b0, cols, w0, out=self._buffer(scratch, "h0", m, w0.shape[1]))
        else:
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


ENGINES = ("auto", "rows", "rows_conv", "fcn", "fcn_stacked", "unfold")
AGGREGATES = ("mean", "center")  # patch grid -> pixel probabilities (see segment_slices)


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
    (:func:`penn.context.context_image`), unfolded with dilation d as the second channel.
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


def _dense_logits(
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
        # on 2 CPU cores the band-wise first-layer convolution beat im2col + GEMM (bench.json)
        # on a GPU the stacked-rows first layer beat the one-channel convolution (gpu bench)
        engine = "unfold" if not is_penn else "fcn_stacked" if device.type != "cpu" else "rows_conv"
    if engine != "unfold" and not is_penn:
        raise ValueError(f"engine={engine!r} needs a StackedSparseAutoencoder, got {type(net)}")
    if engine in ("rows", "rows_conv"):
        if device.type != "cpu":
            raise ValueError(f"engine={engine!r} runs on the CPU; use 'fcn' on a GPU")
        threads = torch.get_num_threads() if threads is None else threads
        first_layer = "gemm" if engine == "rows" else "conv"
        return _RowsEngine(net, stride, chunk_positions, threads, first_layer)
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
            (``rows_conv``), as its convolutional twin with the first layer over stacked rows
            on a GPU (``fcn_stacked``); other classifiers as unfolded patches), or one of
            ``rows`` (first layer as im2col + GEMM), ``rows_conv`` (first layer as a convolution
            per band), ``fcn`` (the twin with a one-channel n x n first layer),
            ``fcn_stacked``, ``unfold`` to force one.
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
    n = net.patch_size
    device = torch.device(device)
    was_training = net.training
    net.eval().to(device)
    classify = _dense_logits(
        net, stride, device, engine, batch_patches, chunk_positions, threads, autocast_dtype
    )
    n_slices, height, width = slices.shape
    if n_slices == 0:
        raise ValueError("segment_slices: no slices given (shape (0, H, W))")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}: use one of {AGGREGATES}")
    if aggregate == "center":
        head = n // 2
        if head % stride:
            raise ValueError(f"aggregate='center' needs a stride that divides {head}, got {stride}")
        # corner i * stride of the padded slice is the patch centred on pixel i * stride
        ny, nx = -(-(height - 1) // stride) + 1, -(-(width - 1) // stride) + 1
        right, bottom = (nx - 1) * stride + n - width - head, (ny - 1) * stride + n - height - head
        pads = (head, right, head, bottom)
    else:
        pad_y, pad_x = _pad_amount(height, n, stride), _pad_amount(width, n, stride)
        ny, nx = (height + pad_y - n) // stride + 1, (width + pad_x - n) // stride + 1
        pads = (0, pad_x, 0, pad_y)
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
        if dilation:  # the context patches of the same grid (penn.context)
            context = context_image(x, dilation, n, first_centre, last_centre)
        x = F.pad(x, pads, mode=mode)
        logits = classify(x, context)
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
        if aggregate == "center":
            pixel = gaussian_blur(_centre_readout(probs, stride, height, width), center_sigma)
            probs = probs[:, :, head // stride :, head // stride :]  # the unpadded patch grid
        else:
            pixel = _spread_mean(probs, n, stride, height, width)
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
def segment_slices_pixelwise(
    net: nn.Module,
    slices: np.ndarray,
    batch_slices: int,
    device: str | torch.device = "cpu",
    context_offset: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Class probabilities (S, K, H, W) float32 of a pixel-wise net on (S, H, W) slices.

    ``net`` maps (B, C, H, W) to logits (B, K, H, W), or to a tuple whose first item they are
    (D-TVNet's contour branch is ignored). With ``context_offset`` k > 0 (SAU-Net) each slice
    is fed with its neighbours i - k and i + k (edges replicated) as three channels.
    K = 1: sigmoid; else softmax, as for every baseline. ``progress`` shows a bar over the batches.
    """
    was_training = net.training
    net.eval().to(device)
    volume = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    last, chunks = len(volume) - 1, []
    starts = range(0, len(volume), batch_slices)
    for start in tqdm(starts, desc="segment", disable=not progress, leave=False):
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


def postprocess(
    labels: np.ndarray, min_size: int, keep_largest: int | None, opening_radius: int
) -> np.ndarray:
    """Optional clean-up of a class map, per foreground class, in 3D.

    Args:
        labels: (S, H, W) class map.
        min_size: remove connected components smaller than this many voxels (0: keep all).
        keep_largest: keep only this many largest components per class (None: all).
        opening_radius: binary opening within each slice with a disk of this radius (0: none).
    """
    out = np.zeros_like(labels)
    for c in np.unique(labels[labels > 0]):
        mask = open_in_plane(labels == c, opening_radius)
        if min_size > 0 or keep_largest:
            components = measure.label(mask)
            sizes = np.bincount(components.ravel())[1:]
            keep = np.flatnonzero(kept_components(sizes, min_size, keep_largest)) + 1
            mask = np.isin(components, keep)
        out[mask] = c
    return out


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


def open_in_plane(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening of an (S, H, W) mask within each slice with a disk (radius 0: ``mask``)."""
    if radius <= 0:
        return mask
    return morphology.opening(mask, morphology.disk(radius)[None])


def kept_components(sizes: np.ndarray, min_size: int, keep_largest: int | None) -> np.ndarray:
    """Which connected components (of these voxel counts) :func:`postprocess` keeps."""
    keep = sizes >= min_size
    if keep_largest:
        order = np.argsort(sizes, kind="stable")[::-1]
        keep[order[keep[order].cumsum() > keep_largest]] = False
    return keep
