"""Training batches cut and augmented on the training device."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler

from penn.data.patch_stream import PatchDataset, augment_patches

__all__ = ["DevicePatchLoader"]


class DevicePatchLoader:
    """Training batches cut and augmented on the training device (``data.loader.on_device``).

    The split's preprocessed slices (and context images) are copied to the device once, as one
    flat tensor each (the slices of lumbar-vb's 11 training scans are about 0.5 GB); each batch
    is then one gather of B x n x n values per channel at the sampler's patch corners, followed
    by the augmentation, all on the device. A small network on a GPU, stepped with the paper's
    batches of 64, is otherwise held back by cutting patches on the host and copying them over.
    Same patches, classes, order and epoch length as :class:`PatchLoader` with the same sampler;
    the augmentation draws come from a device generator seeded with (seed, epoch). Lightning sets
    the sampler's epoch through ``.sampler``.

    With ``steps_per_batch`` K > 1 each yielded batch holds K consecutive batches of
    ``batch_size`` (fewer in an epoch's last one), for K optimizer steps in one training step
    (:mod:`penn.lit.step_group`); the patches and their order are the same (the augmentation is
    drawn per yielded batch, so its random values differ).
    """

    def __init__(
        self,
        dataset: PatchDataset,
        sampler: Sampler,
        batch_size: int,
        device: torch.device,
        seed: int,
        drop_last: bool = True,
        steps_per_batch: int = 1,
    ):
        if steps_per_batch > 1 and not drop_last:
            raise ValueError("steps_per_batch > 1 needs whole batches (drop_last=True)")
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.steps_per_batch = int(steps_per_batch)
        self.device, self.seed, self.drop_last = torch.device(device), int(seed), drop_last
        # the (volume, slice, y, x) rows as they are (on the CPU: the dataset's own array)
        self.index = torch.from_numpy(np.ascontiguousarray(dataset.index)).to(self.device)
        self.channels = self._flat_sources(dataset, dataset.sources())
        self.targets = torch.from_numpy(dataset.targets.astype(np.int64)).to(self.device)
        self.steps = torch.arange(dataset.patch_size, device=self.device)

    def _flat_sources(self, dataset: PatchDataset, sources) -> list[tuple]:
        """Per channel: (flat volumes, (V, 3) base/height/width, shift, step) on the device."""
        out = []
        for kind, shift, step in sources:
            volumes = [dataset.source(kind, v) for v in range(len(dataset.slices))]
            shapes = np.array([s.shape for s in volumes], dtype=np.int64)  # (V, 3)
            base = np.concatenate([[0], np.cumsum(shapes.prod(axis=1))[:-1]])
            geometry = np.stack([base, shapes[:, 1], shapes[:, 2]], axis=1)
            flat = torch.from_numpy(np.concatenate([s.reshape(-1) for s in volumes]))
            out.append(
                (flat.to(self.device), torch.from_numpy(geometry).to(self.device), shift, step)
            )
        return out

    def _cut(self, rows: torch.Tensor, flat, geometry, shift: int, step: int) -> torch.Tensor:
        """One channel of the patches at ``rows``: (B, n, n), one gather on the device."""
        index = self.index[rows].long()  # (B, 4)
        base, height, width = geometry[index[:, 0]].unbind(1)
        y, x = index[:, 2] + shift, index[:, 3] + shift
        corner = base + (index[:, 1] * height + y) * width + x
        steps = self.steps * step
        offsets = steps[:, None] * width[:, None, None] + steps[None, :]  # (B, n, n)
        return flat[corner[:, None, None] + offsets]

    def _steps(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)

    def __len__(self) -> int:
        return -(-self._steps() // self.steps_per_batch)

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", 0)
        order = torch.as_tensor(np.fromiter(iter(self.sampler), np.int64), device=self.device)
        generator = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + epoch)
        augment = self.dataset.augment
        rows_per_batch = self.batch_size * self.steps_per_batch
        end = min(len(order), self._steps() * self.batch_size)
        for start in range(0, end, rows_per_batch):
            rows = order[start : min(start + rows_per_batch, end)]
            x = self._cut_channels(rows, self.channels)
            if augment:
                x = augment_patches(x, augment, generator)
            yield x, self.targets[rows]

    def _cut_channels(self, rows: torch.Tensor, channels) -> torch.Tensor:
        parts = [self._cut(rows, *channel) for channel in channels]
        return parts[0].unsqueeze(1) if len(parts) == 1 else torch.stack(parts, dim=1)
