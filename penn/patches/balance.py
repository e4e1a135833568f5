"""Class balance of the training patches (the paper's T1MRI): random undersampling of the
majority class, redrawn every epoch by a sampler.
"""

from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import Sampler

__all__ = ["class_counts", "undersample", "BalancedSampler"]

log = logging.getLogger(__name__)


def class_counts(patch_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of patches of each class, (n_classes,) int64."""
    return np.bincount(patch_labels.ravel(), minlength=n_classes).astype(np.int64)


def undersample(
    patch_labels: np.ndarray, majority_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Randomly drops class-0 patches so that they make up ``majority_fraction`` of the rest.

    Every minority (class >= 1) patch is kept. When class 0 is already at or below the requested
    fraction, nothing is dropped.

    Args:
        patch_labels: (N,) patch classes, 0 = majority (background).
        majority_fraction: wanted share of class 0 after balancing (paper: 0.6).
        rng: random generator (seeded by the caller).

    Returns:
        Sorted indices (into ``patch_labels``) of the patches kept.
    """
    if not 0.0 < majority_fraction < 1.0:
        raise ValueError(f"majority_fraction must be in (0, 1), got {majority_fraction}")
    majority = np.flatnonzero(patch_labels == 0)
    minority = np.flatnonzero(patch_labels != 0)
    wanted = int(round(minority.size * majority_fraction / (1.0 - majority_fraction)))
    if wanted < majority.size:
        majority = rng.choice(majority, size=wanted, replace=False)
    return np.sort(np.concatenate([majority, minority]))


class BalancedSampler(Sampler[int]):
    """Random undersampling of the majority class, drawn anew for every epoch (seed + epoch).

    Every minority patch is used in every epoch; each epoch sees a different random subset of
    the background patches, so over a run the network meets far more of the background's
    variety than one fixed undersampling would show it, at the same cost per epoch. Lightning
    calls :meth:`set_epoch` (also through its distributed wrapper), which makes a resumed run
    draw the same subsets as an uninterrupted one.

    Hard-negative mining (:class:`penn.lit.mining.HardNegativeMining`) may hand over background
    patches the network gets wrong (:meth:`set_hard`); they then take the place of as many
    random background patches in the following epochs, so the class ratio and the epoch length
    stay the same.

    Args:
        targets: (N,) patch classes of the dataset.
        majority_fraction: share of class 0 in each epoch.
        seed: base seed.
        resample: draw a new subset per epoch (False: the epoch-0 subset every time).
    """

    def __init__(self, targets: np.ndarray, majority_fraction: float, seed: int, resample: bool):
        self.targets, self.majority_fraction = targets, majority_fraction
        self.seed, self.resample, self.epoch = int(seed), resample, 0
        self.hard = np.zeros(0, np.int64)
        self._length = len(self._draw(0))

    @property
    def n_majority(self) -> int:
        """Background (class 0) patches in each epoch."""
        return self._length - int(np.count_nonzero(self.targets))

    def set_hard(self, indices: np.ndarray) -> None:
        """Background patches to include in every following epoch (at most ``n_majority``)."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        if len(indices) and (self.targets[indices] != 0).any():
            raise ValueError("hard negatives must be background (class 0) patches")
        if len(indices) > self.n_majority:
            raise ValueError(f"{len(indices)} hard negatives exceed the epoch's {self.n_majority}")
        self.hard = indices

    def _draw(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch if self.resample else 0])
        keep = undersample(self.targets, self.majority_fraction, rng)
        if len(self.hard):
            background = keep[self.targets[keep] == 0]
            random_part = background[~np.isin(background, self.hard)]
            random_part = rng.choice(random_part, len(background) - len(self.hard), replace=False)
            keep = np.concatenate([keep[self.targets[keep] != 0], self.hard, random_part])
        return rng.permutation(keep)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        indices = self._draw(self.epoch)
        self.epoch += 1  # a fresh draw next time even if nobody calls set_epoch
        return iter(indices.tolist())
