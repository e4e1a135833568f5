import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from penn.datamodule import split_cases
from penn.io import DataError
from penn.patches import gather_patches


@pytest.fixture
def dm(cfg_tiny):
    module = instantiate(cfg_tiny.data)
    module.prepare_data()
    module.setup("fit")
    return module


def test_split_is_by_volume_disjoint_and_seeded():
    names = [f"case_{i:02d}" for i in range(17)]
    train, val, test = split_cases(names, 0.12, 0.24, seed=3)
    assert (len(train), len(val), len(test)) == (11, 2, 4)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert split_cases(names, 0.12, 0.24, seed=3) == (train, val, test)
    assert split_cases(names, 0.12, 0.24, seed=4) != (train, val, test)


def test_split_refuses_too_few_volumes():
    with pytest.raises(DataError, match="at least 3 volumes"):
        split_cases(["a", "b"], 0.2, 0.2, 0)


def test_training_patches_are_balanced_and_match_their_labels(dm):
    ds = dm.train_dataloader().dataset
    assert dm.balance_log["after"][0] / sum(dm.balance_log["after"]) == pytest.approx(0.6, abs=0.01)
    assert dm.balance_log["before"][1] == dm.balance_log["after"][1]  # all tumor patches kept
    # each patch's label follows the 60 % rule on the truth under it
    n = dm.patch_cfg["size"]
    split = dm.splits["train"]
    for row, target in zip(ds.index[:200], ds.targets[:200], strict=True):
        vol, s, y, x = row
        fraction = (split.labels[vol][s, y : y + n, x : x + n] == 2).mean()
        assert (fraction >= 0.6) == bool(target)


def test_batches_are_gathered_from_the_preprocessed_slices(dm):
    ds = dm.val_dataloader().dataset
    x, y = ds.__getitems__([0, 5, 9])
    assert x.shape == (3, 1, 16, 16) and y.dtype == torch.int64
    vol, s, yy, xx = ds.index[5]
    expected = gather_patches(dm.splits["val"].slices[vol], np.array([s]), np.array([yy]),
                              np.array([xx]), 16)[0]
    np.testing.assert_array_equal(x[1, 0].numpy(), expected)


def test_train_loader_is_deterministic_for_a_seed_with_workers(cfg_tiny):
    def first_batches(num_workers):
        cfg = cfg_tiny.copy()
        cfg.data.loader.num_workers = num_workers
        module = instantiate(cfg.data)
        module.prepare_data()
        module.setup("fit")
        torch.manual_seed(0)
        it = iter(module.train_dataloader())
        return [next(it) for _ in range(2)]

    a, b = first_batches(2), first_batches(2)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)  # augmentation too: worker seeds derive from the seed


def test_target_must_exist_in_the_dataset_labels(cfg_tiny):
    cfg = cfg_tiny.copy()
    cfg.data.targets.tumor = [5]
    module = instantiate(cfg.data)
    module.prepare_data()
    with pytest.raises(DataError, match=r"dataset.json: target 'tumor' uses label values \[5\]"):
        module.setup("fit")
