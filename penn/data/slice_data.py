"""Whole-slice data and inference for the pixel-wise baselines on PENN's splits.

:class:`SliceDataModule` reuses :class:`~penn.data.datamodule.PatchDataModule`'s reading,
preprocessing and patient-level split, and serves (image, class map) slice pairs instead of
patches. With ``context_offset`` k > 0 each image is the triplet of slices i - k, i, i + k
(edges replicated) that SAU-Net takes. Training slices get a random crop and the baselines'
augmentation (rotation, scale, elastic deformation, gamma, noise; no anterior-posterior flip);
validation and test slices are served whole and unchanged. The nets pad and crop to their
pooling multiple themselves; :func:`penn.inference.dense.segment_slices_pixelwise` segments volumes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from penn.data.contrast import ContrastAugment
from penn.data.datamodule import PatchDataModule
from penn.io.labels import class_map

__all__ = ["SliceDataModule", "SliceDataset", "augment_slice"]


def _crop(image: torch.Tensor, mask: torch.Tensor, size: int | None):
    """A random ``size`` x ``size`` window (whole axes where the slice is smaller)."""
    if not size:
        return image, mask
    height, width = mask.shape
    y = int(torch.randint(0, max(height - size, 0) + 1, ()))
    x = int(torch.randint(0, max(width - size, 0) + 1, ()))
    return image[:, y : y + size, x : x + size], mask[y : y + size, x : x + size]


def _uniform(low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(()))


def augment_slice(image: torch.Tensor, mask: torch.Tensor, cfg: dict):
    """Random rotation, scale and elastic warp (one sampling grid for image and mask), gamma, noise.

    Args:
        image: (C, H, W) float32 in [0, 1] (the preprocessed scale).
        mask: (H, W) int64 class map; resampled by nearest neighbour so it stays a class map.
        cfg: ``rotation_deg``, ``scale`` [low, high], ``elastic_px`` (std of the displacement in
            pixels), ``elastic_grid`` (control points per axis), ``gamma`` [low, high],
            ``noise_std``.

    Returns:
        (image, mask) of the same shapes and dtypes.
    """
    channels, height, width = image.shape
    angle = math.radians(_uniform(-cfg["rotation_deg"], cfg["rotation_deg"]))
    scale = _uniform(*cfg["scale"])
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
    if cfg["elastic_px"] > 0:
        n = int(cfg["elastic_grid"])
        coarse = torch.randn(1, 2, n, n) * cfg["elastic_px"]
        shift = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        # pixels -> normalised [-1, 1] coordinates, x then y as grid_sample expects
        shift = shift[0].permute(1, 2, 0) * torch.tensor([2.0 / width, 2.0 / height])
        grid = grid + shift[None]
    warped = F.grid_sample(
        image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )[0]
    mask = F.grid_sample(
        mask[None, None].float(),
        grid,
        mode="nearest",
        padding_mode="reflection",
        align_corners=False,
    )[0, 0].long()
    warped = warped.clamp(0.0, 1.0) ** _uniform(*cfg["gamma"])
    if cfg["noise_std"] > 0:
        warped = warped + cfg["noise_std"] * torch.randn_like(warped)
    return warped.to(image.dtype).reshape(channels, height, width), mask


class SliceDataset(Dataset):
    """Every slice of a split as (image (C, H, W) float32, class map (H, W) int64).

    Args:
        slices: per volume, (S, H, W) float32 preprocessed slices.
        labels: per volume, (S, H, W) raw label values.
        classes: per foreground class, its raw label values (class k = ``classes[k-1]``).
        context_offset: 0 for one channel, k for the (i - k, i, i + k) triplet.
        crop: random training crop size in pixels (None: whole slices).
        augment: :func:`augment_slice`'s settings (None: no augmentation); its ``contrast``
            entry, when set, is :class:`~penn.data.contrast.ContrastAugment`'s, applied after.
        seed: seed of the contrast augmentation's draws (each loader worker adds its id).
    """

    def __init__(
        self,
        slices: list[np.ndarray],
        labels: list[np.ndarray],
        classes: list[list[int]],
        context_offset: int,
        crop: int | None = None,
        augment: dict | None = None,
        seed: int = 0,
    ):
        self.slices, self.offset = slices, context_offset
        contrast = (augment or {}).get("contrast")
        self.contrast = ContrastAugment(**contrast, seed=seed) if contrast else None
        self.seed, self._worker = seed, None
        self.crop, self.augment = crop, augment
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
        mask = torch.from_numpy(self.masks[vol][s].astype(np.int64))
        image, mask = _crop(image, mask, self.crop)
        if self.augment:
            image, mask = augment_slice(image, mask, self.augment)
        if self.contrast is not None:
            image = self._contrast_of_this_worker()(image)
        return image, mask

    def _contrast_of_this_worker(self) -> ContrastAugment:
        """Loader workers each hold a copy: worker k re-seeds its copy with ``seed + k``."""
        worker = torch.utils.data.get_worker_info()
        worker_id = 0 if worker is None else worker.id
        if self._worker != worker_id:
            self.contrast.transform.set_random_state(seed=self.seed + worker_id)
            self._worker = worker_id
        return self.contrast


class SliceDataModule(PatchDataModule):
    """PENN's data module serving whole slices (same splits, preprocessing and classes).

    Args:
        slice_batch: slices per batch (the baselines' protocol: 8).
        context_offset: neighbour offset k for SAU-Net's triplets, 0 for single slices.
        crop: random training crop in pixels (None: whole slices).
        slice_augment: :func:`augment_slice`'s settings for training slices (None: off).
        **data: the arguments of :class:`~penn.data.datamodule.PatchDataModule` (``cfg.data``).
    """

    def __init__(
        self,
        slice_batch: int,
        context_offset: int,
        crop: int | None = None,
        slice_augment: dict | None = None,
        **data,
    ):
        super().__init__(**data)
        self.slice_batch, self.context_offset = slice_batch, context_offset
        self.crop, self.slice_augment = crop, slice_augment

    def _loader(self, name: str) -> DataLoader:
        split, workers = self.splits[name], self.loader_cfg["num_workers"]
        train = name == "train"
        dataset = SliceDataset(
            split.slices,
            split.labels,
            self.classes,
            self.context_offset,
            crop=self.crop if train else None,
            augment=self.slice_augment if train else None,
            seed=self.stream_seed,
        )
        return DataLoader(
            dataset,
            batch_size=self.slice_batch,
            shuffle=train,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.stream_seed),
        )
