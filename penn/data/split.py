"""The split by volume into training, validation and test, and the volumes of one split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from penn.io.volume import DataError, Volume
from penn.preprocess import PLANE_AXIS

__all__ = ["SplitVolumes", "split_cases"]


@dataclass
class SplitVolumes:
    """The volumes of one split, preprocessed and sliced along the configured plane.

    Attributes:
        volumes: the volumes as read (image, labels, affine) for writing results.
        slices: per volume, (S, H, W) float32 preprocessed intensities.
        labels: per volume, (S, H, W) uint8 raw label values.
    """

    volumes: list[Volume]
    slices: list[np.ndarray]
    labels: list[np.ndarray]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.volumes]

    def slice_spacings(self, plane: str) -> list[float]:
        """Per volume, the distance in mm between its slices along ``plane``."""
        return [v.spacing[PLANE_AXIS[plane]] for v in self.volumes]


def split_cases(
    names: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    strata: list[bool] | None = None,
):
    """Splits case names into (train, val, test) by volume with a seeded permutation.

    Val and test each get at least one volume. With ``strata`` (e.g. "holds the target class"),
    each stratum is shuffled on its own and the strata are interleaved in proportion, so that
    the validation split used for calibration does not end up without a single target voxel.
    """
    if len(names) < 3:
        raise DataError(f"need at least 3 volumes for train/val/test splits, found {len(names)}")
    rng = np.random.default_rng(seed)
    strata = [False] * len(names) if strata is None else list(strata)
    rank = np.empty(len(names))
    for value in set(strata):
        members = np.flatnonzero(np.array(strata) == value)
        spread = (np.arange(len(members)) + rng.random()) / len(members)
        rank[members[rng.permutation(len(members))]] = spread
    order = np.argsort(rank, kind="stable")
    n_test = max(1, int(round(test_fraction * len(names))))
    n_val = max(1, int(round(val_fraction * len(names))))
    if n_test + n_val >= len(names):
        raise DataError(f"{len(names)} volumes are too few for val={n_val} and test={n_test}")
    picked = [names[i] for i in order]
    test, val, train = picked[:n_test], picked[n_test : n_test + n_val], picked[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)
