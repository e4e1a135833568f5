import numpy as np
import pytest

from penn.patches.balance import class_counts, undersample


@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.8])
def test_balance_reaches_requested_ratio(ratio):
    labels = np.zeros(10_000, np.uint8)
    labels[:600] = 1
    labels[600:700] = 2
    keep = undersample(labels, ratio, np.random.default_rng(0))
    counts = class_counts(labels[keep], 3)
    assert counts[1] == 600 and counts[2] == 100  # every minority patch kept
    assert counts[0] == round(700 * ratio / (1 - ratio))
    assert abs(counts[0] / counts.sum() - ratio) < 1e-3


def test_balance_keeps_everything_when_majority_is_already_small():
    labels = np.array([0, 1, 1, 1, 0, 1], np.uint8)
    keep = undersample(labels, 0.6, np.random.default_rng(0))
    np.testing.assert_array_equal(keep, np.arange(6))


def test_balance_is_seeded():
    labels = (np.random.default_rng(1).random(5000) < 0.05).astype(np.uint8)
    a = undersample(labels, 0.6, np.random.default_rng(7))
    b = undersample(labels, 0.6, np.random.default_rng(7))
    c = undersample(labels, 0.6, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_balance_rejects_impossible_ratio():
    with pytest.raises(ValueError, match="majority_fraction"):
        undersample(np.zeros(3, np.uint8), 1.0, np.random.default_rng(0))
