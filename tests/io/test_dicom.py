"""DICOM series: LPS -> RAS geometry, slice sorting, rescaling, and the same mask as NIfTI."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from penn.io.dicom import read_dicom_series
from penn.io.volume import DataError
from tests.predict_helpers import run_predict, save_nifti, spine_volume, write_model

QUICK = ("overlays=0", "mesh.enabled=false")

CONF = Path(__file__).resolve().parents[2] / "conf"

# A sagittal series: rows run posterior (LPS +y), columns run down (LPS -z), slices step to the
# patient's right (LPS -x). Pixel spacing: 0.5 mm between rows, 0.6 mm between columns.
ROW_DIR, COL_DIR = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)
PIXEL_SPACING = (0.5, 0.6)
FIRST = np.array([40.0, -30.0, 25.0])  # LPS mm, centre of the first pixel of the first slice
STEP = np.array([-3.0, 0.0, 0.0])
SLOPE, INTERCEPT = 0.5, -20.0

# The same geometry worked out by hand in RAS for arrays indexed [column, row, slice]:
# column i moves along ROW_DIR by 0.6 mm -> RAS (0, -0.6, 0); row j along COL_DIR by 0.5 mm ->
# RAS (0, 0, -0.5); slice k by STEP -> RAS (+3, 0, 0); origin (-40, +30, 25).
EXPECTED_AFFINE = np.array(
    [[0, 0, 3.0, -40.0], [-0.6, 0, 0, 30.0], [0, -0.5, 0, 25.0], [0, 0, 0, 1]]
)


def write_series(folder: Path, native: np.ndarray, order: list[int] | None = None) -> Path:
    """One DICOM file per slice of ``native`` ([column, row, slice] uint16 stored values).

    Files are named in ``order`` (default: reversed), so reading must sort by position.
    """
    folder.mkdir(parents=True)
    series, study, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    n = native.shape[2]
    for file_index, k in enumerate(order or list(range(n))[::-1]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Phantom^Spine", "P0"
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "", "O", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.SeriesNumber, ds.FrameOfReferenceUID = 3, frame_of_reference
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = file_index + 1  # deliberately not the spatial order
        ds.ImageOrientationPatient = [*ROW_DIR, *COL_DIR]
        ds.ImagePositionPatient = (FIRST + k * STEP).tolist()
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = 3.0
        ds.Columns, ds.Rows = native.shape[0], native.shape[1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
        ds.PixelData = np.ascontiguousarray(native[:, :, k].T).astype("<u2").tobytes()
        ds.save_as(folder / f"IM{file_index:04d}.dcm", enforce_file_format=True)
    return folder


def stored_values(shape=(16, 12, 5)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)


def test_series_affine_is_the_hand_built_ras_affine_and_values_are_rescaled(tmp_path):
    stored = stored_values()
    volume = read_dicom_series(write_series(tmp_path / "series", stored))
    np.testing.assert_allclose(volume.original_affine, EXPECTED_AFFINE, atol=1e-9)
    # canonical order is RAS: check a voxel's world position and value against the native grid
    np.testing.assert_allclose(volume.spacing, (3.0, 0.6, 0.5))
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    for i, j, k in [(0, 0, 0), (15, 11, 4), (3, 7, 2)]:
        world = EXPECTED_AFFINE @ [i, j, k, 1]
        c = np.round(np.linalg.inv(volume.affine) @ world).astype(int)[:3]
        assert volume.image[tuple(c)] == pytest.approx(stored[i, j, k] * SLOPE + INTERCEPT)


def test_a_shuffled_series_reads_like_a_sorted_one(tmp_path):
    stored = stored_values()
    a = read_dicom_series(write_series(tmp_path / "a", stored, order=[0, 1, 2, 3, 4]))
    b = read_dicom_series(write_series(tmp_path / "b", stored, order=[3, 0, 4, 2, 1]))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_dicom_series_gives_the_same_mask_as_the_nifti_of_its_volume(tmp_path):
    model = write_model(tmp_path / "model.pt", 3)
    image, _ = spine_volume((8, 40, 72))  # canonical (L-R, P-A, I-S)
    # the series' native grid [column, row, slice] is (A->P, S->I, L->R): flip and permute
    native = np.transpose(image[:, ::-1, ::-1], (1, 2, 0))
    stored = np.round((native - INTERCEPT) / SLOPE).astype(np.uint16)
    write_series(tmp_path / "dicom" / "series1", stored)
    save_nifti(tmp_path / "series1.nii.gz", stored * SLOPE + INTERCEPT, EXPECTED_AFFINE)
    run_predict(model, tmp_path / "dicom" / "series1", tmp_path / "from_dicom", *QUICK)
    run_predict(model, tmp_path / "series1.nii.gz", tmp_path / "from_nifti", *QUICK)
    from_dicom = nib.load(tmp_path / "from_dicom" / "series1" / "mask.nii.gz")
    from_nifti = nib.load(tmp_path / "from_nifti" / "series1" / "mask.nii.gz")
    np.testing.assert_allclose(from_dicom.affine, EXPECTED_AFFINE, atol=1e-9)
    np.testing.assert_array_equal(
        np.asanyarray(from_dicom.dataobj), np.asanyarray(from_nifti.dataobj)
    )
    assert set(np.unique(np.asanyarray(from_dicom.dataobj))) == {0, 1, 2}
    # a batch folder whose subfolder is the series gives the same mask again
    run_predict(model, tmp_path / "dicom", tmp_path / "batch", *QUICK)
    batch = nib.load(tmp_path / "batch" / "series1" / "mask.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(batch.dataobj), np.asanyarray(from_dicom.dataobj))


def test_a_non_dicom_file_in_a_series_is_named(tmp_path):
    folder = write_series(tmp_path / "series", stored_values())
    (folder / "IM9999.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DataError, match="IM9999.dcm: not a readable DICOM file"):
        read_dicom_series(folder)


def test_duplicate_slice_positions_are_refused(tmp_path):
    with pytest.raises(DataError, match="two slices share position"):
        read_dicom_series(write_series(tmp_path / "series", stored_values(), order=[0, 1, 1, 2]))


def test_uneven_slice_spacing_is_refused(tmp_path):
    with pytest.raises(DataError, match="slice spacing is not uniform"):
        read_dicom_series(write_series(tmp_path / "series", stored_values(), order=[0, 1, 3]))


def test_missing_geometry_is_named(tmp_path):
    folder = write_series(tmp_path / "series", stored_values((4, 4, 2)))
    path = folder / "IM0000.dcm"
    ds = pydicom.dcmread(path)
    del ds.ImageOrientationPatient
    ds.save_as(path)
    with pytest.raises(DataError, match=r"IM0000.dcm: DICOM slice lacks \['ImageOrientation"):
        read_dicom_series(folder)


def test_a_folder_of_two_series_gives_one_scan_per_series(tmp_path):
    """Two series (different values) in one folder: two scans named by SeriesNumber, each read
    as its own volume, equal to reading its series alone."""
    import shutil

    from penn.io.inputs import list_scans, read_scan

    first, second = stored_values(), stored_values()[::-1].copy()
    alone = {}
    for number, (name, stored) in enumerate((("a", first), ("b", second)), start=7):
        folder = write_series(tmp_path / name, stored)
        for path in folder.iterdir():  # the series number, as scanners write it
            ds = pydicom.dcmread(path)
            ds.SeriesNumber = number
            ds.save_as(path, enforce_file_format=True)
        alone[number] = read_dicom_series(folder)
    mixed = tmp_path / "exam"
    mixed.mkdir()
    for name in ("a", "b"):
        for path in (tmp_path / name).iterdir():
            shutil.copy(path, mixed / f"{name}_{path.name}")
    with pytest.raises(DataError, match="holds 2 DICOM series"):
        read_dicom_series(mixed)
    scans = list_scans(mixed)
    assert [s.name for s in scans] == ["exam_s7", "exam_s8"]
    for scan, number in zip(scans, (7, 8), strict=True):
        np.testing.assert_array_equal(read_scan(scan).image, alone[number].image)
        np.testing.assert_array_equal(read_scan(scan).affine, alone[number].affine)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=str)
def test_a_compressed_series_reads_like_the_uncompressed_one(tmp_path, syntax):
    stored = stored_values((64, 72, 4))  # JPEG 2000's resolution levels need 64 px or more
    plain = write_series(tmp_path / "plain", stored)
    packed = tmp_path / "packed"
    packed.mkdir()
    for path in sorted(plain.iterdir()):
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(packed / path.name)
    assert pydicom.dcmread(next(packed.iterdir())).file_meta.TransferSyntaxUID == syntax
    reference, volume = read_dicom_series(plain), read_dicom_series(packed)
    np.testing.assert_array_equal(volume.image, reference.image)
    np.testing.assert_allclose(volume.affine, reference.affine)


def test_an_enhanced_multiframe_file_reads_like_its_series(tmp_path):
    """highdicom converts the classic series into one enhanced MR file (frames in file order,
    geometry in the functional groups): the same voxels, affine and rescaling come out."""
    stored = stored_values()
    plain = write_series(tmp_path / "plain", stored)
    legacy = [pydicom.dcmread(p) for p in sorted(plain.iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy,
        series_instance_uid=generate_uid(),
        series_number=7,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    folder = tmp_path / "enhanced"
    folder.mkdir()
    enhanced.save_as(folder / "enhanced.dcm")
    assert int(pydicom.dcmread(folder / "enhanced.dcm").NumberOfFrames) == stored.shape[2]
    reference, volume = read_dicom_series(plain), read_dicom_series(folder)
    np.testing.assert_array_equal(volume.image, reference.image)
    np.testing.assert_allclose(volume.original_affine, EXPECTED_AFFINE, atol=1e-6)


def test_dicom_input_gets_a_dicom_seg_whose_frames_are_the_mask(tmp_path):
    """seg.dcm read back with highdicom: one segment per class, and the frames of each source
    slice equal that slice of mask.nii.gz (the series' own grid, slices sorted by position)."""
    model = write_model(tmp_path / "model.pt", 3)
    image, _ = spine_volume((8, 40, 72))
    native = np.transpose(image[:, ::-1, ::-1], (1, 2, 0))
    stored = np.round((native - INTERCEPT) / SLOPE).astype(np.uint16)
    series = write_series(tmp_path / "series1", stored)
    run_predict(model, series, tmp_path / "out", *QUICK)
    mask = np.asanyarray(nib.load(tmp_path / "out" / "series1" / "mask.nii.gz").dataobj)
    seg = hd.seg.segread(tmp_path / "out" / "series1" / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["vertebra", "tumor"]
    # the files' slice k lies at FIRST + k * STEP: sort the source UIDs by that position
    sources = sorted(
        (pydicom.dcmread(p) for p in series.iterdir()),
        key=lambda ds: float(np.asarray(ds.ImagePositionPatient) @ (STEP / np.linalg.norm(STEP))),
    )
    uids = [ds.SOPInstanceUID for ds in sources]
    for number in (1, 2):
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number]
        )[..., 0]  # (slice, row, column)
        np.testing.assert_array_equal(frames, (mask == number).transpose(2, 1, 0))
    assert (mask == 1).any() and (mask == 2).any()
    run_predict(model, series, tmp_path / "plain", *QUICK, "dicom_seg=false")
    assert not (tmp_path / "plain" / "series1" / "seg.dcm").exists()


def test_a_series_highdicom_cannot_reference_still_gets_its_mask(tmp_path, caplog):
    """Without PatientID (a stripped export) no SEG can be built: one warning, the rest written."""
    model = write_model(tmp_path / "model.pt", 3)
    series = write_series(tmp_path / "series1", stored_values((40, 36, 4)))
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        del ds.PatientID
        ds.save_as(path)
    with caplog.at_level("WARNING"):
        run_predict(model, series, tmp_path / "out", *QUICK)
    assert (tmp_path / "out" / "series1" / "mask.nii.gz").is_file()
    assert not (tmp_path / "out" / "series1" / "seg.dcm").exists()
    assert any(
        "no DICOM SEG" in r.getMessage() and "PatientID" in r.getMessage() for r in caplog.records
    )
