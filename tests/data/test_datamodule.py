import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from penn.data.split import split_cases
from penn.inference.dense import segment_slices
from penn.io.volume import DataError
from penn.models.sparse_ae import StackedSparseAutoencoder
from penn.patches.extract import gather_patches


def set_up(data_cfg):
    """The DataModule of a ``data`` config, prepared and set up for fitting."""
    module = instantiate(data_cfg)
    module.prepare_data()
    module.setup("fit")
    return module


def train_loader(cfg, **data):
    """The training loader of ``cfg`` with top-level ``data`` keys or ``loader_<key>`` replaced."""
    cfg = cfg.copy()
    for key, value in data.items():
        if key.startswith("loader_"):
            cfg.data.loader[key.removeprefix("loader_")] = value
        else:
            cfg.data[key] = value
    return set_up(cfg.data).train_dataloader()


@pytest.fixture
def dm(cfg_tiny):
    return set_up(cfg_tiny.data)


def test_split_is_by_volume_disjoint_and_seeded():
    names = [f"case_{i:02d}" for i in range(17)]
    train, val, test = split_cases(names, 0.12, 0.24, seed=3)
    assert (len(train), len(val), len(test)) == (11, 2, 4)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert split_cases(names, 0.12, 0.24, seed=3) == (train, val, test)
    assert split_cases(names, 0.12, 0.24, seed=4) != (train, val, test)


def test_stratified_split_puts_target_volumes_in_every_split():
    names = [f"case_{i:02d}" for i in range(16)]
    has_target = [i < 13 for i in range(16)]  # 3 volumes without the target
    for seed in range(20):
        train, val, test = split_cases(names, 0.15, 0.25, seed, strata=has_target)
        for split in (train, val, test):
            assert any(has_target[names.index(n)] for n in split)
        assert sum(not has_target[names.index(n)] for n in train) >= 1


def test_split_refuses_too_few_volumes():
    with pytest.raises(DataError, match="at least 3 volumes"):
        split_cases(["a", "b"], 0.2, 0.2, 0)


@pytest.fixture
def dm_alone(cfg_tiny):
    """Training patches of the patch alone (tests/patches/test_context.py: with context)."""
    cfg_tiny.data.patches.context_dilation = 0
    return set_up(cfg_tiny.data)


def test_training_patches_are_balanced_and_match_their_labels(dm_alone):
    dm = dm_alone
    loader = dm.train_dataloader()
    ds, sampler = loader.dataset, loader.sampler
    epoch0 = np.array(list(sampler))
    targets = ds.targets[epoch0]
    assert (targets == 0).mean() == pytest.approx(0.6, abs=0.01)
    assert (targets == 1).sum() == (ds.targets == 1).sum()  # every tumor patch kept
    assert dm.balance_log["after"] == np.bincount(targets, minlength=2).tolist()
    assert dm.balance_log["before"] == np.bincount(ds.targets, minlength=2).tolist()
    # each patch's class is the label of its centre pixel (the default centre rule): pixel
    # (y + n // 2, x + n // 2) of the patch with corner (y, x)
    assert dm.patch_cfg["rule"] == "center"
    split, h = dm.splits["train"], dm.patch_cfg["size"] // 2
    vol, s, y, x = ds.index.T
    centre = np.array(
        [split.labels[v][k, i + h, j + h] for v, k, i, j in zip(vol, s, y, x, strict=True)]
    )
    np.testing.assert_array_equal(ds.targets, (centre == 2).astype(np.uint8))


def test_paper_rule_patches_lie_inside_and_follow_the_fraction(cfg_tiny):
    cfg_tiny.data.patches.rule = "fraction"
    dm = set_up(cfg_tiny.data)
    ds, n = dm.train_dataloader().dataset, dm.patch_cfg["size"]
    split = dm.splits["train"]
    tumor = np.flatnonzero(ds.targets == 1)
    rows = np.concatenate([tumor[:100], np.flatnonzero(ds.targets == 0)[:100]])
    assert len(tumor) > 0
    for (vol, s, y, x), target in zip(ds.index[rows], ds.targets[rows], strict=True):
        window = split.labels[vol][s, y : y + n, x : x + n]
        assert window.shape == (n, n)
        assert ((window == 2).mean() >= 0.6) == bool(target)


def test_training_patches_are_the_patches_the_dense_readout_classifies(dm_alone):
    """The patch a training row holds for its centre pixel p is the one the centre read-out
    classifies for p, so a net sees at inference what it was trained on."""
    dm = dm_alone
    ds = dm.train_dataloader().dataset
    slices = dm.splits["train"].slices[0]
    height, width = slices.shape[1:]
    stride = dm.patch_cfg["stride"]
    rows = np.flatnonzero(ds.index[:, 0] == 0)
    vol, s, y, x = ds.index[rows].T
    # the training patches lie inside the slice, one per corner of the stride grid
    n, h = dm.patch_cfg["size"], dm.patch_cfg["size"] // 2
    assert sorted(set(y)) == list(range(0, height - n + 1, stride))
    assert sorted(set(x)) == list(range(0, width - n + 1, stride))
    assert len(rows) == slices.shape[0] * len(set(y)) * len(set(x))
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=16, n_layers=2, n_nodes=6, n_outputs=1).eval()
    for p in net.parameters():
        p.data *= 10  # spread the probabilities away from 0.5
    with torch.no_grad():
        trained_on = torch.sigmoid(net(ds.patches(rows))).numpy()[:, 0]
    dense, _ = segment_slices(net, slices, stride, batch_slices=4, aggregate="center")
    np.testing.assert_allclose(dense[s, 0, y + h, x + h], trained_on, atol=1e-5)
    assert trained_on.std() > 0.05


def test_background_is_redrawn_each_epoch_and_reproducible(dm):
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(0)
    e0 = np.array(list(sampler))
    e1 = np.array(list(sampler))  # the next epoch, even without set_epoch
    sampler.set_epoch(0)
    np.testing.assert_array_equal(np.array(list(sampler)), e0)
    targets = dm.train_dataloader().dataset.targets
    assert set(e0[targets[e0] == 1]) == set(e1[targets[e1] == 1])
    assert set(e0[targets[e0] == 0]) != set(e1[targets[e1] == 0])
    assert len(e0) == len(e1) == len(sampler)


def test_batches_are_gathered_from_the_preprocessed_slices(dm_alone):
    dm = dm_alone
    ds = dm.val_dataloader().dataset
    x, y = ds.__getitems__([0, 5, 9])
    assert x.shape == (3, 1, 16, 16) and y.dtype == torch.int64
    vol, s, yy, xx = ds.index[5]
    slices = dm.splits["val"].slices[vol]
    expected = gather_patches(slices, np.array([s]), np.array([yy]), np.array([xx]), 16)
    np.testing.assert_array_equal(x[1, 0].numpy(), expected[0])


def test_train_loader_is_deterministic_for_a_seed_with_workers(cfg_tiny):
    def first_batches(num_workers):
        loader = train_loader(cfg_tiny, loader_num_workers=num_workers)
        torch.manual_seed(0)
        it = iter(loader)
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


def test_batches_cross_processes_by_value_through_a_wide_pipe(dm):
    import pickle
    import sys
    from multiprocessing.reduction import ForkingPickler
    from pathlib import Path

    import torch.multiprocessing  # noqa: F401  (registers torch's reductions, as in a worker)

    from penn.data.patch_stream import PatchBatch

    batch = dm.train_dataloader().dataset.__getitems__([0, 1, 2])
    assert isinstance(batch, PatchBatch)
    again = pickle.loads(ForkingPickler.dumps(batch))  # as a loader worker sends it
    assert isinstance(again, PatchBatch)
    assert torch.equal(again[0], batch[0]) and torch.equal(again[1], batch[1])
    limit = Path("/proc/sys/fs/pipe-max-size")
    if sys.platform.startswith("linux") and limit.is_file():
        import fcntl

        # the host loader's worker processes (the default cuts batches in the main process)
        dm.loader_cfg.update(num_workers=1, on_device=False)
        loader = dm.train_dataloader()
        iterator = iter(loader)
        next(iterator)
        fd = iterator._worker_result_queue._reader.fileno()
        assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == min(loader.pipe_bytes, int(limit.read_text()))
        del iterator


def test_flip_augmentation_mirrors_patches_and_keeps_their_values():
    from penn.data.patch_stream import PatchDataset

    rng = np.random.default_rng(0)
    slices = [rng.random((2, 12, 12)).astype(np.float32)]
    index = np.array([[0, s, y, x] for s in range(2) for y in range(4) for x in range(4)] * 8)
    identity = {"gamma": [1.0, 1.0], "scale": [1.0, 1.0], "noise_std": 0.0}
    plain = PatchDataset(slices, index, np.zeros(len(index), np.uint8), 6, identity)
    flipped = PatchDataset(
        slices, index, np.zeros(len(index), np.uint8), 6, identity | {"flip": True}
    )
    torch.manual_seed(0)
    x = plain.__getitems__(list(range(len(index))))[0]
    y = flipped.__getitems__(list(range(len(index))))[0]
    variants = torch.stack([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)])  # (4, N, 1, 6, 6)
    match = (variants == y[None]).flatten(2).all(-1)  # (4, N): which mirror each patch is
    assert match.any(0).all()  # every output is a mirror of its own patch
    assert (match.float().mean(1) > 0.15).all()  # all four mirrors occur (256 patches)


def test_device_loader_gives_the_host_loaders_batches(cfg_tiny):
    """data.loader.on_device: same patches, classes, order and length as the host loader."""
    from penn.data.device_loader import DevicePatchLoader
    from penn.data.patch_stream import PatchLoader

    # augmentation off: compare the patches themselves
    host = train_loader(cfg_tiny, loader_on_device=False, augment=None)
    device = train_loader(cfg_tiny, loader_on_device=True, augment=None)
    assert isinstance(host, PatchLoader) and isinstance(device, DevicePatchLoader)
    assert len(device) == len(host) > 1
    for epoch in (0, 3):  # Lightning sets the epoch through .sampler, as for the host loader
        host.sampler.set_epoch(epoch)
        device.sampler.set_epoch(epoch)
        batches = list(zip(host, device, strict=True))
        assert len(batches) == len(host)
        for (xh, yh), (xd, yd) in batches:
            assert xd.shape == xh.shape and xd.dtype == torch.float32
            assert torch.equal(xd, xh) and torch.equal(yd, yh)


def test_a_new_training_loader_frees_the_last_one_held_in_a_cycle(dm):
    """A finished phase's Trainer holds its loader in reference cycles; building the next
    phase's loader must free it (the slices it copied), not wait for a full collection."""
    import gc
    import weakref

    gc.disable()  # as between Python's own collections
    try:
        first = dm.train_dataloader()
        finished_trainer = {"loader": first}
        finished_trainer["self"] = finished_trainer  # a cycle, as trainer <-> module
        dead = weakref.ref(first)
        del first, finished_trainer
        assert dead() is not None  # only a collection frees a cycle
        dm.train_dataloader()
        assert dead() is None
    finally:
        gc.enable()


def test_device_loader_groups_consecutive_batches(cfg_tiny):
    """data.loader.steps_per_batch=3: each batch is three of the plain batches, end to end."""
    plain = train_loader(cfg_tiny, loader_on_device=True, augment=None)
    grouped = train_loader(cfg_tiny, loader_on_device=True, loader_steps_per_batch=3, augment=None)
    batches, groups = list(plain), list(grouped)
    assert len(batches) % 3 != 0  # the last group is shorter
    assert len(groups) == len(grouped) == -(-len(batches) // 3)
    for i, (x, y) in enumerate(groups):
        part = batches[3 * i : 3 * i + 3]
        assert torch.equal(x, torch.cat([b[0] for b in part]))
        assert torch.equal(y, torch.cat([b[1] for b in part]))
    with pytest.raises(ValueError, match="steps_per_batch=3 needs data.loader.on_device=true"):
        train_loader(cfg_tiny, loader_on_device=False, loader_steps_per_batch=3)


def test_device_loader_augments_reproducibly_per_seed_and_epoch(cfg_tiny):
    from penn.data.device_loader import DevicePatchLoader
    from penn.data.patch_stream import PatchDataset

    loader = train_loader(cfg_tiny, loader_on_device=True)
    ds = loader.dataset
    unaugmented = PatchDataset(
        ds.slices,
        ds.index,
        ds.targets,
        ds.patch_size,
        None,
        context_dilation=ds.context_dilation,
    )
    plain = DevicePatchLoader(unaugmented, loader.sampler, loader.batch_size, "cpu", seed=0)

    def first(ld, epoch):
        ld.sampler.set_epoch(epoch)
        return next(iter(ld))[0]

    a, b, c = first(loader, 1), first(loader, 1), first(loader, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0
    clean = first(plain, 1)  # the same patches without augmentation
    assert not torch.equal(a, clean) and (a - clean).abs().mean() < 0.1
