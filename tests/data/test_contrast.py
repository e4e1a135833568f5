"""penn.data.contrast: the remapping curve by hand, seeding, and image-label alignment."""

import numpy as np
import pytest
import torch

from penn.data.contrast import ContrastAugment, RandRemap, remap

OFF = dict(
    remap_p=0.0,
    remap_points=[4, 10],
    histogram_p=0.0,
    histogram_points=[5, 10],
    invert_p=0.0,
    bias_p=0.0,
    bias_coeff=[0.0, 0.3],
    lowres_p=0.0,
    lowres_zoom=[0.3, 0.8],
    blur_p=0.0,
    blur_sigma=[0.5, 1.5],
    gamma_p=0.0,
    gamma=[0.5, 2.0],
    scale_p=0.0,
    scale=[-0.25, 0.25],
    shift_p=0.0,
    shift=[-0.1, 0.1],
    noise_p=0.0,
    noise_std=0.05,
    seed=0,
)
POINTWISE = dict(
    OFF, remap_p=0.7, histogram_p=0.3, invert_p=0.3, gamma_p=0.5, scale_p=0.5, shift_p=0.5
)
EVERYTHING = dict(POINTWISE, bias_p=0.5, lowres_p=0.5, blur_p=0.5, noise_p=0.5)


@pytest.mark.parametrize(
    "knots, image, expected",
    [
        ([0.0, 1.0], [0.0, 0.25, 1.0], [0.0, 0.25, 1.0]),  # identity
        ([1.0, 0.0], [0.0, 0.25, 1.0], [1.0, 0.75, 0.0]),  # inversion
        ([0.0, 1.0, 0.0], [0.25, 0.5, 0.75, 1.0], [0.5, 1.0, 0.5, 0.0]),  # non-monotone
        ([0.2, 0.6, 0.4, 1.0], [0.0, 1 / 6, 0.5, 2 / 3, 0.9], [0.2, 0.4, 0.5, 0.4, 0.82]),
        ([0.0, 1.0], [-0.5, 1.5], [0.0, 1.0]),  # clipped to [0, 1] first
    ],
)
def test_remap_follows_the_piecewise_linear_curve(knots, image, expected):
    out = remap(torch.tensor(image), np.array(knots))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_remap_draws_monotone_and_non_monotone_curves_of_the_configured_length():
    draw = RandRemap(prob=1.0, points=(3, 6))
    draw.set_random_state(seed=1)
    monotone = non_monotone = 0
    for _ in range(200):
        draw.randomize()
        steps = np.diff(draw.knots)
        assert 4 <= len(draw.knots) <= 7
        assert draw.knots.min() >= 0.0 and draw.knots.max() <= 1.0
        if (steps >= 0).all() or (steps <= 0).all():
            monotone += 1
        else:
            non_monotone += 1
    assert monotone > 60 and non_monotone > 60


def test_everything_off_returns_the_image():
    image = torch.rand(2, 32, 40)
    np.testing.assert_array_equal(ContrastAugment(**OFF)(image).numpy(), image.numpy())


def test_invert_alone_is_one_minus_the_image():
    image = torch.rand(1, 16, 16)
    out = ContrastAugment(**dict(OFF, invert_p=1.0))(image)
    np.testing.assert_allclose(out.numpy(), 1.0 - image.numpy(), atol=1e-6)


def test_the_same_seed_gives_the_same_draws_and_another_seed_others():
    image = torch.rand(3, 48, 48)
    first = ContrastAugment(**EVERYTHING)(image)
    a, b = ContrastAugment(**EVERYTHING), ContrastAugment(**EVERYTHING)
    c = ContrastAugment(**dict(EVERYTHING, seed=7))
    outs_a = [a(image) for _ in range(5)]
    outs_b = [b(image) for _ in range(5)]
    outs_c = [c(image) for _ in range(5)]
    assert torch.equal(first, outs_a[0])
    assert all(torch.equal(x, y) for x, y in zip(outs_a, outs_b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(outs_a, outs_c, strict=True))


def test_outputs_stay_in_range_with_their_shape_and_dtype():
    augment = ContrastAugment(**EVERYTHING)
    for _ in range(20):
        out = augment(torch.rand(3, 40, 24))
        assert out.shape == (3, 40, 24) and out.dtype == torch.float32
        assert type(out) is torch.Tensor
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_pointwise_transforms_keep_the_label_recoverable_from_the_image():
    """A two-tissue slice stays a two-tissue slice in the same place: the label still matches."""
    label = torch.zeros(64, 64, dtype=torch.bool)
    label[20:40, 10:50] = True
    image = torch.where(label, 0.7, 0.3)[None].float()
    augment = ContrastAugment(**POINTWISE)
    changed = 0
    for _ in range(30):
        out = augment(image)[0]
        inside, outside = out[label], out[~label]
        assert torch.all(inside == inside[0]) and torch.all(outside == outside[0])
        changed += not torch.equal(out, image[0])
    assert changed > 10


def test_spatially_varying_transforms_keep_the_tissue_boundary_in_place():
    """Bias, blur, low resolution and noise move grey values, not the body's outline."""
    label = torch.zeros(96, 96, dtype=torch.bool)
    label[30:70, 25:75] = True
    image = torch.where(label, 0.8, 0.1)[None].float()
    augment = ContrastAugment(
        **dict(
            OFF,
            bias_p=1.0,
            bias_coeff=[0.0, 0.1],
            lowres_p=1.0,
            lowres_zoom=[0.5, 0.8],
            blur_p=1.0,
            noise_p=1.0,
            noise_std=0.02,
        )
    )
    for _ in range(10):
        out = augment(image)[0]
        assert (out - image[0]).abs().mean() > 0.005  # the grey values did change
        recovered = out > 0.45
        agreement = (recovered == label).float().mean()
        assert agreement > 0.97


def _config(settings: dict) -> dict:
    """As in conf/model/slices: the seed comes from the run, not the config."""
    return {k: v for k, v in settings.items() if k != "seed"}


def test_slice_dataset_applies_the_contrast_augmentation_after_the_spatial_one():
    """With the spatial part at identity and inversion certain, a training slice comes back
    inverted and its class map untouched; the same seed gives the same stream."""
    from penn.data.slice_data import SliceDataset

    rng = np.random.default_rng(0)
    slices = [rng.random((3, 24, 20)).astype(np.float32)]
    labels = [(slices[0] > 0.5).astype(np.uint8)]
    identity = {
        "rotation_deg": 0.0,
        "scale": [1.0, 1.0],
        "elastic_px": 0.0,
        "elastic_grid": 3,
        "gamma": [1.0, 1.0],
        "noise_std": 0.0,
    }
    inverted = SliceDataset(
        slices,
        labels,
        [[1]],
        0,
        None,
        dict(identity, contrast=_config(dict(OFF, invert_p=1.0))),
        seed=3,
    )
    image, mask = inverted[1]
    np.testing.assert_allclose(image.numpy()[0], 1.0 - slices[0][1], atol=1e-5)
    np.testing.assert_array_equal(mask.numpy(), labels[0][1])
    a = SliceDataset(
        slices, labels, [[1]], 0, None, dict(identity, contrast=_config(EVERYTHING)), seed=3
    )
    b = SliceDataset(
        slices, labels, [[1]], 0, None, dict(identity, contrast=_config(EVERYTHING)), seed=3
    )
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(3))
