"""Intensity normalisation (penn.preprocess.normalize) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from penn.preprocess import normalize, preprocess_volume, to_slices


def _volume() -> np.ndarray:
    """Background 0 and the non-zero values 1..5, 20 voxels each: median 3."""
    image = np.zeros((4, 10, 10), dtype=np.float32)
    image[:, :5, :5] = np.repeat(np.arange(1, 6, dtype=np.float32), 20).reshape(4, 5, 5)
    return image


def test_percentiles_map_to_zero_and_one() -> None:
    out = normalize(_volume(), (0.0, 100.0))
    assert set(np.unique(out[:, :5, :5]).round(6)) == {0.0, 0.25, 0.5, 0.75, 1.0}  # (v - 1) / 4
    assert (out[:, 5:] == 0).all()  # the background lies below the low percentile


def test_median_maps_to_its_value_and_the_rest_is_clipped_at_one() -> None:
    out = normalize(_volume(), (0.0, 100.0), median_to=0.4)
    # (v - 1) / (3 - 1) * 0.4: 1 -> 0, 2 -> 0.2, 3 -> 0.4, 4 -> 0.6, 5 -> 0.8
    np.testing.assert_allclose(np.unique(out[:, :5, :5]), [0.0, 0.2, 0.4, 0.6, 0.8], atol=1e-6)
    clipped = normalize(_volume(), (0.0, 100.0), median_to=0.8)  # 4 -> 1.2, 5 -> 1.6: clipped
    np.testing.assert_allclose(np.unique(clipped[:, :5, :5]), [0.0, 0.4, 0.8, 1.0], atol=1e-6)


def test_a_bright_lesion_moves_the_median_scale_less_than_the_percentile_scale() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(1.0, 2.0, size=(8, 64, 64)).astype(np.float32)
    lesioned = image.copy()
    lesioned[:, :8, :8] = 6.0  # 1.6 % of the voxels, far brighter than the rest
    tissue = (slice(None), slice(16, None), slice(None))

    def change(median_to: float | None) -> float:
        """Largest shift of the other tissue's normalised values, relative to their maximum."""
        before = normalize(image, (0.5, 99.5), median_to)[tissue]
        after = normalize(lesioned, (0.5, 99.5), median_to)[tissue]
        return float(np.abs(after - before).max() / before.max())

    assert change(None) > 0.2  # the 99.5th percentile now lies in the lesion
    assert change(0.3) < 0.02  # the median hardly moves


def test_median_to_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="median_to"):
        normalize(_volume(), (0.5, 99.5), median_to=1.5)


def test_preprocess_volume_passes_median_to_on() -> None:
    image = _volume()
    slices = preprocess_volume(image, "sagittal", 0.0, 0.0, (0.0, 100.0), median_to=0.4)
    expected = to_slices(normalize(image, (0.0, 100.0), median_to=0.4), "sagittal")
    np.testing.assert_array_equal(slices, expected)
    assert slices.max() == pytest.approx(0.8)
