import numpy as np
import pytest
import torch
from scipy import ndimage

from penn.calibration import calibrate_threshold
from penn.inference.dense import segment_slices, segment_slices_pixelwise
from penn.inference.engines import classify_unfolded, patch_logits
from penn.inference.fcn import to_fully_convolutional
from penn.models.baselines.dtvnet import DTVNet
from penn.models.baselines.opconvnet import OPConvNet
from penn.models.baselines.sau_net import SAUNet, neighbour_triplets
from penn.models.baselines.unet import UNet
from penn.models.sparse_ae import StackedSparseAutoencoder
from penn.patches.extract import grid_starts
from penn.postprocess import decide, postprocess


def spread_net(n_outputs: int = 1, n_layers: int = 2) -> StackedSparseAutoencoder:
    """A seeded 8 x 8 PENN in eval mode, weights x 3 so that probabilities are not all 0.5."""
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=8, n_layers=n_layers, n_nodes=6, n_outputs=n_outputs)
    for p in net.parameters():
        p.data *= 3
    return net.eval()


def patch_by_patch(net, slices, stride):
    """Reference: pad like segment_slices, classify each patch alone, average per pixel."""
    n = net.patch_size
    s_count, h, w = slices.shape
    pad_h = (max(h, n) - h) + (-(max(h, n) - n)) % stride
    pad_w = (max(w, n) - w) + (-(max(w, n) - n)) % stride
    padded = np.pad(slices, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    with torch.no_grad():
        k = net(torch.zeros(1, 1, n, n)).shape[1]
    total = np.zeros((s_count, k) + padded.shape[1:])
    count = np.zeros(padded.shape[1:])
    with torch.no_grad():
        for y in grid_starts(padded.shape[1], n, stride):
            for x in grid_starts(padded.shape[2], n, stride):
                patch = torch.from_numpy(padded[:, None, y : y + n, x : x + n].copy())
                logits = net(patch)
                p = torch.sigmoid(logits) if k == 1 else logits.softmax(1)
                total[:, :, y : y + n, x : x + n] += p.numpy()[:, :, None, None]
                count[y : y + n, x : x + n] += 1
    return (total / count)[:, :, :h, :w]


@pytest.mark.parametrize("stride,n_outputs", [(1, 1), (3, 1), (4, 3)])
def test_dense_output_equals_patch_by_patch(stride, n_outputs):
    net = spread_net(n_outputs=n_outputs)
    slices = np.random.default_rng(0).random((3, 21, 18)).astype(np.float32)
    dense, patch_probs = segment_slices(net, slices, stride, batch_slices=2)
    expected = patch_by_patch(net, slices, stride)
    assert dense.shape == (3, n_outputs, 21, 18)
    np.testing.assert_allclose(dense, expected, atol=1e-5)
    assert dense.std() > 1e-3
    # patch grid: row i, col j is the patch with its corner at (i * stride, j * stride)
    with torch.no_grad():
        logits = net(torch.from_numpy(slices[1:2, None, stride : stride + 8, 0:8].copy()))
    first = torch.sigmoid(logits)[0, 0] if n_outputs == 1 else logits.softmax(1)[0, 0]
    assert patch_probs[1, 0, 1, 0] == pytest.approx(first.item(), abs=1e-5)


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_centre_readout_is_the_centred_patch_interpolated_between_grid_points(stride):
    net = spread_net()
    slices = np.random.default_rng(1).random((2, 19, 22)).astype(np.float32)
    dense, patch_probs = segment_slices(net, slices, stride, batch_slices=1, aggregate="center")
    mean_dense, mean_patch = segment_slices(net, slices, stride, batch_slices=1)
    assert dense.shape == (2, 1, 19, 22) and dense.std() > 1e-3
    # reference: the patch centred on pixel (y, x), cut from the reflect-padded slice
    padded = np.pad(slices, ((0, 0), (4, 8), (4, 8)), mode="reflect")
    patches = np.lib.stride_tricks.sliding_window_view(padded, (8, 8), axis=(1, 2))[:, :19, :22]
    with torch.no_grad():
        logits = net(torch.from_numpy(patches.reshape(-1, 1, 8, 8).copy()))
    centred = torch.sigmoid(logits).numpy().reshape(2, 19, 22)
    on_grid = np.ix_(range(2), range(0, 19, stride), range(0, 22, stride))
    np.testing.assert_allclose(dense[:, 0][on_grid], centred[on_grid], atol=1e-5)
    if stride == 2:  # half-way between two grid points along x: the mean of the two
        np.testing.assert_allclose(
            dense[:, 0, ::2, 1:21:2],
            (centred[:, ::2, 0:20:2] + centred[:, ::2, 2:22:2]) / 2,
            atol=1e-5,
        )
    # the patch grid (for patch metrics) is the unpadded one, as with the mean read-out
    gy, gx = (19 - 8) // stride + 1, (22 - 8) // stride + 1
    np.testing.assert_allclose(patch_probs[:, :, :gy, :gx], mean_patch[:, :, :gy, :gx], atol=1e-5)
    assert not np.allclose(dense, mean_dense)
    # center_sigma: a Gaussian over the centre read-out (scipy's, mirrored edges, 3 sigma)
    smooth, _ = segment_slices(net, slices, stride, 1, aggregate="center", center_sigma=1.5)
    expected = ndimage.gaussian_filter(dense, (0, 0, 1.5, 1.5), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(smooth, expected, atol=1e-5)


def test_pixel_maps_alone_skip_the_patch_grid():
    net = StackedSparseAutoencoder(patch_size=8, n_layers=2, n_nodes=6, n_outputs=1).eval()
    slices = np.random.default_rng(1).random((5, 20, 16)).astype(np.float32)
    both, grid = segment_slices(net, slices, 2, batch_slices=2, aggregate="center")
    alone, none = segment_slices(net, slices, 2, batch_slices=2, aggregate="center", patches=False)
    assert none is None and grid.shape[:2] == (5, 1)
    np.testing.assert_array_equal(alone, both)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("patches", [True, False])
def test_gpu_copies_overlapping_the_next_batch_give_the_cpu_maps(patches):
    """On a GPU, batches copied back while the next one runs (uneven last batch): CPU output."""
    net = spread_net()
    slices = np.random.default_rng(2).random((7, 30, 26)).astype(np.float32)
    for aggregate in ("mean", "center"):
        cpu = segment_slices(net, slices, 2, 2, "cpu", aggregate=aggregate, patches=patches)
        gpu = segment_slices(net, slices, 2, 2, "cuda", aggregate=aggregate, patches=patches)
        for c, g in zip(cpu, gpu, strict=True):
            if c is None:
                assert g is None
            else:
                np.testing.assert_allclose(g, c, atol=2e-3)  # TF32 convolutions


def test_centre_readout_rejects_a_stride_that_misses_the_centres():
    net = StackedSparseAutoencoder(patch_size=8, n_layers=1, n_nodes=3, n_outputs=1).eval()
    with pytest.raises(ValueError, match="divides 4"):
        segment_slices(net, np.zeros((1, 12, 12), np.float32), 3, 1, aggregate="center")
    with pytest.raises(ValueError, match="aggregate="):
        segment_slices(net, np.zeros((1, 12, 12), np.float32), 2, 1, aggregate="max")


def test_unfolded_patches_match_the_fully_convolutional_twin():
    net = spread_net(n_outputs=2)
    x = torch.rand(2, 1, 20, 17)
    with torch.no_grad():
        fcn = to_fully_convolutional(net, 3)(x)
        unfolded = classify_unfolded(net, x, 3, batch_patches=7)
        chosen = patch_logits(net, 3, batch_patches=7)(x)
    assert fcn.shape == unfolded.shape == (2, 2, 5, 4)
    torch.testing.assert_close(unfolded, fcn, atol=1e-5, rtol=0)
    with torch.no_grad():  # the first layer over stacked shifted rows: the same function
        stacked = to_fully_convolutional(net, 3, stacked_rows=True)(x)
    torch.testing.assert_close(stacked, fcn, atol=1e-5, rtol=0)
    torch.testing.assert_close(chosen, fcn, atol=0, rtol=0)


@pytest.mark.parametrize("stride", [1, 5])
def test_patch_cnn_dense_output_equals_patch_by_patch(stride):
    torch.manual_seed(0)
    net = OPConvNet(patch_size=8, n_outputs=1, channels=(4, 8), hidden=8, dropout=0.5)
    net.classifier[-1].weight.data *= 100  # untrained BN statistics leave the logits near 0
    net.train()  # segment_slices must switch BN and dropout to eval and restore the mode
    slices = np.random.default_rng(0).random((2, 13, 11)).astype(np.float32)
    dense, patch_probs = segment_slices(net, slices, stride, batch_slices=1, batch_patches=5)
    assert net.training
    expected = patch_by_patch(net.eval(), slices, stride)
    np.testing.assert_allclose(dense, expected, atol=1e-5)
    assert dense.shape == (2, 1, 13, 11) and dense.std() > 1e-3


def test_pixelwise_nets_segment_in_batches_with_the_main_head():
    torch.manual_seed(0)
    net = DTVNet(
        in_channels=1,
        n_outputs=1,
        base_channels=2,
        aux_channels=2,
        depth=2,
        rates=[1, 2],
        image_pooling=False,
    )
    slices = np.random.default_rng(0).random((3, 13, 11)).astype(np.float32)
    probs = segment_slices_pixelwise(net, slices, batch_slices=2)
    assert net.training and probs.shape == (3, 1, 13, 11)
    with torch.no_grad():
        expected = torch.sigmoid(net.eval()(torch.from_numpy(slices)[:, None])[0]).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.parametrize(("offset", "batch"), [(1, 3), (2, 2), (3, 4)])
def test_saunet_batches_with_their_neighbours_equal_the_triplets(offset, batch):
    """Features once per batch (+ k slices beyond each end) give the triplets' probabilities."""
    torch.manual_seed(0)
    net = SAUNet(1, 4, 4, 2, 2, 2, 8, 8).eval()
    slices = np.random.default_rng(1).random((7, 12, 16)).astype(np.float32)
    probs = segment_slices_pixelwise(net, slices, batch_slices=batch, context_offset=offset)
    with torch.no_grad():
        triplets = neighbour_triplets(torch.from_numpy(slices)[:, None], offset)
        expected = torch.sigmoid(net(triplets)).numpy()
    assert probs.shape == (7, 1, 12, 16)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_slices_smaller_than_a_patch_are_padded():
    net = StackedSparseAutoencoder(patch_size=8, n_layers=1, n_nodes=3, n_outputs=1).eval()
    dense, _ = segment_slices(net, np.random.rand(1, 6, 5).astype(np.float32), 2, 1)
    assert dense.shape == (1, 1, 6, 5) and np.isfinite(dense).all()


def test_calibration_finds_the_separating_threshold():
    probs = np.array([0.1, 0.2, 0.3, 0.62, 0.7, 0.9])
    truth = np.array([0, 0, 0, 1, 1, 1], bool)
    threshold, dice = calibrate_threshold([probs], [truth], np.round(np.arange(0.05, 1, 0.05), 2))
    assert 0.3 < threshold <= 0.6 and dice == pytest.approx(1.0)


def test_decide_thresholds_binary_and_argmaxes_multiclass():
    probs = np.array([0.2, 0.6]).reshape(1, 1, 1, 2)
    assert decide(probs, 0.5).tolist() == [[[0, 1]]]
    multi = np.array([[0.2, 0.5], [0.7, 0.1], [0.1, 0.4]]).reshape(1, 3, 1, 2)
    assert decide(multi, None).tolist() == [[[1, 0]]]


def test_postprocess_keeps_largest_component_and_drops_small_ones():
    labels = np.zeros((1, 10, 10), np.uint8)
    labels[0, :4, :4] = 1  # 16 voxels
    labels[0, 8:, 8:] = 1  # 4 voxels
    labels[0, 6, 0] = 2  # 1 voxel of another class
    out = postprocess(labels, min_size=2, keep_largest=1, opening_radius=0)
    assert out.sum() == 16 and (out == 2).sum() == 0


@pytest.mark.parametrize("engine", ["rows", "fcn", "fcn_stacked", "unfold"])
@pytest.mark.parametrize("stride", [1, 3])
def test_every_engine_equals_patch_by_patch_across_bands_and_threads(engine, stride):
    net = spread_net(n_layers=3)
    slices = np.random.default_rng(1).random((3, 23, 19)).astype(np.float32)
    threads = torch.get_num_threads()
    # 10 patches per band: several bands per slice, shared by two threads
    dense, patch_probs = segment_slices(
        net,
        slices,
        stride,
        batch_slices=2,
        engine=engine,
        chunk_positions=10,
        threads=2,
        batch_patches=7,
    )
    np.testing.assert_allclose(dense, patch_by_patch(net, slices, stride), atol=1e-5)
    auto_dense, auto_patch = segment_slices(net, slices, stride, batch_slices=3)
    np.testing.assert_allclose(patch_probs, auto_patch, atol=1e-5)
    assert torch.get_num_threads() == threads  # the worker threads' setting does not leak


def test_unknown_or_unsuitable_engines_are_refused():
    net = StackedSparseAutoencoder(patch_size=8, n_layers=1, n_nodes=3, n_outputs=1)
    slices = np.zeros((1, 9, 9), np.float32)
    with pytest.raises(ValueError, match="engine='fast'"):
        segment_slices(net, slices, 2, 1, engine="fast")
    cnn = OPConvNet(patch_size=8, n_outputs=1, channels=(2, 2), hidden=2, dropout=0.0)
    with pytest.raises(ValueError, match="needs a StackedSparseAutoencoder"):
        segment_slices(cnn, slices, 2, 1, engine="rows")


@pytest.mark.parametrize("lesion_voxels", [2000, 600])
def test_tied_min_sizes_go_to_the_largest_and_a_strict_preference_stands(lesion_voxels):
    """A lesion and a 100-voxel false positive. With a 2000-voxel lesion, min_size 250 and 1000
    both keep the lesion alone (a tie: 1000 is chosen, by both calibrations); with a 600-voxel
    lesion, 1000 drops it, and validation's strict preference for 250 stands."""
    from penn.calibration import calibrate_decision, calibrate_min_size
    from penn.inference.predictor import Prediction

    truth = np.zeros((10, 40, 40), np.uint8)
    depth = lesion_voxels // 200
    truth[1 : 1 + depth, 5:25, 5:15] = 1  # depth x 20 x 10 voxels
    probs = truth[:, None].astype(np.float32) * 0.9
    probs[8, 0, 30:40, 30:40] = 0.8  # a 100-voxel false positive in one slice
    inference = {
        "threshold": 0.5,
        "calibration": {
            "method": "joint",
            "low": 0.5,
            "high": 0.7,
            "step": 0.1,
            "min_sizes": [0, 250, 1000],
        },
        "postprocess": {"min_size": 0, "keep_largest": None, "opening_radius": 0},
    }
    expected = 1000 if lesion_voxels > 1000 else 250
    pred = [Prediction(probs, None)]
    threshold, min_size, record = calibrate_decision(pred, [truth], inference)
    assert (threshold, min_size) == (0.5, expected)  # thresholds 0.5-0.7 tie too: the lowest
    assert record["postprocess"]["val_pooled_dice"][expected] == 1.0
    assert calibrate_min_size(pred, [truth], 0.5, inference)[0] == expected


def test_min_size_is_chosen_on_validation_and_drops_small_false_positives():
    from penn.calibration import calibrate_min_size
    from penn.inference.predictor import Prediction

    truth = np.zeros((4, 20, 20), np.uint8)
    truth[1:3, 2:8, 2:8] = 1  # a 72-voxel lesion
    probs = truth[:, None].astype(np.float32) * 0.9
    probs[2, 0, 15:17, 15:18] = 0.8  # a 6-voxel false positive
    inference = {
        "calibration": {"min_sizes": [0, 5, 10, 100]},
        "postprocess": {"min_size": 0, "keep_largest": None, "opening_radius": 0},
    }
    size, record = calibrate_min_size([Prediction(probs, None)], [truth], 0.5, inference)
    # 0 and 5 keep the false positive (Dice 144 / 150); 10 keeps only the lesion; 100 drops all
    assert size == 10
    assert record["val_pooled_dice"] == pytest.approx(
        {0: 144 / 150, 5: 144 / 150, 10: 1.0, 100: 0.0}
    )
    inference["calibration"]["min_sizes"] = []
    assert calibrate_min_size([Prediction(probs, None)], [truth], 0.5, inference)[0] == 0


def test_multi_class_min_size_is_chosen_per_class():
    """A 3-class map: a 100-voxel vertebra with a 12-voxel false speck and a true 8-voxel
    lesion. No shared min_size drops the speck and keeps the smaller lesion; per class,
    vertebra takes 50 (ties with 20 go to the largest) and tumour 0, and postprocess applies
    the list class by class."""
    from penn.calibration import calibrate_decision
    from penn.inference.predictor import Prediction

    truth = np.zeros((4, 20, 20), np.uint8)
    truth[0:4, 2:7, 2:7] = 1  # vertebra: 100 voxels
    truth[1:3, 12:14, 12:14] = 2  # tumour: 8 voxels
    labels = truth.copy()
    labels[1:4, 17:19, 2:4] = 1  # a 12-voxel vertebra false positive
    probs = np.stack([labels == c for c in range(3)], axis=1).astype(np.float32)
    inference = {
        "calibration": {"method": "joint", "min_sizes": [0, 20, 50]},
        "postprocess": {"min_size": 0, "keep_largest": None, "opening_radius": 0},
    }
    names = ["vertebra", "tumor"]
    threshold, min_size, record = calibrate_decision(
        [Prediction(probs, None)], [truth], inference, names
    )
    assert threshold is None and min_size == [50, 0]
    scores = record["postprocess"]["val_pooled_dice"]
    assert scores["vertebra"] == pytest.approx({0: 200 / 212, 20: 1.0, 50: 1.0})
    assert scores["tumor"] == pytest.approx({0: 1.0, 20: 0.0, 50: 0.0})
    # a class's own candidates (by name): the tumour's 0 and 5 tie, so the larger stands
    inference["calibration"]["class_min_sizes"] = {"tumor": [0, 5]}
    _, own, record = calibrate_decision([Prediction(probs, None)], [truth], inference, names)
    assert own == [50, 5]
    assert record["postprocess"]["val_pooled_dice"]["tumor"] == pytest.approx({0: 1.0, 5: 1.0})
    cleaned = postprocess(labels, min_size=min_size, keep_largest=None, opening_radius=0)
    np.testing.assert_array_equal(cleaned, truth)
    with pytest.raises(ValueError, match="no entry for class 2"):
        postprocess(labels, min_size=[5], keep_largest=None, opening_radius=0)


@pytest.mark.parametrize(
    "postprocessing",
    [
        {"keep_largest": None, "opening_radius": 0},
        {"keep_largest": 1, "opening_radius": 0},
        {"keep_largest": None, "opening_radius": 1},
    ],
)
def test_joint_calibration_equals_brute_force_over_thresholds_and_min_sizes(postprocessing):
    """calibrate_decision (method joint) against every (threshold, min_size) pair scored with
    postprocess and hand-counted TP/FP/FN. A 250-voxel false positive at 0.6 makes the best
    threshold alone a high one that cuts the 300-voxel lesion; together, a low threshold with
    min_size 280 keeps the whole lesion and drops the false positive."""
    from penn.calibration import calibrate_decision
    from penn.inference.predictor import Prediction

    rng = np.random.default_rng(3)
    truths, predictions = [], []
    for _ in range(2):
        truth = np.zeros((5, 24, 24), np.uint8)
        truth[1:4, 2:12, 2:12] = 1  # 300 voxels
        probs = np.where(
            truth, rng.uniform(0.45, 0.95, truth.shape), rng.uniform(0, 0.3, truth.shape)
        )
        probs[:, 12:22, 16:21] = 0.6  # a 250-voxel false positive
        truths.append(truth)
        predictions.append(Prediction(probs[:, None].astype(np.float32), None))
    sizes = [0, 10, 280]
    inference = {
        "threshold": 0.5,
        "calibration": {
            "method": "joint",
            "low": 0.3,
            "high": 0.9,
            "step": 0.05,
            "min_sizes": sizes,
        },
        "postprocess": {"min_size": 0, **postprocessing},
    }
    threshold, min_size, record = calibrate_decision(predictions, truths, inference)
    dice = {}
    for t in np.round(np.arange(0.3, 0.9 + 1e-9, 0.05), 6):
        for m in sizes:
            tp = fp = fn = 0
            for pred, truth in zip(predictions, truths, strict=True):
                mask = postprocess(decide(pred.probs, t), m, **postprocessing).astype(bool)
                tp += (mask & (truth > 0)).sum()
                fp += (mask & (truth == 0)).sum()
                fn += (~mask & (truth > 0)).sum()
            dice[float(t), m] = 2 * tp / (2 * tp + fp + fn)
    top = max(dice.values())
    assert record["val_pooled_dice"] == pytest.approx(top)
    assert dice[threshold, min_size] == pytest.approx(top)
    assert record["postprocess"]["val_pooled_dice"] == pytest.approx(
        {m: max(v for (_, size), v in dice.items() if size == m) for m in sizes}
    )
    if postprocessing["keep_largest"] is None and postprocessing["opening_radius"] == 0:
        assert (threshold, min_size, top) == (0.3, 280, 1.0)
        inference["calibration"]["method"] = "grid"
        grid_threshold, grid_min_size, _ = calibrate_decision(predictions, truths, inference)
        assert grid_threshold > 0.5 and dice[grid_threshold, grid_min_size] < 0.9


def test_joint_calibration_objective_mean_scores_false_positives_on_target_free_volumes():
    """Hand-counted: volume A holds a 200-voxel lesion (150 voxels at p 0.9, 50 at 0.65),
    volume B no target but a 20-voxel blob at 0.65. Threshold 0.5: A Dice 1, B Dice 0 (20 FP),
    pooled 400 / 420, mean per volume 0.5. Threshold 0.7: A Dice 300 / 350, B nothing predicted
    (no Dice, left out), pooled and mean 300 / 350."""
    from penn.calibration import calibrate_decision
    from penn.inference.predictor import Prediction

    truth_a, probs_a = np.zeros((2, 20, 20), np.uint8), np.zeros((2, 20, 20), np.float32)
    truth_a[:, 2:12, 2:12] = 1
    probs_a[:, 2:12, 2:12] = 0.9
    probs_a[0, 2:7, 2:12] = 0.65  # 50 lesion voxels at 0.65
    truth_b, probs_b = np.zeros((2, 20, 20), np.uint8), np.zeros((2, 20, 20), np.float32)
    probs_b[0, 10:14, 10:15] = 0.65  # 20 voxels, a false positive
    predictions = [Prediction(p[:, None], None) for p in (probs_a, probs_b)]
    inference = {
        "threshold": 0.5,
        "calibration": {
            "method": "joint",
            "objective": "pooled",
            "low": 0.5,
            "high": 0.7,
            "step": 0.2,
            "min_sizes": [0],
        },
        "postprocess": {"min_size": 0, "keep_largest": None, "opening_radius": 0},
    }
    threshold, _, record = calibrate_decision(predictions, [truth_a, truth_b], inference)
    assert threshold == 0.5
    assert record["val_pooled_dice"] == pytest.approx(400 / 420)
    assert record["val_mean_dice"] == pytest.approx(0.5)
    inference["calibration"]["objective"] = "mean"
    threshold, _, record = calibrate_decision(predictions, [truth_a, truth_b], inference)
    assert threshold == 0.7
    assert record["val_pooled_dice"] == pytest.approx(300 / 350)
    assert record["val_mean_dice"] == pytest.approx(300 / 350)
    inference["calibration"]["objective"] = "median"
    with pytest.raises(ValueError, match="objective='median'"):
        calibrate_decision(predictions, [truth_a, truth_b], inference)
    inference["calibration"] |= {"objective": "mean", "method": "grid"}
    with pytest.raises(ValueError, match="needs calibration.method=joint"):
        calibrate_decision(predictions, [truth_a, truth_b], inference)


def test_smoothing_across_slices_is_a_gaussian_in_mm():
    """A one-slice spot in the middle of 9 slices, 3 mm apart, sigma 3 mm (one slice): slice
    4 + d keeps exp(-d^2 / 2) / sum over |k| <= 4 of exp(-k^2 / 2) of it (scipy's kernel reaches
    4 sigma); a spot that continues over every slice is left as it is."""
    from penn.inference.predictor import smooth_across_slices

    probs = np.zeros((9, 1, 3, 3), np.float32)
    probs[4, 0, 1, 1] = 1.0
    probs[:, 0, 0, 0] = 0.7
    out = smooth_across_slices(probs, sigma_mm=3.0, slice_spacing=3.0)
    weights = np.exp(-(np.arange(-4, 5) ** 2) / 2)
    np.testing.assert_allclose(out[:, 0, 1, 1], weights / weights.sum(), atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 0, 0], 0.7, atol=1e-6)
    assert out[4, 0, 1, 1] < 0.5  # a one-slice spot at 1.0 falls below 0.5
    np.testing.assert_allclose(
        smooth_across_slices(probs, 6.0, 2.0), smooth_across_slices(probs, 3.0, 1.0), atol=1e-7
    )
    assert smooth_across_slices(probs, 0.0, 3.0) is probs
    with pytest.raises(ValueError, match="slice spacing 0.0 mm"):
        smooth_across_slices(probs, 3.0, 0.0)


def test_predict_volumes_smooths_across_each_volumes_own_slices():
    from penn.inference.predictor import predict_volumes, smooth_across_slices

    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=8, n_layers=1, n_nodes=4, n_outputs=1).eval()
    volumes = [np.random.default_rng(k).random((5, 12, 12)).astype(np.float32) for k in (1, 2)]
    inference = {"stride": 2, "batch_slices": 2, "aggregate": "center", "center_sigma": 0.0}
    plain = predict_volumes(net, volumes, inference, device="cpu", progress=False)
    inference["slice_sigma_mm"] = 3.0
    smooth = predict_volumes(
        net, volumes, inference, device="cpu", progress=False, slice_spacings=[3.0, 1.5]
    )
    for p, s, spacing in zip(plain, smooth, [3.0, 1.5], strict=True):
        expected = smooth_across_slices(p.probs, 3.0, spacing)
        assert not np.allclose(expected, p.probs)
        np.testing.assert_allclose(s.probs, expected, atol=1e-6)
        np.testing.assert_array_equal(s.patch_probs, p.patch_probs)  # the network's own grid
    with pytest.raises(ValueError, match="slice_sigma_mm=3 smooths across slices"):
        predict_volumes(net, volumes, inference, device="cpu", progress=False)


@pytest.mark.parametrize("context", [0, 1])
def test_channels_last_gives_the_same_probabilities_and_keeps_the_net(context):
    torch.manual_seed(0)
    net = SAUNet(1, 4, 4, 2, 2, 2, 8, 8) if context else UNet(1, 1, 4, 2)
    slices = np.random.default_rng(2).random((5, 20, 24)).astype(np.float32)
    plain = segment_slices_pixelwise(net, slices, 2, context_offset=context)
    fast = segment_slices_pixelwise(net, slices, 2, context_offset=context, channels_last=True)
    np.testing.assert_allclose(fast, plain, atol=1e-5)
    weight = next(p for p in net.parameters() if p.dim() == 4)
    assert weight.is_contiguous()  # given back in the usual layout
