"""Patches cut on demand from preprocessed slices, their augmentation, and the loader that
moves batches from worker processes.

Patches are never stored: a dataset holds the preprocessed slices of its volumes and a small
integer index (volume, slice, y, x) per patch, and cuts each batch out of the slices on the fly.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from penn.patches.context import context_image, input_channels

__all__ = ["PatchBatch", "PatchLoader", "PatchDataset", "augment_patches"]

log = logging.getLogger(__name__)


try:  # widening the loader's pipe is Linux-only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def keep_batch(batch):
    return batch


def _rebuild_batch(patches: np.ndarray, targets: np.ndarray) -> PatchBatch:
    return PatchBatch((torch.from_numpy(patches), torch.from_numpy(targets)))


class PatchBatch(tuple):
    """A batch ``(patches (B, C, n, n) float32, targets (B,) int64)``: a plain tuple of tensors
    that crosses from a loader worker to the main process by value.

    Torch sends tensors between processes as shared-memory file descriptors, one handshake per
    tensor; for 64 small patches that handshake, not the cutting, capped the training stream near
    22,000 patches/s on 2 workers whatever their number (docs/results/bench.json). Pickled as
    NumPy arrays, a batch is a 256 kB copy through the worker's pipe.
    """

    __slots__ = ()

    def __reduce__(self):
        return _rebuild_batch, (self[0].numpy(), self[1].numpy())


class PatchLoader(DataLoader):
    """A DataLoader whose worker-to-main pipe holds several batches at once (Linux).

    A batch of 64 patches is 256 kB, four times the default 64 kB pipe, so every batch used to
    make its worker wait for the main process to drain the pipe in four rounds. Widening the
    pipe to ``pipe_bytes`` (within ``/proc/sys/fs/pipe-max-size``) lifted the 2-worker stream by
    about a quarter (docs/results/bench.json); where that is refused, nothing changes.
    """

    pipe_bytes = 1 << 20

    def _get_iterator(self):
        iterator = super()._get_iterator()
        queue = getattr(iterator, "_worker_result_queue", None)
        if queue is not None and fcntl is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            try:
                fcntl.fcntl(queue._reader.fileno(), fcntl.F_SETPIPE_SZ, self.pipe_bytes)
            except (OSError, AttributeError) as err:
                log.debug("patch loader: pipe left at its default size (%s)", err)
        return iterator


class PatchDataset(Dataset):
    """Patches cut on demand from preprocessed slices; batches are gathered in one call.

    Args:
        slices: per volume, (S, H, W) float32.
        index: (N, 4) int32 rows of (volume, slice, y, x), the top-left corner of each patch.
        targets: (N,) uint8 patch classes.
        patch_size: patch side n.
        augment: intensity augmentation ranges (``gamma``, ``scale``, ``noise_std``) and
            ``flip`` (random mirroring of each patch in both in-plane axes), or None.
        context_dilation: d > 0: each patch also gets its context patch as a second channel
            (:mod:`penn.patches.context`), cut from :meth:`context_volume`; 0: the patch alone.
    """

    def __init__(
        self,
        slices,
        index,
        targets,
        patch_size: int,
        augment: dict | None,
        context_dilation: int = 0,
    ):
        self.slices, self.index, self.targets = slices, index, targets
        self.patch_size, self.augment = patch_size, augment
        self.context_dilation = int(context_dilation)
        self._offsets: dict[tuple[int, int], np.ndarray] = {}
        self._flat: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def channels(self) -> int:
        """Channels of a patch: 1, or 2 with the context patch."""
        return input_channels(self.context_dilation)

    def _cached(self, kind: str, vol: int, make) -> np.ndarray:
        """``make(slices)`` of volume ``vol``, kept until ``slices[vol]`` is replaced (the lesion
        benchmark gives its training scans new lesions every epoch)."""
        source = self.slices[vol]
        cached = self._flat.get((kind, vol))
        if cached is None or cached[0] is not source:
            made = np.ascontiguousarray(make(np.asarray(source, np.float32)), dtype=np.float32)
            cached = self._flat[(kind, vol)] = (source, made)
        return cached[1]

    def volume(self, vol: int) -> np.ndarray:
        """Volume ``vol``'s slices as the patches are cut from them: (S, H, W) float32."""
        return self._cached("patch", vol, lambda x: x)

    def context_volume(self, vol: int) -> np.ndarray:
        """Volume ``vol``'s context image (S, H'', W''),
        :func:`penn.patches.context.context_image`."""
        d, n = self.context_dilation, self.patch_size
        return self._cached(
            "context",
            vol,
            lambda x: context_image(torch.from_numpy(x)[:, None], d, n)[:, 0].numpy(),
        )

    def sources(self) -> list[tuple[str, int, int]]:
        """Per channel: (kind, shift, step). A patch's channel is the n x n values ``step``
        pixels apart from (y + shift, x + shift) of that kind's volume, (y, x) its index row.

        The patch whose corner is y is centred on pixel c = y + n // 2 of the slice, and sample 0
        of its context is element c of the context image
        (:func:`penn.patches.context.context_image`), so the context's shift is n // 2.
        """
        out = [("patch", 0, 1)]
        if self.context_dilation > 0:
            out.append(("context", self.patch_size // 2, self.context_dilation))
        return out

    def source(self, kind: str, vol: int) -> np.ndarray:
        """The array that channels of ``kind`` (``patch`` or ``context``) are cut from."""
        return self.volume(vol) if kind == "patch" else self.context_volume(vol)

    def _cut(self, vol: int, rows: np.ndarray, sources=None) -> np.ndarray:
        """Patches (k, C, n, n) of one volume: one ``np.take`` per channel from its flat slices.

        Channel 0 holds the same values as :func:`penn.patches.extract.gather_patches`; the n x n
        offsets of each row length and step are computed once. ``sources``: the channels'
        sources (default :meth:`sources`).
        """
        out = []
        for kind, shift, step in sources or self.sources():
            slices = self.source(kind, vol)
            _, height, width = slices.shape
            offsets = self._offsets.get((width, step))
            if offsets is None:
                n = np.arange(self.patch_size) * step
                offsets = self._offsets[(width, step)] = n[:, None] * width + n[None, :]
            y, x = rows[:, 2].astype(np.int64) + shift, rows[:, 3].astype(np.int64) + shift
            corner = (rows[:, 1].astype(np.int64) * height + y) * width + x
            out.append(np.take(slices.reshape(-1), corner[:, None, None] + offsets))
        return out[0][:, None] if len(out) == 1 else np.stack(out, axis=1)

    def patches(self, indices, sources=None) -> torch.Tensor:
        """The patches at ``indices`` as they are, without augmentation: (B, C, n, n) float32
        (``sources``: as in :meth:`_cut`)."""
        rows = self.index[np.asarray(indices)]
        n = self.patch_size
        patches = np.empty((len(rows), self.channels, n, n), dtype=np.float32)
        vols = rows[:, 0]
        if len(rows) and (vols == vols[0]).all():
            patches[:] = self._cut(int(vols[0]), rows, sources)
        else:
            for vol in np.unique(vols):
                sel = np.flatnonzero(vols == vol)
                patches[sel] = self._cut(int(vol), rows[sel], sources)
        return torch.from_numpy(patches)

    def __getitems__(self, indices: list[int]) -> PatchBatch:
        indices = np.asarray(indices)
        x = self.patches(indices)
        if self.augment:
            x = augment_patches(x, self.augment)
        y = torch.from_numpy(self.targets[indices].astype(np.int64))
        return PatchBatch((x, y))

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def augment_patches(
    x: torch.Tensor, augment: dict, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-patch gamma, contrast scale, noise and optional flips.

    ``x`` (B, C, n, n) on any device (a patch's channels share its gamma, scale and flips);
    random draws from ``generator`` (on that device) or, by default, torch's global generator.
    """
    n, dev, g = x.shape[0], x.device, generator
    g0, g1 = augment["gamma"]
    s0, s1 = augment["scale"]
    gamma = torch.empty(n, 1, 1, 1, device=dev).uniform_(np.log(g0), np.log(g1), generator=g).exp()
    scale = torch.empty(n, 1, 1, 1, device=dev).uniform_(s0, s1, generator=g)
    x = (x.clamp_min(0).log() * gamma).exp() * scale  # x ** gamma, 5x faster than pow here
    x = x + augment["noise_std"] * torch.randn(x.shape, device=dev, generator=g)
    if augment.get("flip"):  # mirror each patch along each in-plane axis with p = 0.5
        for dim in (-1, -2):
            x = torch.where(torch.rand(n, 1, 1, 1, device=dev, generator=g) < 0.5, x.flip(dim), x)
    return x.clamp(0.0, 1.0)
