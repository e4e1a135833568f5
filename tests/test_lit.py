import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from penn.lit.finetune import FinetuneModule
from penn.lit.pretrain import PretrainModule
from penn.models.sparse_ae import StackedSparseAutoencoder


def loader(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def fit(module, epochs=2):
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader())


def snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_greedy_stage_trains_only_its_own_autoencoder():
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=8, n_layers=3, n_nodes=6, n_outputs=1)
    before = snapshot(net)
    module = PretrainModule(
        net,
        stage=1,
        lambda_l2=1e-3,
        beta=1.0,
        rho=0.1,
        l2_on="encoder",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
    )
    fit(module)
    after = snapshot(net)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {
        "stages.1.encoder.weight",
        "stages.1.encoder.bias",
        "stages.1.decoder.weight",
        "stages.1.decoder.bias",
    }


def test_stage_trains_on_codes_of_the_frozen_stages():
    net = StackedSparseAutoencoder(patch_size=8, n_layers=2, n_nodes=5, n_outputs=1)
    module = PretrainModule(
        net,
        stage=1,
        lambda_l2=0.0,
        beta=0.0,
        rho=0.1,
        l2_on="encoder",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    x = torch.rand(4, 1, 8, 8)
    codes = net.encode(x, depth=1)
    expected, _ = net.stages[1].loss(codes, 0.0, 0.0, 0.1, "encoder")
    assert torch.allclose(module.training_step((x, None), 0), expected)


def test_finetuning_updates_every_layer_and_lowers_the_loss():
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=8, n_layers=2, n_nodes=6, n_outputs=1)
    for p in net.stages[0].parameters():  # as left by a pretraining stage
        p.requires_grad_(False)
    module = FinetuneModule(net, n_classes=2, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    batch = next(iter(loader()))
    before = snapshot(net)
    with torch.no_grad():
        start = torch.nn.functional.binary_cross_entropy_with_logits(
            net(batch[0])[:, 0], batch[1].float()
        ).item()
    fit(module, epochs=5)
    after = snapshot(net)
    assert all(not torch.equal(before[k], after[k]) for k in before if "decoder" not in k)
    with torch.no_grad():
        end = torch.nn.functional.binary_cross_entropy_with_logits(
            net(batch[0])[:, 0], batch[1].float()
        ).item()
    assert end < start
