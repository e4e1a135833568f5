import numpy as np
import pytest

from penn.patches.extract import gather_patches, grid_starts, label_patches, window_sums


def brute_force_labels(labels, classes, n, stride, rule, threshold):
    ys, xs = grid_starts(labels.shape[1], n, stride), grid_starts(labels.shape[2], n, stride)
    out = np.zeros((labels.shape[0], len(ys), len(xs)), np.uint8)
    for s in range(labels.shape[0]):
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                for k, values in enumerate(classes, start=1):
                    patch = np.isin(labels[s, y : y + n, x : x + n], values)
                    if rule == "fraction":
                        hit = patch.mean() >= threshold
                    else:
                        hit = patch[n // 2, n // 2]
                    if hit:
                        out[s, i, j] = k
    return out


@pytest.mark.parametrize("rule", ["fraction", "center"])
@pytest.mark.parametrize("stride", [1, 3, 8])
def test_label_patches_matches_brute_force_on_random_masks(rule, stride):
    rng = np.random.default_rng(stride)
    # blobby random masks so that both classes pass the 60 % rule somewhere
    base = rng.random((2, 6, 7)).repeat(6, axis=1).repeat(6, axis=2)[:, :35, :41]
    labels = np.where(base > 0.7, 2, np.where(base > 0.35, 1, 0)).astype(np.uint8)
    labels = np.concatenate([labels, np.full((1, 35, 41), 2, np.uint8)])
    classes = [[1, 2], [2]]
    got = label_patches(labels, classes, 8, stride, rule, 0.6)
    expected = brute_force_labels(labels, classes, 8, stride, rule, 0.6)
    np.testing.assert_array_equal(got, expected)
    assert got.max() == 2 and (got == 1).any()


def test_window_sums_equal_direct_sums():
    rng = np.random.default_rng(0)
    mask = rng.random((1, 20, 23)) > 0.5
    sums = window_sums(mask, 5, 2)
    for i, y in enumerate(range(0, 16, 2)):
        for j, x in enumerate(range(0, 19, 2)):
            assert sums[0, i, j] == mask[0, y : y + 5, x : x + 5].sum()


def test_threshold_is_inclusive_at_sixty_percent():
    labels = np.zeros((1, 10, 10), np.uint8)
    labels[0, :6, :] = 2  # exactly 60 % of the 10 x 10 patch
    assert label_patches(labels, [[2]], 10, 1, "fraction", 0.6)[0, 0, 0] == 1
    labels[0, 5, 0] = 0  # one pixel less
    assert label_patches(labels, [[2]], 10, 1, "fraction", 0.6)[0, 0, 0] == 0


def test_gather_patches_copies_the_right_windows():
    slices = np.arange(2 * 12 * 12, dtype=np.float32).reshape(2, 12, 12)
    got = gather_patches(slices, np.array([1, 0]), np.array([3, 0]), np.array([2, 5]), 4)
    np.testing.assert_array_equal(got[0], slices[1, 3:7, 2:6])
    np.testing.assert_array_equal(got[1], slices[0, 0:4, 5:9])


def test_grid_is_empty_when_the_slice_is_smaller_than_a_patch():
    assert grid_starts(20, 32, 4).size == 0
    assert list(grid_starts(40, 32, 4)) == [0, 4, 8]
