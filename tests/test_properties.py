"""Property tests (hypothesis): patch extraction against brute force, and I/O over random shapes,
spacings, orientations and intensity ranges, which either work or raise the documented DataError.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from penn.io.dataset import read_case
from penn.io.nifti import read_volume, write_nifti
from penn.io.volume import Case, DataError
from penn.patches.extract import gather_patches, grid_starts, label_patches, window_sums
from penn.preprocess import PLANE_AXIS, from_slices, preprocess_volume

FAST = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def label_stacks(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(seed).integers(0, 3, shape).astype(np.uint8)
    return labels, draw(st.integers(1, 9)), draw(st.integers(1, 6))


@FAST
@given(
    case=label_stacks(), rule=st.sampled_from(["fraction", "center"]), threshold=st.floats(0.0, 1.0)
)
def test_patch_labels_and_sums_equal_a_brute_force_loop(case, rule, threshold):
    labels, n, stride = case
    classes = [[1, 2], [2]]
    ys, xs = grid_starts(labels.shape[1], n, stride), grid_starts(labels.shape[2], n, stride)
    assert all(y + n <= labels.shape[1] for y in ys) and all(x + n <= labels.shape[2] for x in xs)
    sums = window_sums(labels == 2, n, stride)
    got = label_patches(labels, classes, n, stride, rule, threshold)
    assert got.shape == sums.shape == (labels.shape[0], len(ys), len(xs))
    for s in range(labels.shape[0]):
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                window = labels[s, y : y + n, x : x + n]
                assert sums[s, i, j] == (window == 2).sum()
                expected = 0
                for k, values in enumerate(classes, start=1):
                    member = np.isin(window, values)
                    if rule == "fraction":
                        hit = member.mean() >= threshold
                    else:
                        hit = member[n // 2, n // 2]
                    expected = k if hit else expected
                assert got[s, i, j] == expected


@FAST
@given(case=label_stacks(), count=st.integers(0, 20))
def test_gathered_patches_are_the_slices_windows(case, count):
    labels, n, stride = case
    slices = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)  # all distinct
    ys, xs = grid_starts(labels.shape[1], n, stride), grid_starts(labels.shape[2], n, stride)
    if ys.size == 0 or xs.size == 0:
        return
    rng = np.random.default_rng(count)
    s = rng.integers(0, labels.shape[0], count)
    y, x = rng.choice(ys, count), rng.choice(xs, count)
    patches = gather_patches(slices, s, y, x, n)
    assert patches.shape == (count, n, n)
    for p, (si, yi, xi) in enumerate(zip(s, y, x, strict=True)):
        np.testing.assert_array_equal(patches[p], slices[si, yi : yi + n, xi : xi + n])


@st.composite
def affines(draw):
    """Random voxel sizes, axis permutation and flips, and translation (no obliquity)."""
    spacing = [draw(st.floats(0.2, 6.0)) for _ in range(3)]
    perm = draw(st.permutations([0, 1, 2]))
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    affine = np.eye(4)
    affine[:3, :3] = 0
    for col, row in enumerate(perm):
        affine[row, col] = signs[col] * spacing[col]
    affine[:3, 3] = [draw(st.floats(-200, 200)) for _ in range(3)]
    return affine


@st.composite
def volumes(draw):
    shape = tuple(draw(st.integers(1, 7)) for _ in range(3))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32, np.float64]))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3, 1e6])) if dtype in (np.float32, np.float64) else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    else:
        array = (rng.standard_normal(shape) * scale + draw(st.floats(-1e3, 1e3))).astype(dtype)
        if draw(st.booleans()) and array.size > 1:
            array.flat[rng.integers(array.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return array


@FAST
@given(array=volumes(), affine=affines())
def test_any_orientation_reads_to_the_same_world_and_writes_back_the_files_grid(array, affine):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), path)
        if not np.isfinite(array.astype(np.float64)).all():
            with pytest.raises(DataError, match="scan.nii.gz: .* NaN/Inf voxels"):
                read_volume(path)
            return
        stored = nib.load(path).affine  # the header keeps the affine in float32
        volume = read_case(Case("scan", path, None))
        assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
        assert sorted(volume.image.shape) == sorted(array.shape)
        # every canonical voxel sits where the file put it: same world point, same value
        canon = np.indices(volume.image.shape).reshape(3, -1)
        world = volume.affine[:3, :3] @ canon + volume.affine[:3, 3:]
        native = np.linalg.solve(stored[:3, :3], world - stored[:3, 3:])
        native = np.round(native).astype(int)
        np.testing.assert_array_equal(volume.image.ravel(), array[tuple(native)].astype(np.float32))
        # writing a canonical array back gives the file's own grid, affine and orientation
        mask = (volume.image > np.median(volume.image)).astype(np.uint8)
        back = nib.load(write_nifti(Path(tmp) / "mask.nii.gz", mask, volume))
        np.testing.assert_array_equal(back.affine, stored)
        expected = (array.astype(np.float32) > np.median(volume.image)).astype(np.uint8)
        np.testing.assert_array_equal(np.asanyarray(back.dataobj), expected)


@FAST
@given(
    array=volumes(),
    plane=st.sampled_from(sorted(PLANE_AXIS)),
    sigma=st.sampled_from([0.0, 1.0, 2.0]),
    noise=st.sampled_from([0.0, 0.02, 0.5]),
)
def test_preprocessing_any_intensity_range_gives_finite_slices_in_unit_range(
    array, plane, sigma, noise
):
    image = array.astype(np.float32)
    if not np.isfinite(image).all():  # io refuses these before preprocessing sees them
        return
    slices = preprocess_volume(image, plane, noise, sigma, (0.5, 99.5))
    assert slices.dtype == np.float32 and np.isfinite(slices).all()
    assert slices.min() >= 0.0 and slices.max() <= 1.0
    assert from_slices(slices, plane).shape == image.shape


def test_a_file_that_is_not_nifti_raises_data_error(tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"\x1f\x8b" + bytes(200))
    with pytest.raises(DataError, match="scan.nii.gz: cannot read NIfTI file"):
        read_volume(tmp_path / "scan.nii.gz")


@FAST
@given(array=volumes(), affine=affines())
def test_segmenting_any_small_volume_gives_a_mask_on_the_files_grid(array, affine):
    from penn.reports.scan_outputs import segment_volume
    from tests.predict_helpers import bright_region_net, meta

    info = meta(3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), path)
        try:
            volume = read_case(Case("scan", path, None))
        except DataError:
            assert not np.isfinite(array.astype(np.float64)).all()
            return
        _, labels, probs = segment_volume(
            bright_region_net(3), volume, info["data"], info["inference"], "cpu"
        )
        assert labels.shape == volume.image.shape and probs.shape == (*labels.shape, 3)
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
        back = nib.load(write_nifti(Path(tmp) / "mask.nii.gz", labels, volume))
        assert back.shape == array.shape
        np.testing.assert_array_equal(back.affine, nib.load(path).affine)
