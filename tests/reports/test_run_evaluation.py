"""The end of a run: surface distances of the test split on each scan's own grid."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from penn.metrics import surface_distances
from penn.preprocess import to_slices
from penn.reports.run_evaluation import surface_means


def test_surface_means_average_classes_then_volumes_on_each_scans_grid():
    """Two classes in volume a, one in b (its other class absent: left out of b's mean)."""
    truth_a = np.zeros((12, 10, 8), np.int16)
    truth_a[2:6, 2:6, 2:6], truth_a[7:10, 3:7, 2:5] = 1, 2
    pred_a = np.roll(truth_a, 2, axis=0)  # shifted along x
    truth_b = np.zeros((9, 9, 9), np.int16)
    truth_b[3:7, 3:7, 3:7] = 1
    pred_b = truth_b.copy()
    pred_b[3:7, 3:7, 7] = 1  # one layer more along z
    spacing_a, spacing_b = (1.5, 1.0, 2.0), (0.8, 0.8, 3.0)
    volumes = [
        SimpleNamespace(labels=truth_a, spacing=spacing_a),
        SimpleNamespace(labels=truth_b, spacing=spacing_b),
    ]
    predictions = [SimpleNamespace(labels=to_slices(p, "sagittal")) for p in (pred_a, pred_b)]
    got = surface_means(volumes, predictions, [[1], [2]], "sagittal", "test")
    a = [surface_distances(pred_a == c, truth_a == c, spacing_a) for c in (1, 2)]
    b = surface_distances(pred_b == 1, truth_b == 1, spacing_b)
    assert b[0] == pytest.approx(3.0)  # the added layer lies one 3 mm slice off
    assert got["test/pixel/hd95_mm"] == pytest.approx(((a[0][0] + a[1][0]) / 2 + b[0]) / 2)
    assert got["test/pixel/asd_mm"] == pytest.approx(((a[0][1] + a[1][1]) / 2 + b[1]) / 2)
    empty = [SimpleNamespace(labels=np.zeros_like(pred_b))]
    nothing = surface_means(volumes[1:], empty, [[1], [2]], "sagittal", "val")
    assert math.isnan(nothing["val/pixel/hd95_mm"])
