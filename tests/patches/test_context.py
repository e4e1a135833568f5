"""The context patch (data.patches.context_dilation): training cuts, dense read-out, model file.

References are independent of penn.patches.context: the smoothed slice comes from scipy's Gaussian
filter, and every context sample is looked up one by one, zero outside the slice.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from scipy import ndimage

from penn.checkpoint import CheckpointError, check_meta, load_model
from penn.inference.dense import segment_slices
from penn.models.sparse_ae import StackedSparseAutoencoder
from penn.patches.extract import grid_starts
from penn.run import check_context_patch, make_datamodule
from tests.conftest import CONF, TINY, TINY_DATA, assert_model_reproduces_test_counts, compose_cfg
from tests.test_run import penn


def smoothed(slices: np.ndarray, dilation: int) -> np.ndarray:
    """The slices smoothed as the context is: sigma d / 2, mirrored edges, 3 sigma."""
    return np.stack(
        [ndimage.gaussian_filter(s, dilation / 2, mode="mirror", truncate=3.0) for s in slices]
    )


def context_reference(smooth: np.ndarray, s: int, cy: int, cx: int, n: int, d: int) -> np.ndarray:
    """Context patch (n, n) centred on pixel (cy, cx) of slice s, sample by sample."""
    out = np.zeros((n, n), np.float32)
    height, width = smooth.shape[1:]
    for k in range(n):
        for m in range(n):
            y, x = cy + d * (k - n // 2), cx + d * (m - n // 2)
            if 0 <= y < height and 0 <= x < width:
                out[k, m] = smooth[s, y, x]
    return out


def spread_context_net(
    n: int = 8, d: int = 3, n_outputs: int = 1, gain: float = 3.0
) -> StackedSparseAutoencoder:
    """A seeded context-patch PENN in eval mode, weights x ``gain`` to spread its outputs."""
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(
        n, n_layers=2, n_nodes=6, n_outputs=n_outputs, context_dilation=d
    )
    for p in net.parameters():
        p.data *= gain
    return net.eval()


def two_channel(net, patch: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Class probabilities of one (n, n) patch with its (n, n) context."""
    x = torch.from_numpy(np.stack([patch, context])[None].astype(np.float32))
    with torch.no_grad():
        logits = net(x)
    return (torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1))[0].numpy()


@pytest.fixture
def dm_context(phantom_dir, tmp_path):
    cfg = compose_cfg(
        ["data.patches.context_dilation=3"],
        phantom_dir,
        tmp_path / "run",
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_training_context_is_the_smoothed_slice_sampled_around_the_centre(dm_context):
    dm = dm_context
    ds = dm.train_dataloader().dataset
    n, d = ds.patch_size, ds.context_dilation
    rng = np.random.default_rng(0)
    rows = rng.choice(len(ds), 300, replace=False)
    patches = ds.patches(rows).numpy()
    assert patches.shape == (300, 2, n, n)
    for vol in np.unique(ds.index[rows, 0]):
        smooth = smoothed(dm.splits["train"].slices[vol], d)
        for i in np.flatnonzero(ds.index[rows, 0] == vol):
            _, s, y, x = ds.index[rows[i]]
            cy, cx = y + n // 2, x + n // 2  # the centre pixel
            np.testing.assert_allclose(
                patches[i, 1], context_reference(smooth, s, cy, cx, n, d), atol=1e-5
            )
    # the edge shows: contexts reach past the slice (zeros there) and hold the body too
    assert (patches[:, 1] == 0).any() and patches[:, 1].max() > 0.3


def test_training_patches_with_context_are_what_the_dense_readout_classifies(phantom_dir, tmp_path):
    """The network sees at inference the patch and context it was trained on for each pixel
    (centre read-out)."""
    cfg = compose_cfg(
        ["data.patches.context_dilation=3"],
        phantom_dir,
        tmp_path / "run",
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.train_dataloader().dataset
    slices = dm.splits["train"].slices[0]
    rows = np.flatnonzero(ds.index[:, 0] == 0)
    _, s, y, x = ds.index[rows].T
    h = ds.patch_size // 2  # the centre pixel of the patch with corner (y, x)
    net = spread_context_net(n=16, d=3, gain=10.0)
    with torch.no_grad():
        trained_on = torch.sigmoid(net(ds.patches(rows))).numpy()[:, 0]
    for engine in ("rows", "fcn", "unfold"):
        dense, _ = segment_slices(net, slices, 4, batch_slices=4, aggregate="center", engine=engine)
        np.testing.assert_allclose(dense[s, 0, y + h, x + h], trained_on, atol=1e-5, err_msg=engine)
    assert trained_on.std() > 0.05


@pytest.mark.parametrize("engine", ["rows", "fcn", "fcn_stacked", "unfold"])
@pytest.mark.parametrize("stride,n_outputs", [(1, 1), (3, 3)])
def test_dense_mean_readout_with_context_equals_patch_by_patch(engine, stride, n_outputs):
    """The paper's read-out (mean over covering patches) on the padded grid, every engine,
    several bands per slice on two threads, against each patch classified alone."""
    n, d = 8, 3
    net = spread_context_net(n, d, n_outputs)
    slices = np.random.default_rng(1).random((3, 23, 19)).astype(np.float32)
    dense, grid = segment_slices(
        net,
        slices,
        stride,
        batch_slices=2,
        engine=engine,
        chunk_positions=10,
        threads=2,
        batch_patches=7,
    )
    smooth = smoothed(slices, d)
    height, width = slices.shape[1:]
    pad_h = (-(height - n)) % stride
    pad_w = (-(width - n)) % stride
    padded = np.pad(slices, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    total = np.zeros((3, n_outputs) + padded.shape[1:])
    count = np.zeros(padded.shape[1:])
    for i, y in enumerate(grid_starts(padded.shape[1], n, stride)):
        for j, x in enumerate(grid_starts(padded.shape[2], n, stride)):
            for s in range(3):
                context = context_reference(smooth, s, y + n // 2, x + n // 2, n, d)
                p = two_channel(net, padded[s, y : y + n, x : x + n], context)
                total[s, :, y : y + n, x : x + n] += p[:, None, None]
                np.testing.assert_allclose(grid[s, :, i, j], p, atol=1e-5)
            count[y : y + n, x : x + n] += 1
    np.testing.assert_allclose(dense, (total / count)[:, :, :height, :width], atol=1e-5)
    assert dense.std() > 1e-3


def test_a_context_network_needs_its_context():
    from penn.inference.fcn import to_fully_convolutional

    net = spread_context_net()
    assert net.stages[0].encoder.in_features == 2 * 8 * 8
    with pytest.raises(ValueError, match="takes a context image"):
        to_fully_convolutional(net, 2)(torch.zeros(1, 1, 12, 12))


def test_a_baseline_with_a_context_patch_is_refused():
    overrides = [*TINY_DATA, "model=opconvnet", "data.patches.context_dilation=2"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = make_datamodule(cfg)
    net = instantiate(cfg.model.net, n_outputs=1)
    with pytest.raises(ValueError, match="context_dilation=2: model=opconvnet takes the patch"):
        check_context_patch(cfg, net, dm)


def test_model_file_records_the_context_and_refuses_a_mismatch(tmp_path):
    meta = {
        "members": 1,
        "model": {"level": "patch", "context_offset": 0},
        "net": {
            "_target_": "penn.models.sparse_ae.StackedSparseAutoencoder",
            "patch_size": 8,
            "n_layers": 1,
            "n_nodes": 2,
            "n_outputs": 1,
            "context_dilation": 3,
        },
        "data": {
            "plane": "sagittal",
            "preprocess": {"noise_threshold": 0, "smooth_sigma": 0, "clip_percentiles": [0, 100]},
            "patches": {
                "size": 8,
                "stride": 2,
                "rule": "center",
                "threshold": 0.6,
                "context_dilation": 3,
            },
            "classes": [[2]],
            "class_names": ["tumor"],
        },
        "inference": {
            "stride": 2,
            "batch_slices": 1,
            "threshold": 0.5,
            "slice_sigma_mm": 0.0,
            "postprocess": {},
        },
    }
    check_meta(tmp_path / "model.pt", meta)
    meta["data"]["patches"]["context_dilation"] = 0
    with pytest.raises(CheckpointError, match="context dilation 3 != data.patches.context_dil"):
        check_meta(tmp_path / "model.pt", meta)


def test_run_with_a_context_patch_end_to_end(tmp_path):
    """penn.run trains (pretraining reconstructs both channels), mines, segments and writes a
    model file that segments the test volume again to the run's own counts."""
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    penn(
        "penn.run",
        *TINY,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        "data.patches.context_dilation=2",
        "model.finetune.hard_negatives.fraction=0.5",
        "model.finetune.hard_negatives.pool=500",
    )
    net, meta = load_model(run_dir / "model.pt")
    assert net.context_dilation == 2 and net.stages[0].encoder.in_features == 2 * 16 * 16
    assert meta["data"]["patches"]["context_dilation"] == 2
    assert_model_reproduces_test_counts(
        net, meta, run_dir, ["data.patches.context_dilation=2"], data_dir
    )


def test_device_loader_cuts_the_same_patches_and_contexts(phantom_dir, tmp_path):
    cfg = compose_cfg(
        ["data.patches.context_dilation=3", "data.augment=null"],
        phantom_dir,
        tmp_path / "run",
    )
    batches = {}
    for on_device in (False, True):
        cfg.data.loader.on_device = on_device
        dm = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)
        batches[on_device] = list(loader)
    assert len(batches[True]) == len(batches[False]) > 1
    for (xh, yh), (xd, yd) in zip(batches[False], batches[True], strict=True):
        assert xh.shape[1] == 2 and torch.equal(xd, xh) and torch.equal(yd, yh)
