"""Whole-slice batches for the pixel-wise baselines (BASELINES.md §3), on PENN's splits.

:class:`SliceDataModule` reuses :class:`~penn.datamodule.PatchDataModule`'s reading,
preprocessing and patient-level split, and serves (image, class map) slice pairs instead of
patches. With ``context_offset`` k > 0 each image is the triplet of slices i - k, i, i + k
(edges replicated) that SAU-Net takes. The nets pad and crop to their pooling multiple
themselves; slices in one batch must share their size (true within a dataset of one shape).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from penn.datamodule import PatchDataModule
from penn.evaluation import class_map

__all__ = ["SliceDataModule", "SliceDataset"]


class SliceDataset(Dataset):
    """Every slice of a split as (image (C, H, W) float32, class map (H, W) int64).

    Args:
        slices: per volume, (S, H, W) float32 preprocessed slices.
        labels: per volume, (S, H, W) raw label values.
        classes: per foreground class, its raw label values (class k = ``classes[k-1]``).
        context_offset: 0 for one channel, k for the (i - k, i, i + k) triplet.
    """

    def __init__(self, slices: list[np.ndarray], labels: list[np.ndarray],
                 classes: list[list[int]], context_offset: int):  # fmt: skip
        self.slices, self.offset = slices, context_offset
        self.masks = [class_map(lab, classes) for lab in labels]
        self.index = [(v, s) for v, vol in enumerate(slices) for s in range(len(vol))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        vol, s = self.index[i]
        volume = self.slices[vol]
        if self.offset:
            last = len(volume) - 1
            picks = [min(max(s + d, 0), last) for d in (-self.offset, 0, self.offset)]
        else:
            picks = [s]
        image = torch.from_numpy(np.ascontiguousarray(volume[picks], dtype=np.float32))
        return image, torch.from_numpy(self.masks[vol][s].astype(np.int64))


class SliceDataModule(PatchDataModule):
    """PENN's data module serving whole slices (same splits, preprocessing and classes).

    Args:
        slice_batch: slices per batch (BASELINES §3: 8).
        context_offset: neighbour offset k for SAU-Net's triplets, 0 for single slices.
        **data: the arguments of :class:`~penn.datamodule.PatchDataModule` (``cfg.data``).
    """

    def __init__(self, slice_batch: int, context_offset: int, **data):
        super().__init__(**data)
        self.slice_batch, self.context_offset = slice_batch, context_offset

    def _loader(self, name: str) -> DataLoader:
        split, workers = self.splits[name], self.loader_cfg["num_workers"]
        dataset = SliceDataset(split.slices, split.labels, self.classes, self.context_offset)
        return DataLoader(
            dataset,
            batch_size=self.slice_batch,
            shuffle=name == "train",
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(int(self.split_cfg["seed"])),
        )
