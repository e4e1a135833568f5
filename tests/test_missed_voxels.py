"""experiments/missed_lesion_voxels.py against hand-counted voxels on a tiny volume."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
describe = runpy.run_path(str(ROOT / "experiments" / "missed_lesion_voxels.py"))["describe"]


def test_missed_voxels_are_counted_by_slice_depth_intensity_and_probability():
    labels = np.zeros((2, 9, 9), int)
    labels[:, 1:8, 1:8] = 1  # a 7 x 7 body in both slices
    labels[0, 2:7, 2:7] = 2  # a 5 x 5 lesion in slice 0 only
    image = np.where(labels == 2, 2.0, 1.0)  # lesion 2x the body's median
    image[0, 2, 2:7] = 1.4  # its top row dim
    pred = np.zeros(labels.shape, bool)
    pred[0, 3:6, 3:6] = True  # the 3 x 3 core found
    pred[1, 0, 0] = True  # one false positive
    prob = np.where(pred, 0.9, 0.2)
    lines = describe("v", pred, prob, labels, image, label=2, reference=1)
    assert lines[0] == "v: truth 25, TP 9, FN 16, FP 1"
    assert lines[1] == "  per slice (truth/TP): 0: 25/9"
    # the 16 missed voxels are the lesion's outer ring: depth 1 px; the core's median depth is 2
    assert lines[2] == "  depth px (FN / TP median): 1.0 / 2.0; FN within 2 px of the edge: 100 %"
    # FN: 5 dim (1.4) and 11 bright (2.0) voxels, median 2.0; the core is all 2.0
    assert lines[3] == "  intensity / reference median (FN / TP): 2.00 / 2.00"
    assert lines[4] == ("  found by intensity / reference: 1.3-1.45: 0 % of 5, 1.8-inf: 45 % of 20")
    assert lines[5] == "  probability (FN median, 90th pct / TP median): 0.20, 0.20 / 0.90"
