import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from penn.models.baselines.dtvnet import DTVNet, contour_target
from penn.models.baselines.multiresunet import MultiResUNet, multires_widths
from penn.models.baselines.opconvnet import OPConvNet
from penn.models.baselines.padding import crop_to, pad_to_multiple
from penn.models.baselines.sau_net import SAUNet, neighbour_triplets
from penn.models.baselines.unet import UNet
from tests.conftest import CONF


def small_unet(n_outputs: int = 1) -> UNet:
    return UNet(in_channels=1, n_outputs=n_outputs, base_channels=4, depth=4)


def small_multiresunet(n_outputs: int = 1) -> MultiResUNet:
    return MultiResUNet(in_channels=1, n_outputs=n_outputs, base_channels=4, alpha=1.67)


def n_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("size", [(32, 32), (45, 37), (33, 64)])
def test_pad_then_crop_restores_the_slice(size):
    x = torch.rand(2, 1, *size)
    padded, original = pad_to_multiple(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert original == size
    assert torch.equal(crop_to(padded, original), x)


def test_pad_to_a_minimum_size():
    x = torch.rand(1, 1, 4, 40)
    padded, original = pad_to_multiple(x, 16, minimum=32)
    assert padded.shape[-2:] == (32, 48) and original == (4, 40)
    assert torch.equal(crop_to(padded, original), x)


@pytest.mark.parametrize("make", [small_unet, small_multiresunet])
@pytest.mark.parametrize("size", [(16, 16), (45, 37), (17, 33)])
def test_pixel_nets_keep_the_input_size(make, size):
    net = make(n_outputs=3).eval()
    assert net(torch.rand(2, 1, *size)).shape == (2, 3, *size)


def test_opconvnet_maps_patches_to_logits():
    net = OPConvNet(patch_size=32, n_outputs=1, channels=(32, 64, 128), hidden=256, dropout=0.5)
    assert net(torch.rand(5, 1, 32, 32)).shape == (5, 1)
    assert net(torch.rand(5, 32 * 32)).shape == (5, 1)  # flattened patches, as PENN takes them
    assert 0.78e6 < n_parameters(net) < 0.84e6  # about 0.8 M, as published
    with pytest.raises(ValueError, match="patch_size 20"):
        OPConvNet(patch_size=20, n_outputs=1, channels=(8, 8, 8), hidden=4, dropout=0.0)


def _loss_before_and_after_one_step(net, x, target):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    losses = []
    for _ in range(2):  # the second forward pass measures the loss after the first step
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make", [small_unet, small_multiresunet])
def test_pixel_nets_learn_a_fixed_batch(make):
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    target = (x > 0.5).float()
    losses = _loss_before_and_after_one_step(make(), x, target)
    assert losses[1] < losses[0]


def test_opconvnet_learns_a_fixed_batch():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 16, 16)
    target = (x.mean(dim=(1, 2, 3)) > 0.5).float()[:, None]
    net = OPConvNet(patch_size=16, n_outputs=1, channels=(4, 8, 8), hidden=16, dropout=0.0)
    losses = _loss_before_and_after_one_step(net, x, target)
    assert losses[1] < losses[0]


def test_multiresunet_follows_the_keras_channel_rule():
    assert multires_widths(32, 1.67) == (8, 17, 26)
    net = MultiResUNet(in_channels=1, n_outputs=1, base_channels=32, alpha=1.67)
    assert net.block_widths == [51, 105, 212, 426, 853]
    # Keras counts BN moving statistics as (non-trainable) parameters: about 7.26 M in all
    running = sum(b.numel() for name, b in net.named_buffers() if "running" in name)
    assert abs(n_parameters(net) + running - 7.26e6) < 0.01e6


def test_unet_has_the_reference_size():
    net = UNet(in_channels=1, n_outputs=2, base_channels=64, depth=4)
    assert abs(n_parameters(net) - 31.0e6) < 0.1e6  # about 31.0 M, as published


def test_opconvnet_config_builds_the_patch_cnn_without_pretraining():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=opconvnet"])
    net = instantiate(cfg.model.net, n_outputs=1)
    assert isinstance(net, OPConvNet) and cfg.model.pretrain.epochs == 0
    n = cfg.data.patches.size
    assert net(torch.rand(2, 1, n, n)).shape == (2, 1)


def small_saunet(n_outputs: int = 1, memory_efficient: bool = False) -> SAUNet:
    return SAUNet(
        n_outputs=n_outputs,
        memory_efficient=memory_efficient,
        stem_channels=4,
        growth=4,
        depth=2,
        encoder_layers=2,
        decoder_layers=2,
        decoder_channels=8,
        feature_channels=8,
    )


def test_saunet_keeps_the_slice_size():
    net = small_saunet(n_outputs=3).eval()
    assert net(torch.rand(2, 3, 21, 19)).shape == (2, 3, 21, 19)


def test_isa_on_identical_slices_scales_features_by_one_plus_two_gates():
    torch.manual_seed(0)
    net = small_saunet().eval()
    feats = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        expected = net.head(feats * (1 + 2 * torch.sigmoid(net.attention(feats))))
        torch.testing.assert_close(net.attend(feats, feats, feats), expected)


def test_saunet_volume_features_computed_once_equal_the_per_slice_run():
    torch.manual_seed(0)
    net = small_saunet().eval()
    slices = torch.rand(5, 1, 16, 20)
    triplets = neighbour_triplets(slices, 2)
    assert torch.equal(triplets[0, 0], slices[0, 0]) and torch.equal(triplets[4, 2], slices[4, 0])
    assert torch.equal(triplets[2, 0], slices[0, 0]) and torch.equal(triplets[2, 2], slices[4, 0])
    with torch.no_grad():
        torch.testing.assert_close(net.segment_volume(slices, 2), net(triplets), atol=1e-5, rtol=0)


def test_memory_efficient_saunet_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = small_saunet()
    lean = small_saunet(memory_efficient=True)
    lean.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 16, 20)
    outs, grads = [], []
    for net in (plain, lean):
        out = net.train()(x)
        (out**2).mean().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(outs[1], outs[0])
    assert len(grads[0]) == len(grads[1]) > 10
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def small_dtvnet() -> DTVNet:
    return DTVNet(
        in_channels=1,
        n_outputs=1,
        base_channels=4,
        aux_channels=2,
        depth=4,
        rates=[2, 4, 6],
        image_pooling=True,
    )


def test_contour_target_is_a_band_around_the_mask_and_empty_without_one():
    assert contour_target(torch.zeros(1, 1, 8, 8)).sum() == 0
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    band = contour_target(mask)[0, 0]
    expected = torch.zeros(8, 8)
    expected[1:7, 1:7] = 1
    expected[3:5, 3:5] = 0  # dilation (6x6) minus erosion (2x2)
    assert torch.equal(band, expected)


def test_dtvnet_mask_comes_from_the_main_head_alone():
    torch.manual_seed(0)
    net = small_dtvnet().eval()
    x = torch.rand(2, 1, 21, 19)
    with torch.no_grad():
        mask, contour = net(x)
        net.contour_head.weight.add_(1.0)
        mask_after, contour_after = net(x)
    assert mask.shape == contour.shape == (2, 1, 21, 19)
    assert torch.equal(mask, mask_after) and not torch.equal(contour, contour_after)
