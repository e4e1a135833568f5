"""The model penn ships: inside the package, weights only, and it segments a scan."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from penn.checkpoint import FORMAT, load_model
from penn.synth.phantom import PhantomSpec, generate_volume
from penn.weights import DEFAULT, SHIPPED, model_file, shipped_model
from tests.predict_helpers import save_nifti

# the classes (names, label values) each shipped model segments
CLASSES = {
    "vertebra": (["vertebra"], [[1]]),
    "lesion": (["vertebra", "tumor"], [[1], [2]]),
}


def test_every_shipped_model_is_a_small_weights_only_penn_model_file():
    assert set(SHIPPED) == set(CLASSES)
    for name in SHIPPED:
        path = shipped_model(name)
        assert path.stat().st_size <= 25 * 2**20
        blob = torch.load(path, map_location="cpu", weights_only=True)
        assert blob["format"] == FORMAT
        net, meta = load_model(path)
        assert (meta["data"]["class_names"], meta["data"]["classes"]) == CLASSES[name]
        assert sum(p.numel() for p in net.parameters()) > 0


def test_ckpt_names_a_shipped_model_or_a_file(tmp_path, monkeypatch):
    assert model_file(None) == str(shipped_model(DEFAULT))
    assert model_file("lesion") == str(shipped_model("lesion")) != model_file("vertebra")
    assert model_file("runs/model.pt") == "runs/model.pt"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lesion").write_bytes(b"a file of that name")
    assert model_file("lesion") == "lesion"  # a path wins over the name it shadows


def test_an_unknown_shipped_name_lists_the_shipped_ones():
    with pytest.raises(KeyError, match=DEFAULT):
        shipped_model("no-such-model")


SPACING = (1.0, 0.8, 0.8)  # mm, the T2-like phantom's voxels


def t2_phantom(n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """A T2-like phantom of four bodies and no tumour, sagittal slices of 200 x 240 at
    1 x 0.8 x 0.8 mm: (image, labels)."""
    spec = PhantomSpec(
        shape=(n_slices, 200, 240),
        spacing=SPACING,
        n_vertebrae=4,
        tumor_probability=0.0,
        max_tumors=0,
        tumor_radius_px=(10.0, 12.0),
        tumor_contrast=(1.5, 2.0),
        noise_sigma=0.03,
        bias_strength=0.2,
        sequence="t2",
    )
    return generate_volume(spec, np.random.default_rng(3))


def test_predict_without_a_model_file_segments_with_the_shipped_model(tmp_path):
    """A T2-like phantom at 1 x 0.8 x 0.8 mm: the mask has the scan's grid, the label value of
    vertebra (1) only, and covers the phantom's vertebral bodies better than chance."""
    from tests.predict_helpers import run_predict_shipped

    image, labels = t2_phantom(6)
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


def test_the_shipped_lesion_model_segments_vertebrae_and_lesions(tmp_path):
    """A T2-like phantom with two lesions drawn by the benchmark's lesion model: `ckpt=lesion`
    writes a mask of the scan's grid with label values 0 / 1 / 2 whose vertebra-or-tumour voxels
    cover the bodies, and a report whose lesions are the mask's 3D tumour components with their
    volume in mL and the levels they touch (how well it finds lesions is the lesion
    benchmark's to measure, on real anatomy)."""
    from dataclasses import replace

    from omegaconf import OmegaConf
    from scipy import ndimage

    from penn.synth.lesions import LesionSpec, implant_lesions, lesion_rng
    from tests.predict_helpers import run_predict_shipped
    from tests.synth.test_lesions import lesion_cfg

    lesions = OmegaConf.to_container(lesion_cfg([]).data.lesions, resolve=True)
    two = replace(LesionSpec.from_config(lesions), none_probability=0.0, count=(2, 2))
    image, labels = t2_phantom(8)
    image, labels, _ = implant_lesions(
        image.astype(np.float32),
        labels.astype(np.uint8),
        SPACING,
        replace(two, radius_mm=(6.0, 8.0)),
        lesion_rng(1, "phantom"),
    )
    affine = np.diag([1.0, 0.8, 0.8, 1.0])
    scan = save_nifti(tmp_path / "scan.nii.gz", image, affine)
    report = run_predict_shipped(
        scan, tmp_path / "out", "ckpt=lesion", "overlays=0", "mesh.enabled=false"
    )[0]
    assert report["model"] == str(shipped_model("lesion"))
    values = np.asanyarray(nib.load(tmp_path / "out" / "scan" / "mask.nii.gz").dataobj)
    assert values.shape == image.shape and set(np.unique(values)) <= {0, 1, 2}
    body, found = labels > 0, values > 0
    assert 2 * (found & body).sum() / (found.sum() + body.sum()) > 0.5
    predicted, count = ndimage.label(values == 2, structure=np.ones((3, 3, 3)))
    tumor = report["tumor"]
    assert tumor["components"] == count == len(tumor["lesions"]) >= 1
    sizes = sorted(np.bincount(predicted.ravel())[1:].tolist(), reverse=True)
    assert [lesion["voxels"] for lesion in tumor["lesions"]] == sizes
    for lesion in tumor["lesions"]:
        assert lesion["ml"] == pytest.approx(lesion["voxels"] * 0.64 / 1000)
        assert set(lesion["levels"]) <= {f"VB{i}" for i in range(1, 10)}
    assert report["volumes"]["tumor"]["voxels"] == int((values == 2).sum())
