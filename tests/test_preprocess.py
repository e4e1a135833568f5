"""Intensity normalisation (penn.preprocess.normalize) against hand-computed values."""

from __future__ import annotations

import numpy as np

from penn.preprocess import normalize, preprocess_volume


def _volume() -> np.ndarray:
    """Background 0 and the non-zero values 1..5, 20 voxels each: median 3."""
    image = np.zeros((4, 10, 10), dtype=np.float32)
    image[:, :5, :5] = np.repeat(np.arange(1, 6, dtype=np.float32), 20).reshape(4, 5, 5)
    return image


def test_percentiles_map_to_zero_and_one() -> None:
    out = normalize(_volume(), (0.0, 100.0))
    assert set(np.unique(out[:, :5, :5]).round(6)) == {0.0, 0.25, 0.5, 0.75, 1.0}  # (v - 1) / 4
    assert (out[:, 5:] == 0).all()  # the background lies below the low percentile


def test_the_normalisation_ignores_an_affine_change_of_the_intensities() -> None:
    """Scanners scale grey values arbitrarily: a * image + b (a > 0) gives the same slices."""
    rng = np.random.default_rng(1)
    image = rng.gamma(2.0, 50.0, size=(6, 40, 48)).astype(np.float32)
    expected = preprocess_volume(image, "sagittal", 0.0, 1.0, (0.5, 99.5))
    for a, b in ((3.0, 0.0), (0.01, 250.0), (40.0, 7.0)):
        out = preprocess_volume(a * image + b, "sagittal", 0.0, 1.0, (0.5, 99.5))
        np.testing.assert_allclose(out, expected, atol=1e-4)
