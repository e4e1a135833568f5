"""The T1MRI module: random undersampling of the majority (background) class (paper step 4)."""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["class_counts", "undersample"]

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
