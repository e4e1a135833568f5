"""The model penn ships: inside the package, weights only, and it segments a scan."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from penn.checkpoint import FORMAT, load_model
from penn.synth.phantom import PhantomSpec, generate_volume
from penn.weights import DEFAULT, SHIPPED, shipped_model
from tests.predict_helpers import save_nifti


def test_every_shipped_model_is_a_small_weights_only_penn_model_file():
    for name in SHIPPED:
        path = shipped_model(name)
        assert path.stat().st_size <= 25 * 2**20
        blob = torch.load(path, map_location="cpu", weights_only=True)
        assert blob["format"] == FORMAT
        net, meta = load_model(path)
        assert meta["data"]["class_names"] == ["vertebra"] and meta["data"]["classes"] == [[1]]
        assert sum(p.numel() for p in net.parameters()) > 0


def test_an_unknown_shipped_name_lists_the_shipped_ones():
    with pytest.raises(KeyError, match=DEFAULT):
        shipped_model("no-such-model")


def test_predict_without_a_model_file_segments_with_the_shipped_model(tmp_path):
    """A T2-like phantom at 1 x 0.8 x 0.8 mm: the mask has the scan's grid, the label value of
    vertebra (1) only, and covers the phantom's vertebral bodies better than chance."""
    from tests.predict_helpers import run_predict_shipped

    spec = PhantomSpec(
        shape=(6, 200, 240),
        spacing=(1.0, 0.8, 0.8),
        n_vertebrae=4,
        tumor_probability=0.0,
        max_tumors=0,
        tumor_radius_px=(10.0, 12.0),
        tumor_contrast=(1.5, 2.0),
        noise_sigma=0.03,
        bias_strength=0.2,
        sequence="t2",
    )
    image, labels = generate_volume(spec, np.random.default_rng(3))
    affine = np.diag([1.0, 0.8, 0.8, 1.0])
    scan = save_nifti(tmp_path / "scan.nii.gz", image.astype(np.float32), affine)
    reports = run_predict_shipped(scan, tmp_path / "out", "overlays=0", "mesh.enabled=false")
    assert reports[0]["model"] == str(shipped_model())
    mask = nib.load(tmp_path / "out" / "scan" / "mask.nii.gz")
    np.testing.assert_array_equal(mask.affine, nib.load(scan).affine)
    values = np.asanyarray(mask.dataobj)
    assert values.shape == image.shape and set(np.unique(values)) <= {0, 1}
    body = labels > 0
    found = values > 0
    dice = 2 * (found & body).sum() / (found.sum() + body.sum())
    assert dice > 0.5, dice
