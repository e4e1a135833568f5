import math

import numpy as np
import pytest
import torch

from penn.metrics import confusion_counts, metrics_from_counts, patch_metric_collection, summarize

# 4 x 4 masks, counted by hand: TP = 3, FP = 2, FN = 1, TN = 10
PRED = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
TRUTH = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_counts_match_hand_count():
    counts = confusion_counts(PRED, TRUTH, 2)
    assert counts[1].tolist() == [3, 2, 10, 1]
    assert counts[0].tolist() == [10, 1, 3, 2]  # background one-vs-rest


def test_six_metrics_from_hand_counts():
    m = metrics_from_counts(3, 2, 10, 1)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(13 / 16)
    assert m["f1"] == pytest.approx(6 / 9) and m["dice"] == pytest.approx(6 / 9)
    assert m["iou"] == pytest.approx(3 / 6)


def test_undefined_metrics_are_nan_not_zero():
    m = metrics_from_counts(0, 0, 16, 0)  # no truth, no prediction
    assert math.isnan(m["dice"]) and math.isnan(m["precision"]) and m["accuracy"] == 1.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 2\) != truth \(4,\)"):
        confusion_counts(np.zeros((2, 2)), np.zeros(4), 2)


def test_torchmetrics_patch_collection_agrees_with_counts():
    coll = patch_metric_collection(2, "test/patch/")
    values = coll(torch.tensor(PRED.ravel(), dtype=torch.float), torch.tensor(TRUTH.ravel()))
    expected = metrics_from_counts(3, 2, 10, 1)
    for name, v in expected.items():
        assert values[f"test/patch/{name}"].item() == pytest.approx(v, abs=1e-6)


def test_summary_means_per_volume_and_pools():
    vol_a = confusion_counts(PRED, TRUTH, 2)  # dice 2/3
    vol_b = confusion_counts(np.zeros((4, 4)), np.zeros((4, 4)), 2)  # dice undefined
    vol_c = confusion_counts(TRUTH, TRUTH, 2)  # dice 1
    out = summarize([vol_a, vol_b, vol_c], vol_a, ["tumor"], "test")
    assert out["test/pixel/dice"] == pytest.approx((2 / 3 + 1) / 2)  # NaN volume left out
    assert out["test/pixel_pooled/dice"] == pytest.approx(2 * 7 / (2 * 7 + 2 + 1))
    assert out["test/patch/iou"] == pytest.approx(0.5)


def test_summary_reports_each_class_and_their_mean():
    pred = np.array([[1, 2], [0, 2]])
    truth = np.array([[1, 1], [0, 2]])
    counts = confusion_counts(pred, truth, 3)
    out = summarize([counts], counts, ["vertebra", "tumor"], "test")
    assert out["test/pixel/vertebra/dice"] == pytest.approx(2 / 3)
    assert out["test/pixel/tumor/dice"] == pytest.approx(2 / 3)
    assert out["test/pixel/dice"] == pytest.approx(2 / 3)


def test_best_interval_dice_finds_the_band_and_counts_its_overlap():
    from penn.metrics import best_interval_dice

    image = np.array([0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0])
    exact = np.array([0, 0, 1, 1, 1, 1, 0, 0], bool)  # the band [2, 4) is the target exactly
    assert best_interval_dice([image], [exact]) == pytest.approx(1.0)
    # target {2.0, 5.0}: any band holding both also holds the 4 voxels between them;
    # the best is one voxel alone, 2 * 1 / (1 + 2)
    split = np.array([0, 0, 1, 0, 0, 0, 0, 1], bool)
    assert best_interval_dice([image[:4], image[4:]], [split[:4], split[4:]]) == pytest.approx(
        2 / 3
    )
