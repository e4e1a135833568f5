"""Scoring a folder of masks against labels (penn evaluate -p -g) and the penn command's options."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from penn.cli import evaluate_arguments, main, predict_arguments
from penn.reports.folder_scores import evaluate_folder

AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm along the first axis


def _save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))


def _hand_case(tmp_path):
    """Case a: class 1 is 8 voxels in both masks, 4 of them shared (Dice 0.5); class 2 is one
    voxel in each, 3 voxels (6 mm) apart along the 2 mm axis (Dice 0, HD95 = ASD = 6 mm).
    Case b: class 1 equal (Dice 1, distance 0); class 2 absent from both (NaN, left out)."""
    truth_a, pred_a = np.zeros((8, 6, 6)), np.zeros((8, 6, 6))
    truth_a[0:2, 0:2, 0:2] = 1
    pred_a[0:2, 0:2, 1:3] = 1
    truth_a[3, 4, 4], pred_a[6, 4, 4] = 2, 2
    truth_b = np.zeros((8, 6, 6))
    truth_b[2:4, 2:4, 2:4] = 1
    _save(tmp_path / "gt" / "a.nii.gz", truth_a)
    _save(tmp_path / "gt" / "b.nii.gz", truth_b)
    _save(tmp_path / "pred" / "a.nii.gz", pred_a)
    _save(tmp_path / "pred" / "b" / "mask.nii.gz", truth_b)  # penn predict's layout


def test_folder_scores_match_a_hand_computed_case(tmp_path):
    _hand_case(tmp_path)
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", progress=False)
    assert summary["classes"] == [1, 2]
    a, b = summary["cases"]["a"], summary["cases"]["b"]
    assert a["1"]["dice"] == pytest.approx(0.5) and a["1"]["iou"] == pytest.approx(4 / 12)
    assert a["2"]["dice"] == 0.0 and a["2"]["hd95_mm"] == pytest.approx(6.0)
    assert a["2"]["asd_mm"] == pytest.approx(6.0)
    assert b["1"]["dice"] == 1.0 and b["1"]["hd95_mm"] == 0.0
    assert np.isnan(b["2"]["hd95_mm"])
    assert summary["mean"]["1"]["dice"] == pytest.approx(0.75)
    assert summary["mean"]["2"]["hd95_mm"] == pytest.approx(6.0)  # b's NaN left out
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["mean"]["1"]["dice"] == pytest.approx(0.75)
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("case,class,precision") and len(rows) == 1 + 4


def test_penn_evaluate_folder_names_a_missing_prediction_in_one_line(tmp_path, capsys):
    _hand_case(tmp_path)
    (tmp_path / "pred" / "a.nii.gz").unlink()
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "-p", str(tmp_path / "pred"), "-g", str(tmp_path / "gt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1
    assert str(tmp_path / "pred") in err[0] and "'a'" in err[0]
    assert not (tmp_path / "pred" / "summary.json").exists()  # nothing written


def test_penn_evaluate_folder_writes_the_summary(tmp_path, capsys):
    _hand_case(tmp_path)
    assert main(["evaluate", "-p", str(tmp_path / "pred"), "-g", str(tmp_path / "gt")]) == 0
    assert "dice 0.3750" in capsys.readouterr().out  # mean over classes of 0.75 and 0.0
    assert (tmp_path / "pred" / "summary.json").is_file()


def test_predict_options_become_overrides_and_others_pass_through():
    args = "-o out -m m.pt --device cpu --overlays 0 --no-mesh inference.threshold=0.4".split()
    args = ["-i", "my scans/a,b.nii.gz", *args]
    assert predict_arguments(args) == [
        "input='my scans/a,b.nii.gz'",
        "output='out'",
        "ckpt='m.pt'",
        "device=cpu",
        "overlays=0",
        "mesh.enabled=false",
        "inference.threshold=0.4",
    ]
    assert predict_arguments(["input=x", "output=y"]) == ["input=x", "output=y"]


def test_evaluate_options_pick_folder_scoring_or_a_model():
    folder, rest = evaluate_arguments(["-p", "p", "-g", "g"])
    assert folder == {"pred": "p", "labels": "g", "out": None, "debug": False} and rest == []
    folder, rest = evaluate_arguments(["-m", "m.pt", "-d", "data", "progress=false"])
    assert folder is None and rest == ["ckpt='m.pt'", "data.root='data'", "progress=false"]
    with pytest.raises(SystemExit):
        evaluate_arguments(["-p", "p"])


def test_penn_predict_names_a_file_that_is_no_model_in_one_line(tmp_path, capsys):
    """Not a torch file (torch's own message runs to many lines): one line, nothing written."""
    (tmp_path / "notes.txt").write_text("not a model\n")
    _save(tmp_path / "scan.nii.gz", np.ones((4, 8, 8)))
    args = ["predict", "-i", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        main([*args, "-m", str(tmp_path / "notes.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1, err
    assert err[0].startswith(f"penn predict: error: {tmp_path / 'notes.txt'}: cannot read model")
    assert not (tmp_path / "out").exists()
