"""Hard-negative mining: the sampler keeps its class ratio, the callback picks the hardest."""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from penn.lit.finetune import FinetuneModule
from penn.lit.mining import HardNegativeMining, background_scores
from penn.patches.balance import BalancedSampler
from penn.run import make_datamodule


def test_sampler_swaps_random_background_for_hard_at_the_same_ratio() -> None:
    targets = np.r_[np.zeros(900, np.uint8), np.ones(100, np.uint8)]
    sampler = BalancedSampler(targets, 0.6, seed=3, resample=True)
    plain = np.array(list(sampler))
    hard = np.arange(0, 120, 2)  # 60 background patches
    sampler.set_hard(hard)
    mixed = np.array(list(sampler))
    assert len(mixed) == len(plain) == 250
    assert np.bincount(targets[mixed]).tolist() == [150, 100]
    assert len(np.unique(mixed)) == len(mixed)
    assert set(hard) <= set(mixed)
    with pytest.raises(ValueError, match="background"):
        sampler.set_hard([950])
    with pytest.raises(ValueError, match="exceed"):
        sampler.set_hard(np.arange(151))


class _KeepFirstEpochNet(L.Callback):
    """Keeps the network after epoch 0; listed before a miner, it is the one the miner scored."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.net = copy.deepcopy(pl_module.net)


def _tiny_datamodule(cfg):
    L.seed_everything(0)
    dm = make_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _fit_two_epochs(cfg, dm, miner) -> torch.nn.Module:
    """Fine-tunes a fresh network for 2 short epochs with ``miner``; the net after epoch 0."""
    net = instantiate(cfg.model.net, n_outputs=dm.n_outputs)
    module = FinetuneModule(net, dm.n_classes, optimizer=instantiate(cfg.model.finetune.optimizer))
    first = _KeepFirstEpochNet()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[first, miner],
    )
    trainer.fit(module, datamodule=dm)
    return first.net


def test_callback_hands_the_highest_scoring_background_to_the_sampler(cfg_tiny) -> None:
    dm = _tiny_datamodule(cfg_tiny)
    mining = HardNegativeMining(fraction=0.5, pool=300, seed=1)
    first_net = _fit_two_epochs(cfg_tiny, dm, mining)
    sampler, dataset = dm.train_sampler, dm.train_dataset
    hard = mining._hard
    assert len(hard) == round(0.5 * sampler.n_majority)
    np.testing.assert_array_equal(np.sort(sampler.hard), np.sort(hard))
    assert (dataset.targets[hard] == 0).all()
    # independent recomputation: sigmoid of the network after epoch 0 on the pool drawn then;
    # after the last epoch (1) nothing is mined, since no epoch follows that would use it
    net = first_net
    background = np.flatnonzero(dataset.targets == 0)
    pool = np.sort(np.random.default_rng([1, 0, 17]).choice(background, 300, replace=False))
    with torch.no_grad():
        probs = torch.sigmoid(net.eval()(dataset.patches(pool))[:, 0]).numpy()
    np.testing.assert_allclose(
        background_scores(net, dataset, pool, 64, torch.device("cpu")), probs, atol=1e-6
    )
    assert probs[np.isin(pool, hard)].min() >= probs[~np.isin(pool, hard)].max()
