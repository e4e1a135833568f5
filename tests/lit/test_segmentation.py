import functools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from penn.lit.segmentation import SegmentationModule, segmentation_loss, soft_dice_loss
from penn.models.baselines.dtvnet import DTVNet
from penn.models.baselines.unet import UNet
from tests.lit.trainers import bare_trainer


def square_masks() -> torch.Tensor:
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, 2:6, 2:6] = 1
    return masks


def test_soft_dice_loss_is_zero_when_right_and_one_when_wrong():
    masks = square_masks()
    right = (masks[:, None].float() * 2 - 1) * 30  # +30 inside, -30 outside
    assert soft_dice_loss(right, masks).item() < 1e-3
    assert soft_dice_loss(-right, masks).item() > 0.9


def test_multiclass_dice_scores_the_foreground_classes_only():
    masks = square_masks()
    logits = torch.full((2, 3, 8, 8), -30.0)
    logits[:, 0] = 30.0 * (masks == 0)
    logits[:, 1] = 30.0 * (masks == 1)
    # class 2 never occurs and is never predicted: the eps-smoothed Dice gives it 1
    assert soft_dice_loss(logits, masks).item() < 1e-3
    assert segmentation_loss(logits, masks, dice_weight=1.0).item() < 1e-3


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")  # no Trainer attached
def test_contour_branch_adds_its_weighted_loss():
    torch.manual_seed(0)
    net = DTVNet(
        in_channels=1,
        n_outputs=1,
        base_channels=2,
        aux_channels=2,
        depth=2,
        rates=[1, 2],
        image_pooling=False,
    ).eval()
    batch = (torch.rand(2, 1, 8, 8), square_masks())
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    losses = [
        SegmentationModule(net, 2, adam, dice_weight=1.0, contour_weight=w)._shared_step(
            batch, "val"
        )
        for w in (0.0, 1.0)
    ]
    assert losses[1] > losses[0]


def test_unet_trains_and_logs_pixel_metrics(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(4, 1, 20, 18)
    masks = (images[:, 0] > 0.5).long()
    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    net = UNet(in_channels=1, n_outputs=1, base_channels=2, depth=2)
    module = SegmentationModule(
        net, 2, functools.partial(torch.optim.AdamW, lr=1e-2), dice_weight=1.0, contour_weight=0.0
    )
    trainer = bare_trainer(3, default_root_dir=tmp_path)
    with torch.no_grad():
        first = segmentation_loss(net.eval()(images), masks, 1.0).item()
    net.train()
    trainer.fit(module, loader, loader)
    assert {"train/pixel/loss", "val/pixel/loss", "val/pixel/dice"} <= set(trainer.callback_metrics)
    with torch.no_grad():
        last = segmentation_loss(module.eval()(images), masks, 1.0).item()
    assert last < first


def test_class_weights_weigh_the_cross_entropy_per_class():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 3, 5, 6), torch.randint(0, 3, (2, 5, 6))
    weights = [0.5, 1.0, 4.0]
    # reference: the weighted mean of -log p(true class), weights of each pixel's true class
    log_p = torch.log_softmax(logits, 1).gather(1, masks[:, None])[:, 0]
    w = torch.tensor(weights)[masks]
    expected = -(w * log_p).sum() / w.sum()
    got = segmentation_loss(logits, masks, dice_weight=0.0, class_weights=weights)
    torch.testing.assert_close(got, expected)
    plain = segmentation_loss(logits, masks, dice_weight=0.0)
    torch.testing.assert_close(plain, -log_p.mean())
    with pytest.raises(ValueError, match="one weight per class"):
        segmentation_loss(logits, masks, 0.0, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="multi-class"):
        segmentation_loss(logits[:, :1], masks > 0, 0.0, class_weights=[1.0])


def test_class_weights_from_the_config_keep_checkpoints_weights_only(tmp_path):
    """class_weights arrive from Hydra as a ListConfig; the saved hyperparameters must be plain
    floats, or restoring the best checkpoint (torch.load(weights_only=True)) fails."""
    from omegaconf import OmegaConf

    net = UNet(in_channels=1, n_outputs=3, base_channels=2, depth=2)
    weights = OmegaConf.create({"w": [1, 1, 4]}).w
    module = SegmentationModule(
        net,
        3,
        functools.partial(torch.optim.AdamW, lr=1e-2),
        dice_weight=1.0,
        contour_weight=0.0,
        class_weights=weights,
    )
    images, masks = torch.rand(2, 1, 16, 16), torch.randint(0, 3, (2, 16, 16))
    trainer = bare_trainer(1, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(images, masks), batch_size=2))
    trainer.save_checkpoint(tmp_path / "best.ckpt")
    blob = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=True)
    assert blob["hyper_parameters"]["class_weights"] == [1.0, 1.0, 4.0]
    assert module.class_weights == [1.0, 1.0, 4.0]
