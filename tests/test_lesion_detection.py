"""Lesion-level detection (penn.lesion_detection) against hand-built cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from penn.lesion_detection import bin_names, detection_metrics, match_lesions


def two_lesions() -> tuple[np.ndarray, np.ndarray]:
    """Truth: a 1 mL cube (1000 voxels of 1 mm) and a 0.125 mL one. Prediction: half of the
    large one and a false blob elsewhere; the small one is missed."""
    truth = np.zeros((40, 40, 40), bool)
    truth[2:12, 2:12, 2:12] = True
    truth[25:30, 25:30, 25:30] = True
    pred = np.zeros_like(truth)
    pred[2:12, 2:12, 2:7] = True
    pred[30:35, 2:6, 30:34] = True
    return pred, truth


def test_one_found_one_missed_one_false():
    pred, truth = two_lesions()
    scan = match_lesions(pred, truth, (1.0, 1.0, 1.0), min_overlap=0.1)
    assert scan.volumes_ml == pytest.approx((1.0, 0.125))
    assert scan.found == (True, False) and scan.false == 1
    metrics = detection_metrics([scan, match_lesions(truth, truth, (1, 1, 1))], [1.0, 5.0], "t")
    assert metrics["t/lesions"] == 4 and metrics["t/found"] == 3 and metrics["t/missed"] == 1
    assert metrics["t/sensitivity"] == 0.75
    assert metrics["t/false"] == 1 and metrics["t/false_per_scan"] == 0.5
    assert metrics["t/lesions_under_1ml"] == 2 and metrics["t/sensitivity_under_1ml"] == 0.5
    assert metrics["t/lesions_1_5ml"] == 2 and metrics["t/sensitivity_1_5ml"] == 1.0
    assert metrics["t/lesions_over_5ml"] == 0 and math.isnan(metrics["t/sensitivity_over_5ml"])


def test_overlap_threshold_and_voxel_size():
    pred, truth = two_lesions()
    # half the large lesion is covered: found at 0.5, missed above it
    assert match_lesions(pred, truth, (1, 1, 1), min_overlap=0.5).found == (True, False)
    assert match_lesions(pred, truth, (1, 1, 1), min_overlap=0.6).found == (False, False)
    # 2 mm voxels: 8 times the volume
    assert match_lesions(pred, truth, (2, 2, 2)).volumes_ml == pytest.approx((8.0, 1.0))


def test_no_lesions_anywhere_and_bin_names():
    empty = np.zeros((5, 5, 5), bool)
    metrics = detection_metrics([match_lesions(empty, empty, (1, 1, 1))], [1.0, 5.0], "x")
    assert metrics["x/lesions"] == 0 and math.isnan(metrics["x/sensitivity"])
    assert metrics["x/false_per_scan"] == 0
    assert bin_names([0.5, 2.0]) == ["under_0p5ml", "0p5_2ml", "over_2ml"]
    with pytest.raises(ValueError, match="shape"):
        match_lesions(empty, np.zeros((4, 5, 5), bool), (1, 1, 1))
