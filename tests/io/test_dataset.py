import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from penn.io.dataset import list_cases, read_case
from penn.io.nifti import write_nifti
from penn.io.volume import DataError


def make_dataset(root, images, labels, label_names=None, affine=None):
    """Writes a tiny raw dataset: images/labels are dicts name -> array."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    names = label_names or {"background": 0, "vertebra": 1, "tumor": 2}
    (root / "dataset.json").write_text(json.dumps({"labels": names, "channel_names": {"0": "MRI"}}))
    aff = np.diag([2.0, 0.5, 0.5, 1.0]) if affine is None else affine
    for name, arr in images.items():
        nib.save(nib.Nifti1Image(arr, aff), root / "imagesTr" / f"{name}_0000.nii.gz")
    for name, arr in labels.items():
        nib.save(nib.Nifti1Image(arr, aff), root / "labelsTr" / f"{name}.nii.gz")
    return root


def good(shape=(4, 6, 8)):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 2:4, 2:5] = 1
    return image, labels


def test_round_trip_keeps_affine_and_orientation(tmp_path):
    image, labels = good()
    # an LPS-like, oblique-free affine with a translation: reading reorients to RAS
    affine = np.array([[-2.0, 0, 0, 10], [0, -0.5, 0, 20], [0, 0, 0.5, -5], [0, 0, 0, 1]])
    root = make_dataset(tmp_path / "ds", {"c1": image}, {"c1": labels}, affine=affine)
    volume = read_case(list_cases(root)[0], [0, 1, 2])
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    np.testing.assert_allclose(volume.image, image[::-1, ::-1, :])
    out = write_nifti(tmp_path / "out" / "c1.nii.gz", volume.labels, volume)
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, affine)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels)
    assert volume.spacing == (2.0, 0.5, 0.5)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere: data folder not found"):
        list_cases(tmp_path / "nowhere")


def test_missing_label_file_is_named(tmp_path):
    image, _ = good()
    root = make_dataset(tmp_path / "ds", {"case_03": image}, {})
    with pytest.raises(DataError, match="case_03_0000.nii.gz: no label file"):
        list_cases(root)


def test_shape_mismatch_names_the_label_file(tmp_path):
    image, labels = good()
    root = make_dataset(tmp_path / "ds", {"case_03": image}, {"case_03": labels[:, :, :-1]})
    with pytest.raises(DataError, match=r"case_03.nii.gz: shape \(4, 6, 7\) != image"):
        read_case(list_cases(root)[0], [0, 1, 2])


def test_labels_outside_known_classes(tmp_path):
    image, labels = good()
    labels[0, 0, 0] = 7
    root = make_dataset(tmp_path / "ds", {"case_03": image}, {"case_03": labels})
    with pytest.raises(DataError, match=r"case_03.nii.gz: label values \[7\] outside"):
        read_case(list_cases(root)[0], [0, 1, 2])


def test_nan_voxels_are_refused(tmp_path):
    image, labels = good()
    image[0, 0, :3] = np.nan
    root = make_dataset(tmp_path / "ds", {"case_03": image}, {"case_03": labels})
    with pytest.raises(DataError, match="case_03_0000.nii.gz: 3 NaN/Inf voxels"):
        read_case(list_cases(root)[0], [0, 1, 2])


@pytest.mark.parametrize("shape", [(6, 8), (4, 6, 8, 2)])
def test_wrong_dimensionality_is_refused(tmp_path, shape):
    image = np.zeros(shape, np.float32)
    root = make_dataset(tmp_path / "ds", {"case_03": image}, {"case_03": np.zeros(shape, np.uint8)})
    with pytest.raises(DataError, match="case_03_0000.nii.gz: expected a 3D volume"):
        read_case(list_cases(root)[0], [0, 1, 2])


def test_corrupt_gzip_is_refused(tmp_path):
    image, labels = good()
    root = make_dataset(tmp_path / "ds", {"case_03": image}, {"case_03": labels})
    path = root / "imagesTr" / "case_03_0000.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti file at all" * 20)[:60])
    with pytest.raises(DataError, match="case_03_0000.nii.gz: cannot read NIfTI"):
        read_case(list_cases(root)[0], [0, 1, 2])


def test_missing_dataset_json_is_named(tmp_path):
    from penn.io.dataset import read_dataset_json

    with pytest.raises(DataError, match="dataset.json not found"):
        read_dataset_json(tmp_path)
