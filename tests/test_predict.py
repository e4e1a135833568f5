"""`penn predict`: geometry of the written results, reports, meshes, folders and model checks."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch

from penn.checkpoint import CheckpointError, load_model, save_model
from penn.cli import main as penn_cli
from penn.io.inputs import PredictError
from penn.reports.clinical import class_volumes
from penn.reports.mesh import surface_mesh
from tests.predict_helpers import (
    bright_region_net,
    meta,
    run_predict,
    save_nifti,
    spine_volume,
    write_model,
)
from tests.processes import run_module

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SPACING = (3.0, 0.5, 0.5)
# a RAS affine with a translation; the files below store the same world object in other orders
BASE = np.array([[3.0, 0, 0, -15.0], [0, 0.5, 0, -10.0], [0, 0, 0.5, 20.0], [0, 0, 0, 1]])


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "binary": write_model(folder / "binary.pt", 1),
        "multi": write_model(folder / "multi.pt", 3),
    }


def reoriented(array: np.ndarray, codes: str) -> nib.Nifti1Image:
    """The canonical (RAS) array stored with axes ``codes``: same world object, other order."""
    img = nib.Nifti1Image(array, BASE)
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes)
    )
    out = img.as_reoriented(ornt)
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    out.header.set_xyzt_units("mm")
    return out


def canonical(img: nib.Nifti1Image) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(img).dataobj)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR"])
def test_mask_keeps_the_inputs_affine_header_and_orientation(models, tmp_path, codes):
    image, _ = spine_volume()
    scan = reoriented(image, codes)
    nib.save(scan, tmp_path / "scan.nii.gz")
    run_predict(models["multi"], tmp_path / "scan.nii.gz", tmp_path / "out", "overlays=0")
    mask = nib.load(tmp_path / "out" / "scan" / "mask.nii.gz")
    np.testing.assert_array_equal(mask.affine, scan.affine)  # exactly, not approximately
    assert nib.aff2axcodes(mask.affine) == tuple(codes)
    assert mask.shape == scan.shape and mask.get_data_dtype() == np.uint8
    assert int(mask.header["sform_code"]) == 1 and mask.header.get_xyzt_units()[0] == "mm"
    # the same world object gives the same segmentation whatever the file's axis order
    if codes != "RAS":
        nib.save(reoriented(image, "RAS"), tmp_path / "ras.nii.gz")
        run_predict(models["multi"], tmp_path / "ras.nii.gz", tmp_path / "ras_out", "overlays=0")
        reference = nib.load(tmp_path / "ras_out" / "ras" / "mask.nii.gz")
        np.testing.assert_array_equal(canonical(mask), np.asanyarray(reference.dataobj))
    assert np.asanyarray(mask.dataobj).max() == 2  # both classes found: a real test of geometry


def test_reported_volume_is_voxel_count_times_voxel_volume(models, tmp_path):
    image, _ = spine_volume()
    nib.save(reoriented(image, "LPS"), tmp_path / "scan.nii.gz")
    run_predict(models["multi"], tmp_path / "scan.nii.gz", tmp_path / "out", "overlays=0")
    folder = tmp_path / "out" / "scan"
    mask = np.asanyarray(nib.load(folder / "mask.nii.gz").dataobj)
    report = json.loads((folder / "report.json").read_text())
    voxel_ml = 3.0 * 0.5 * 0.5 / 1000.0
    assert report["voxel_volume_ml"] == pytest.approx(voxel_ml)
    with open(folder / "report.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    for k, name in enumerate(["vertebra", "tumor"], start=1):
        count = int((mask == k).sum())
        assert count > 0
        assert report["volumes"][name]["voxels"] == count
        assert report["volumes"][name]["ml"] == pytest.approx(count * voxel_ml)
        assert float(row[f"{name}_ml"]) == pytest.approx(count * voxel_ml, abs=1e-4)


def test_class_volumes_of_a_hand_counted_mask():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, :3] = 1
    labels[3, 3, 3] = 2
    oblique = np.eye(4)
    oblique[:3, :3] = np.array([[0, -2.0, 0], [1.0, 0, 0], [0, 0, 1.5]])  # 2 x 1 x 1.5 mm voxels
    volumes = class_volumes(labels, ["vertebra", "tumor"], oblique)
    assert volumes == {
        "vertebra": {"voxels": 3, "ml": pytest.approx(0.009)},
        "tumor": {"voxels": 1, "ml": pytest.approx(0.003)},
    }


def test_lesions_name_the_levels_they_touch_inferior_to_superior(models, tmp_path):
    image, labels = spine_volume()
    zz, yy = np.meshgrid(np.arange(72), np.arange(40))
    second = (yy - 20) ** 2 + (zz - 61) ** 2 <= 16  # a second lesion in the top body
    image[3:7][:, second] = 1000.0
    # stored inferior-up (RPI): levels must still count from the world's inferior end
    nib.save(reoriented(image, "RPI"), tmp_path / "scan.nii.gz")
    own = "report.bodies_model=null"  # the model's own vertebra and tumour classes
    run_predict(models["multi"], tmp_path / "scan.nii.gz", tmp_path / "out", "overlays=0", own)
    report = json.loads((tmp_path / "out" / "scan" / "report.json").read_text())
    assert report["vertebrae"]["count"] == 3
    assert report["vertebrae"]["source"] == "model class 'vertebra'"
    assert report["tumor"]["components"] == 2
    assert sorted(
        lesion["levels"] == ["VB2"] or lesion["levels"] == ["VB3"]
        for lesion in report["tumor"]["lesions"]
    ) == [True, True]
    assert report["tumor"]["levels"] == ["VB2", "VB3"]
    # the binary model has no vertebra class: levels come from a given mask, or are null
    nib.save(reoriented(labels, "RPI"), tmp_path / "bodies.nii.gz")
    run_predict(
        models["binary"],
        tmp_path / "scan.nii.gz",
        tmp_path / "bin",
        "overlays=0",
        f"vertebrae={tmp_path / 'bodies.nii.gz'}",
    )
    report = json.loads((tmp_path / "bin" / "scan" / "report.json").read_text())
    assert report["tumor"]["levels"] == ["VB2", "VB3"]
    assert report["vertebrae"]["source"] == "vertebrae mask"
    run_predict(models["binary"], tmp_path / "scan.nii.gz", tmp_path / "none", "overlays=0", own)
    report = json.loads((tmp_path / "none" / "scan" / "report.json").read_text())
    assert report["tumor"]["levels"] is None
    assert "no 'vertebra' class" in report["tumor"]["levels_note"]
    assert report["tumor"]["components"] == 2
    # or from another model's vertebra class, segmented as well
    run_predict(
        models["binary"],
        tmp_path / "scan.nii.gz",
        tmp_path / "other",
        "overlays=0",
        f"report.bodies_model={models['multi']}",
    )
    report = json.loads((tmp_path / "other" / "scan" / "report.json").read_text())
    assert report["vertebrae"] == {
        "source": "model multi.pt class 'vertebra'",
        "count": 3,
        "order": "VB1 most inferior",
    }
    assert report["tumor"]["levels"] == ["VB2", "VB3"]
    with pytest.raises(PredictError, match="report.bodies_model=.*binary.pt has no 'vertebra'"):
        run_predict(
            models["multi"],
            tmp_path / "scan.nii.gz",
            tmp_path / "bad",
            f"report.bodies_model={models['binary']}",
        )
    assert not (tmp_path / "bad").exists()  # refused before any scan was read


def test_probabilities_and_overlays_with_truth(models, tmp_path):
    image, labels = spine_volume()
    nib.save(reoriented(image, "LPS"), tmp_path / "scan_0000.nii.gz")
    nib.save(reoriented(labels, "LPS"), tmp_path / "truth.nii.gz")
    run_predict(
        models["binary"],
        tmp_path / "scan_0000.nii.gz",
        tmp_path / "out",
        "write_probabilities=true",
        "overlays=2",
        f"labels={tmp_path / 'truth.nii.gz'}",
    )
    folder = tmp_path / "out" / "scan"  # nnU-Net's channel suffix is dropped from the name
    probs = nib.load(folder / "probabilities.nii.gz")
    mask = nib.load(folder / "mask.nii.gz")
    assert probs.get_data_dtype() == np.float32
    np.testing.assert_array_equal(probs.affine, mask.affine)
    p = np.asanyarray(probs.dataobj)
    assert 0.0 <= p.min() and p.max() <= 1.0
    # no post-processing in this model: the mask is the probability map at the threshold, with
    # the tumour's label value of the training data (2), not its class index (1)
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), 2 * (p >= 0.5).astype(np.uint8))
    assert "2 tumor 216 101 79 255" in (folder / "mask.ctbl").read_text().splitlines()
    itksnap = (folder / "mask_itksnap.txt").read_text().splitlines()
    assert itksnap[0] == "# ITK-SnAP Label Description File"
    assert itksnap[-1].split()[0] == "2" and itksnap[-1].endswith('"tumor"')
    pngs = sorted(folder.glob("overlay_slice*.png"))
    assert len(pngs) == 2
    with_truth = mpimg.imread(pngs[0]).shape[1]
    run_predict(models["binary"], tmp_path / "scan_0000.nii.gz", tmp_path / "plain", "overlays=1")
    without = mpimg.imread(next((tmp_path / "plain" / "scan").glob("*.png"))).shape[1]
    assert with_truth > without  # the truth panel is there: image, truth, prediction, overlay
    files = json.loads((folder / "report.json").read_text())["files"]
    assert files["overlays"] == [p.name for p in pngs]
    # a multi-class model writes one probability volume per class (background first)
    run_predict(
        models["multi"],
        tmp_path / "scan_0000.nii.gz",
        tmp_path / "multi",
        "overlays=0",
        "write_probabilities=true",
        "mesh.enabled=false",
    )
    probs = nib.load(tmp_path / "multi" / "scan" / "probabilities.nii.gz")
    mask = np.asanyarray(nib.load(tmp_path / "multi" / "scan" / "mask.nii.gz").dataobj)
    assert probs.shape == (*mask.shape, 3)
    np.testing.assert_array_equal(np.asanyarray(probs.dataobj).argmax(axis=-1), mask)


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    blob = path.read_bytes()
    end = blob.index(b"end_header\n") + len(b"end_header\n")
    header = blob[:end].decode().splitlines()
    assert header[1] == "format binary_little_endian 1.0"
    n_vert = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    n_face = int(next(h for h in header if h.startswith("element face")).split()[-1])
    verts = np.frombuffer(blob, "<f4", n_vert * 3, end).reshape(-1, 3)
    faces = np.frombuffer(blob, [("n", "u1"), ("v", "<i4", 3)], n_face, end + 12 * n_vert)
    assert (faces["n"] == 3).all() and len(blob) == end + 12 * n_vert + 13 * n_face
    return verts, faces["v"]


def read_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    blob = path.read_bytes()
    (count,) = np.frombuffer(blob, "<u4", 1, 80)
    assert len(blob) == 84 + 50 * count
    records = np.frombuffer(blob, [("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")], count, 84)
    return records["v"].reshape(-1, 3), records["n"]


def world_box(mask_img: nib.Nifti1Image, k: int) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box of the voxels of class k, each voxel a cube of +-0.5 index."""
    idx = np.argwhere(np.asanyarray(mask_img.dataobj) == k)
    corners = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    points = (idx[:, None, :] + corners[None]).reshape(-1, 3)
    world = nib.affines.apply_affine(mask_img.affine, points)
    return world.min(axis=0), world.max(axis=0)


def signed_volume(triangles: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh (positive when faces point outward)."""
    return float(
        np.einsum("ij,ij->i", triangles[:, 0], np.cross(triangles[:, 1], triangles[:, 2])).sum()
        / 6.0
    )


def test_mesh_vertices_lie_in_the_masks_world_box(models, tmp_path):
    image, _ = spine_volume()
    nib.save(reoriented(image, "LPS"), tmp_path / "scan.nii.gz")
    run_predict(models["multi"], tmp_path / "scan.nii.gz", tmp_path / "ply", "overlays=0")
    run_predict(
        models["multi"], tmp_path / "scan.nii.gz", tmp_path / "stl", "overlays=0", "mesh.format=stl"
    )
    mask_img = nib.load(tmp_path / "ply" / "scan" / "mask.nii.gz")
    for k, name in enumerate(["vertebra", "tumor"], start=1):
        low, high = world_box(mask_img, k)
        verts, faces = read_ply(tmp_path / "ply" / "scan" / f"mesh_{name}.ply")
        assert len(faces) > 0 and faces.max() < len(verts)
        assert (verts >= low - 1e-3).all() and (verts <= high + 1e-3).all()
        # 3D Slicer places a mesh by the SPACE= marker of its header (LPS when there is none)
        ply_head = (
            (tmp_path / "ply" / "scan" / f"mesh_{name}.ply").read_bytes().split(b"end_header")[0]
        )
        assert b"\ncomment SPACE=RAS\n" in ply_head and b"SPACE=LPS" not in ply_head
        stl_head = (tmp_path / "stl" / "scan" / f"mesh_{name}.stl").read_bytes()[:80]
        assert stl_head.startswith(b"SPACE=RAS ")
        stl_verts, normals = read_stl(tmp_path / "stl" / "scan" / f"mesh_{name}.stl")
        np.testing.assert_allclose(stl_verts, verts[faces].reshape(-1, 3), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)
        # outward faces; enclosed volume close to the voxels' (marching cubes cuts the corners)
        voxels_mm3 = (np.asanyarray(mask_img.dataobj) == k).sum() * 0.75
        assert 0.6 * voxels_mm3 < signed_volume(verts[faces]) < voxels_mm3


def test_mesh_of_a_box_spans_its_world_extent():
    mask = np.zeros((6, 7, 8), bool)
    mask[1:4, 2:6, 3:5] = True
    affine = np.array([[0, 0, -2.0, 5], [0.5, 0, 0, -1], [0, 1.5, 0, 3], [0, 0, 0, 1]])
    verts, faces = surface_mesh(mask, affine, step_size=1)
    # level 0.5 lies half a voxel outside the outer voxel centres: index 0.5..3.5 etc.
    lo = nib.affines.apply_affine(affine, [0.5, 1.5, 2.5])
    hi = nib.affines.apply_affine(affine, [3.5, 5.5, 4.5])
    np.testing.assert_allclose(verts.min(axis=0), np.minimum(lo, hi), atol=1e-5)
    np.testing.assert_allclose(verts.max(axis=0), np.maximum(lo, hi), atol=1e-5)
    assert signed_volume(verts[faces]) > 0  # outward even under a mirroring affine


def tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def test_folder_skips_and_names_a_corrupt_scan_and_exits_nonzero(models, tmp_path):
    image, _ = spine_volume((6, 40, 72))
    scans = tmp_path / "scans"
    scans.mkdir()
    save_nifti(scans / "a.nii.gz", image, BASE)
    save_nifti(scans / "c.nii", image[:, ::-1], BASE)
    good = (scans / "a.nii.gz").read_bytes()
    (scans / "b_broken.nii.gz").write_bytes(good[: len(good) // 2])  # truncated download
    (scans / "notes.txt").write_text("not a scan")
    before = tree(scans)
    out = tmp_path / "out"
    args = [
        "predict",
        f"ckpt={models['binary']}",
        f"input={scans}",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "overlays=1",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = run_module("penn.cli", args, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert "1 of 3 scans failed" in proc.stderr and "b_broken.nii.gz" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a", "c", "summary.csv"]
    for name in ("a", "c"):
        written = {p.name for p in (out / name).iterdir()}
        assert {"mask.nii.gz", "report.json", "report.csv", "mesh_tumor.ply"} <= written
    with open(out / "summary.csv") as handle:
        assert [row["name"] for row in csv.DictReader(handle)] == ["a", "c"]
    assert tree(scans) == before  # the input folder is never written
    assert "| a |" in proc.stdout  # the final table


def test_output_inside_the_input_folder_is_refused(models, tmp_path):
    image, _ = spine_volume((6, 40, 72))
    save_nifti(tmp_path / "scan.nii.gz", image, BASE)
    with pytest.raises(PredictError, match="inside the input folder"):
        run_predict(models["binary"], tmp_path, tmp_path / "results")
    with pytest.raises(PredictError, match="inside the input folder"):
        run_predict(models["binary"], tmp_path, tmp_path)
    assert not (tmp_path / "results").exists()


def test_label_file_with_a_folder_input_is_refused(models, tmp_path):
    with pytest.raises(PredictError, match="single input file"):
        run_predict(
            models["binary"], tmp_path, tmp_path.parent / "x", f"labels={tmp_path / 'l.nii'}"
        )


def test_truncated_model_file_gives_a_clear_error(models, tmp_path):
    broken = tmp_path / "model.pt"
    broken.write_bytes(models["binary"].read_bytes()[:300])
    with pytest.raises(CheckpointError, match="model.pt: cannot read model file"):
        load_model(broken)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["data"]["patches"].update(size=16), "patch size 8 != data.patches.size 16"),
        (lambda m: m["data"].pop("preprocess"), "lacks \\['preprocess'\\]"),
        (lambda m: m["data"]["preprocess"].pop("smooth_sigma"), "smooth_sigma"),
        (lambda m: m.pop("inference"), "no 'inference' section"),
        (lambda m: m["data"].update(plane="oblique"), "unknown plane 'oblique'"),
        (
            lambda m: m["data"].update(classes=[[1], [2]], class_names=["v", "t"]),
            "1 outputs, 2 class",
        ),
        (lambda m: m["inference"].update(threshold=None), "without a numeric inference.threshold"),
    ],
)
def test_inconsistent_model_meta_stops_with_a_clear_error(tmp_path, edit, message):
    bad = meta(1)
    edit(bad)
    path = save_model(tmp_path / "model.pt", bright_region_net(1), bad)
    with pytest.raises(CheckpointError, match=f"model.pt: .*{message}"):
        load_model(path)


def test_weights_of_another_patch_size_are_refused(tmp_path):
    net = torch.nn.Linear(2, 2)
    path = save_model(tmp_path / "model.pt", net, meta(1))
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(path)


def test_penn_command_lists_its_verbs_and_rejects_unknown_ones(capsys):
    assert penn_cli([]) == 2
    assert penn_cli(["train"]) == 2
    err = capsys.readouterr()
    assert "unknown command 'train'" in err.err
    assert all(verb in err.out for verb in ("run", "evaluate", "predict"))
