"""experiments/lesion_body_dice.py: a body mask is every class > 0, scored as penn scores Dice."""

from __future__ import annotations

import math
import runpy

import numpy as np

from tests.conftest import CONF

SCRIPT = CONF.parent / "experiments" / "lesion_body_dice.py"


def test_body_dice_counts_tumour_inside_the_body_and_the_extent_is_the_labelled_planes():
    script = runpy.run_path(str(SCRIPT), run_name="lesion_body_dice")
    truth = np.zeros((4, 4, 6), np.uint8)
    truth[1:3, 1:3, 2:4] = 1  # a body of 8 voxels on axial planes 2 and 3
    truth[1, 1, 2] = 2  # a lesion inside it
    labels = np.zeros_like(truth)
    labels[1:3, 1:3, 2] = 2  # the model calls plane 2 tumour, plane 3 background
    labels[0, 0, 5] = 1  # and one voxel outside the labelled planes vertebra
    pred, body = labels > 0, truth > 0
    # hand count: 4 true positives, 1 false positive, 4 false negatives
    assert math.isclose(script["body_dice"](pred, body), 2 * 4 / (2 * 4 + 1 + 4))
    region = script["extent_of"](body)
    assert region[2] == slice(2, 4)
    assert math.isclose(script["body_dice"](pred[region], body[region]), 2 * 4 / (2 * 4 + 4))
    assert math.isnan(script["body_dice"](np.zeros(3, bool), np.zeros(3, bool)))
