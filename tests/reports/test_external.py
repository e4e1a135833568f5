"""External validation (penn.reports.external) and surface distances (penn.metrics) on
hand-built cases."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from penn.metrics import metrics_from_counts, surface_distances
from penn.reports.external import evaluate_external, labelled_extent, score_volume
from tests.predict_helpers import run_predict, save_nifti, spine_volume, write_model

# 3 x 0.5 x 0.5 mm voxels in RAS order
BASE = np.array([[3.0, 0, 0, -15.0], [0, 0.5, 0, -10.0], [0, 0, 0.5, 20.0], [0, 0, 0, 1]])


def test_hd95_and_asd_of_single_voxels_are_their_distance_in_mm():
    pred, truth = np.zeros((6, 10, 6), bool), np.zeros((6, 10, 6), bool)
    pred[2, 2, 2], truth[5, 2, 2] = True, True  # 3 voxels apart along an axis of 2 mm
    assert surface_distances(pred, truth, (2.0, 1.0, 1.0)) == pytest.approx((6.0, 6.0))


def test_hd95_and_asd_by_hand_with_an_unmatched_voxel():
    """pred has a second voxel 6 voxels of 1.5 mm away: distances pred -> truth are 0 and 9 mm,
    truth -> pred 0 mm. HD95 = max(95th percentile of [0, 9], of [0]) = 0.95 * 9 = 8.55;
    ASD = (0 + 9 + 0) / 3 = 3."""
    pred, truth = np.zeros((6, 10, 6), bool), np.zeros((6, 10, 6), bool)
    pred[2, 2, 2] = pred[2, 8, 2] = truth[2, 2, 2] = True
    hd95, asd = surface_distances(pred, truth, (1.0, 1.5, 1.0))
    assert hd95 == pytest.approx(8.55, abs=1e-5) and asd == pytest.approx(3.0)
    assert surface_distances(truth, pred, (1.0, 1.5, 1.0)) == pytest.approx((hd95, asd))


@pytest.mark.parametrize("empty", ["pred", "truth", "both"])
def test_surface_distances_are_nan_when_a_mask_is_empty(empty):
    full = np.zeros((4, 4, 4), bool)
    full[1:3, 1:3, 1:3] = True
    pred = np.zeros_like(full) if empty in ("pred", "both") else full
    truth = np.zeros_like(full) if empty in ("truth", "both") else full
    assert all(math.isnan(v) for v in surface_distances(pred, truth, (1.0, 1.0, 1.0)))


def test_surface_distances_refuse_masks_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        surface_distances(np.ones((2, 2, 2), bool), np.ones((2, 2, 3), bool), (1, 1, 1))


def test_labelled_extent_spans_the_lowest_to_the_highest_labelled_plane():
    truth = np.zeros((3, 4, 10), bool)
    truth[1, 2, 3] = truth[0, 0, 6] = True
    assert labelled_extent(truth) == slice(3, 7)
    assert labelled_extent(np.zeros((3, 4, 10), bool)) == slice(0, 10)


def test_a_prediction_outside_the_labelled_extent_is_a_false_positive_of_the_whole_volume_only():
    truth = np.zeros((4, 6, 20), np.uint8)
    truth[1:3, 1:4, 8:12] = 1  # 24 voxels, planes 8-11
    pred = truth.copy()
    pred[1:3, 1:3, 16:18] = 1  # 8 voxels above the extent
    pred[1, 1, 8] = 0  # one missed voxel inside it
    scores = score_volume(pred, truth, 2, (1.0, 1.0, 1.0))
    whole, extent = scores["whole"][0][1], scores["extent"][0][1]  # counts of class 1
    assert whole.tolist() == [23, 8, 4 * 6 * 20 - 23 - 8 - 1, 1]
    assert extent.tolist() == [23, 0, 4 * 6 * 4 - 23 - 1, 1]
    assert scores["extent"][1]["hd95_mm"] < scores["whole"][1]["hd95_mm"]


def test_the_extent_follows_every_labelled_voxel_when_given():
    truth = np.zeros((2, 2, 10), np.uint8)
    truth[0, 0, 4] = 1
    labelled = truth > 0
    labelled[1, 1, 8] = True  # another label (e.g. a class not scored) reaches plane 8
    pred = np.zeros_like(truth)
    pred[0, 0, 7] = 1
    counts = score_volume(pred, truth, 2, (1.0, 1.0, 1.0), labelled)["extent"][0][1]
    assert counts.tolist() == [0, 1, 2 * 2 * 5 - 2, 1]


def _raw_dataset(root, cases):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name, (image, labels) in cases.items():
        save_nifti(root / "imagesTr" / f"{name}_0000.nii.gz", image, BASE)
        save_nifti(root / "labelsTr" / f"{name}.nii.gz", labels, BASE)
    labels = {"background": 0, "vertebra": 1, "tumor": 2}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))


def test_external_scores_equal_counts_of_the_mask_penn_predicts(tmp_path):
    """The hand-set model finds the bright tumour; a bright spot above the labelled stretch of
    the column is a false positive over the whole volume but outside the labelled extent."""
    image, labels = spine_volume(shape=(10, 40, 96))  # bodies in planes 6-67
    spot = image.copy()
    spot[3:7, 12:28, 76:92] = 1000.0  # as bright as the tumour, above the highest body
    between = image.copy()
    between[3:7, 14:28, 44:54] = 1000.0  # between two bodies: inside the labelled extent
    cases = {"clean": (image, labels), "spot": (spot, labels), "between": (between, labels)}
    _raw_dataset(tmp_path / "ext", cases)
    model = write_model(tmp_path / "binary.pt", 1)
    metrics, rows = evaluate_external(model, tmp_path / "ext", progress=False)

    by_case = {(r["case"], r["scope"]): r for r in rows}
    names = ("clean", "spot", "between")
    assert set(by_case) == {(c, s) for c in names for s in ("whole", "extent")}
    truth = labels == 2
    z = np.flatnonzero((labels > 0).any(axis=(0, 1)))
    for case in names:
        # the same model, by the prediction path: its decided mask, scored here with numpy
        out = tmp_path / f"pred_{case}"
        run_predict(model, tmp_path / "ext" / "imagesTr" / f"{case}_0000.nii.gz", out)
        mask = np.asarray(nib.load(next(out.rglob("mask.nii.gz"))).dataobj) > 0
        for scope, region in (("whole", ...), ("extent", (..., slice(z[0], z[-1] + 1)))):
            p, t = mask[region], truth[region]
            tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
            expected = metrics_from_counts(tp, fp, (~p & ~t).sum(), fn)
            assert by_case[(case, scope)]["dice"] == pytest.approx(expected["dice"])
            assert by_case[(case, scope)]["precision"] == pytest.approx(expected["precision"])
    assert by_case[("spot", "whole")]["precision"] < by_case[("spot", "extent")]["precision"]
    assert by_case[("spot", "extent")]["dice"] == pytest.approx(
        by_case[("clean", "extent")]["dice"]
    )
    # the extent spans every labelled voxel (the bodies), not only the scored tumour class
    between_extent = by_case[("between", "extent")]["precision"]
    assert between_extent == pytest.approx(by_case[("between", "whole")]["precision"])
    assert between_extent < by_case[("clean", "extent")]["precision"]
    mean_whole = np.mean([by_case[(c, "whole")]["dice"] for c in names])
    assert metrics["external/whole/pixel/dice"] == pytest.approx(mean_whole)
    for key in ("pixel_pooled/dice", "pixel/iou", "pixel/recall", "pixel/hd95_mm", "pixel/asd_mm"):
        assert f"external/extent/{key}" in metrics and f"external/whole/{key}" in metrics
    assert not any("/patch/" in k for k in metrics)
