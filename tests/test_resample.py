"""Resampling to a common in-plane spacing (``data.preprocess.spacing``) and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from penn.checkpoint import load_model
from penn.inference.predictor import predict_volumes
from penn.io.dataset import list_cases, read_case
from penn.models.sparse_ae import StackedSparseAutoencoder
from penn.preprocess import (
    label_slices,
    normalize,
    preprocess_volume,
    remove_noise,
    resize_in_plane,
    slice_grid,
    smooth,
    to_slices,
)
from penn.reports.scan_outputs import segment_volume
from tests.conftest import TINY
from tests.test_run import penn

PREPROCESS = {"noise_threshold": 0.02, "smooth_sigma": 1.0, "clip_percentiles": (0.5, 99.5)}


def test_slice_grid_has_the_configured_pixel_size_in_each_plane():
    shape, voxel = (6, 96, 128), (3.0, 0.5, 0.5)
    assert slice_grid(shape, voxel, "sagittal", 1.0).working == (48, 64)
    assert slice_grid(shape, voxel, "sagittal", 1.0).native == (96, 128)
    assert slice_grid(shape, voxel, "axial", 1.0).working == (18, 48)  # 6 x 3 mm, 96 x 0.5 mm
    assert slice_grid(shape, voxel, "sagittal", None).working == (96, 128)
    assert slice_grid(shape, voxel, "sagittal", 0.5).working == (96, 128)
    with pytest.raises(ValueError, match="preprocess.spacing=0"):
        slice_grid(shape, voxel, "sagittal", 0.0)


def _smooth_volume(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), (0, 4, 4))
    return (100 + 50 * field / field.std()).clip(1, None).astype(np.float32)


def test_a_scan_at_twice_the_resolution_gives_the_same_working_slices():
    coarse = _smooth_volume((4, 40, 48))  # 1 mm pixels
    fine = resize_in_plane(coarse, (80, 96), order=1)  # the same anatomy at 0.5 mm
    at_1mm = preprocess_volume(
        coarse, "sagittal", **PREPROCESS, spacing=1.0, voxel_spacing=(3.0, 1.0, 1.0)
    )
    from_fine = preprocess_volume(
        fine, "sagittal", **PREPROCESS, spacing=1.0, voxel_spacing=(3.0, 0.5, 0.5)
    )
    as_is = preprocess_volume(fine, "sagittal", **PREPROCESS, voxel_spacing=(3.0, 0.5, 0.5))
    assert at_1mm.shape == from_fine.shape == (4, 40, 48) and as_is.shape == (4, 80, 96)
    assert np.abs(at_1mm - from_fine).mean() < 0.03  # interpolation error only
    # without a spacing nothing is resampled: the paper's chain on the scan's own grid
    paper = to_slices(normalize(smooth(remove_noise(fine, 0.02), 1.0, 0), (0.5, 99.5)), "sagittal")
    np.testing.assert_array_equal(as_is, paper)


def test_labels_reach_the_working_grid_by_nearest_neighbour():
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:6, 4:8] = 2
    labels[:, 0:2, 0:2] = 1
    working = label_slices(labels, "sagittal", 1.0, (3.0, 0.5, 0.5))
    assert working.shape == (2, 4, 4) and working.dtype == np.uint8
    expected = np.zeros((4, 4), np.uint8)
    expected[1:3, 2:4] = 2
    expected[0, 0] = 1
    np.testing.assert_array_equal(working[0], expected)
    np.testing.assert_array_equal(working[1], expected)


def test_probabilities_return_to_the_scans_grid_and_patches_stay_on_the_working_grid():
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=8, n_layers=1, n_nodes=4, n_outputs=1).eval()
    slices = np.random.default_rng(1).random((2, 20, 24)).astype(np.float32)
    inference = {"stride": 2, "batch_slices": 2, "aggregate": "center", "center_sigma": 0.0}
    plain = predict_volumes(net, [slices], inference, device="cpu", progress=False)[0]
    back = predict_volumes(
        net, [slices], inference, device="cpu", progress=False, shapes=[(40, 48)]
    )[0]
    assert back.probs.shape == (2, 1, 40, 48)
    np.testing.assert_array_equal(back.patch_probs, plain.patch_probs)
    np.testing.assert_allclose(back.probs, resize_in_plane(plain.probs, (40, 48), 1), atol=1e-6)


@pytest.fixture(scope="module")
def resampled_run(tmp_path_factory):
    """A tiny run on the 0.5 mm phantom with the network at 1 mm: (run dir, data dir)."""
    base = tmp_path_factory.mktemp("spacing")
    data_dir, run_dir = base / "data", base / "run"
    penn(
        "penn.run",
        *TINY,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        "data.preprocess.spacing=1.0",
        "data.patches.size=8",
        "data.patches.stride=2",
        "inference.stride=2",
    )
    return run_dir, data_dir


def test_a_resampled_run_is_scored_and_segments_on_the_scans_grid(resampled_run):
    run_dir, data_dir = resampled_run
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    for counts in evaluation["test_volumes"].values():  # tp, fp, tn, fn of every native voxel
        assert sum(counts[1]) == 6 * 96 * 128
    net, meta = load_model(run_dir / "model.pt")
    assert meta["data"]["preprocess"]["spacing"] == 1.0
    name = sorted(evaluation["test_volumes"])[0]
    case = next(c for c in list_cases(data_dir / "phantom") if c.name == name)
    volume = read_case(case)
    slices, labels, probs = segment_volume(
        net, volume, meta["data"], meta["inference"], "cpu", meta.get("model")
    )
    assert labels.shape == probs.shape == volume.image.shape == (6, 96, 128)
    assert slices.shape == (6, 96, 128)
    # penn.predict's labels are the run's test labels: the same counts against the truth
    truth = np.isin(volume.labels, [2])
    pred = labels == 1
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    assert [tp, fp, fn] == [evaluation["test_volumes"][name][1][i] for i in (0, 1, 3)]
