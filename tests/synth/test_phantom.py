"""Tests for the synthetic spine MRI phantom generator (penn.synth.phantom)."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from penn.metrics import best_interval_dice
from penn.synth.phantom import META_NAME, PhantomSpec, generate_volume, generate_volume_with_body
from penn.synth.phantom_dataset import write_phantom_dataset

SPEC = PhantomSpec(
    shape=(8, 64, 96),
    spacing=(3.0, 0.5, 0.5),
    n_vertebrae=3,
    tumor_probability=1.0,
    max_tumors=2,
    tumor_radius_px=(4.0, 8.0),
    tumor_contrast=(0.55, 1.6),
    noise_sigma=0.03,
    bias_strength=0.3,
)


def _volumes(spec: PhantomSpec, n: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    return [generate_volume_with_body(spec, np.random.default_rng([seed, i])) for i in range(n)]


def test_spec_coerces_config_lists() -> None:
    spec = PhantomSpec(
        shape=[8, 64, 96],
        spacing=[3, 0.5, 0.5],
        n_vertebrae=3,
        tumor_probability=1,
        max_tumors=2,
        tumor_radius_px=[4, 8],
        tumor_contrast=[0.55, 1.6],
        noise_sigma=0.03,
        bias_strength=0.3,
    )
    assert spec == SPEC and isinstance(spec.shape, tuple) and hash(spec) == hash(SPEC)


def test_seed_reproducibility() -> None:
    a_img, a_lab = generate_volume(SPEC, np.random.default_rng(123))
    b_img, b_lab = generate_volume(SPEC, np.random.default_rng(123))
    c_img, c_lab = generate_volume(SPEC, np.random.default_rng(124))
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)


def test_outputs_and_tumor_inside_bodies() -> None:
    for image, labels, body in _volumes(SPEC, 6):
        assert image.shape == labels.shape == SPEC.shape
        assert image.dtype == np.float32 and labels.dtype == np.uint8
        assert np.isfinite(image).all() and image.min() >= 0.0
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert (labels == 1).any()
        assert np.all(body[labels == 2]), "tumour outside the vertebral body mask"
        np.testing.assert_array_equal(labels > 0, body)  # tumour only overrides vertebra


def test_lateral_slices_show_smaller_or_no_bodies() -> None:
    spec = replace(SPEC, shape=(20, 64, 96), tumor_probability=0.0)
    ((_, labels, _),) = _volumes(spec, 1)
    per_slice = (labels == 1).sum(axis=(1, 2))
    assert per_slice[0] == 0 and per_slice[-1] == 0
    assert per_slice.max() == per_slice[5:15].max()


def test_tumor_probability_gives_mixed_batch() -> None:
    spec = replace(SPEC, tumor_probability=0.5)
    has = [bool((lab == 2).any()) for _, lab, _ in _volumes(spec, 16)]
    assert any(has) and not all(has)
    assert not any((lab == 2).any() for _, lab, _ in _volumes(replace(SPEC, max_tumors=0), 3))


def test_tumors_locally_visible() -> None:
    """Each lesion differs clearly from the marrow of its own body (hypo or hyper)."""
    spec = replace(SPEC, max_tumors=1, tumor_radius_px=(6.0, 8.0))
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)  # sagittal-slice neighbourhood
    ratios = []
    for image, labels, _ in _volumes(spec, 8, seed=5):
        tumor = ndimage.binary_erosion(labels == 2, in_plane)
        if tumor.sum() < 20:
            continue
        near = ndimage.binary_dilation(tumor, in_plane, iterations=4)
        marrow = near & ndimage.binary_erosion(labels == 1, in_plane, iterations=2)
        ratios.append(np.median(image[tumor]) / np.median(image[marrow]))
    assert len(ratios) >= 4
    assert all(abs(np.log(r)) > np.log(1.1) for r in ratios), ratios
    assert min(ratios) < 1.0 < max(ratios), "expected both hypo- and hyper-intense tumours"


def test_no_global_threshold_segments_tumor() -> None:
    vols = _volumes(SPEC, 8, seed=1)
    masks = [lab == 2 for _, lab, _ in vols]
    assert sum(m.any() for m in masks) >= 6
    assert best_interval_dice([img for img, _, _ in vols], masks) < 0.6


def test_write_phantom_dataset_layout_and_cache(tmp_path) -> None:
    root = tmp_path / "phantom"
    assert write_phantom_dataset(root, 3, SPEC, seed=7) == root
    ds = json.loads((root / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "MRI"} and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {"background": 0, "vertebra": 1, "tumor": 2}
    assert ds["numTraining"] == 3 == len(ds["cases"])
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [
        f"phantom_{i:03d}_0000.nii.gz" for i in range(3)
    ]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == [
        f"phantom_{i:03d}.nii.gz" for i in range(3)
    ]
    for i, case in enumerate(ds["cases"]):
        img, lab = nib.load(root / case["image"]), nib.load(root / case["label"])
        np.testing.assert_allclose(img.affine, np.diag([3.0, 0.5, 0.5, 1.0]))
        np.testing.assert_allclose(lab.affine, np.diag([3.0, 0.5, 0.5, 1.0]))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        expected = generate_volume(SPEC, np.random.default_rng([7, i]))
        assert np.asarray(img.dataobj).tobytes() == expected[0].tobytes()
        assert np.asarray(lab.dataobj).dtype == np.uint8
        np.testing.assert_array_equal(np.asarray(lab.dataobj), expected[1])
        assert case["has_tumor"] == bool((expected[1] == 2).any())
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    write_phantom_dataset(root, 3, SPEC, seed=7)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left"


def test_write_phantom_dataset_regenerates_on_change_and_protects_foreign(tmp_path) -> None:
    root = tmp_path / "phantom"
    write_phantom_dataset(root, 2, SPEC, seed=1)
    write_phantom_dataset(root, 3, SPEC, seed=2)
    meta = json.loads((root / META_NAME).read_text())
    assert (meta["n_volumes"], meta["seed"]) == (3, 2)
    assert len(list((root / "imagesTr").iterdir())) == 3
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_phantom_dataset(foreign, 1, SPEC, seed=0)
    assert (foreign / "keep.txt").read_text() == "x"


def test_sequence_changes_contrast_not_anatomy() -> None:
    """t1gd (default) and t2 share geometry and labels; CSF is dark on T1 and bright on T2."""
    spec = replace(SPEC, shape=(8, 96, 96))
    t1, lab1 = generate_volume(spec, np.random.default_rng(9))
    t2, lab2 = generate_volume(replace(spec, sequence="t2"), np.random.default_rng(9))
    np.testing.assert_array_equal(lab1, lab2)
    changed = np.abs(t2 - t1) > 0.3 * np.median(t1[lab1 == 1])
    assert changed.any()
    assert np.median(t2[changed]) > 2.0 * np.median(t1[changed])  # the canal: bright on T2
    with pytest.raises(ValueError, match="sequence"):
        replace(SPEC, sequence="flair")


def test_viscera_contrast_changes_only_the_blobs_in_front_of_the_column() -> None:
    spec = replace(SPEC, shape=(8, 96, 96), viscera_contrast=(1.6, 2.0))
    bright, lab1 = generate_volume(spec, np.random.default_rng(3))
    dim, lab2 = generate_volume(
        replace(spec, viscera_contrast=(1.1, 1.2)), np.random.default_rng(3)
    )
    np.testing.assert_array_equal(lab1, lab2)
    marrow = np.median(bright[lab1 == 1])
    changed = np.abs(bright - dim) > 0.2 * marrow
    assert changed.any() and not (changed & (lab1 > 0)).any()  # never inside a body
    ratio = np.median(bright[changed]) / np.median(dim[changed])
    assert 1.6 / 1.2 < ratio < 2.0 / 1.1  # the blobs' drawn contrasts, before blur and noise
