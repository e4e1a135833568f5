import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from penn.lit.finetune import FinetuneModule
from penn.lit.pretrain import PretrainModule
from penn.models.sparse_ae import StackedSparseAutoencoder
from tests.lit.trainers import bare_trainer


def loader(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def fit(module, epochs=2):
    trainer = bare_trainer(epochs)
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


def grouped_fit(make_module, batch_size, steps_per_batch):
    """Fits a fresh module on 64 fixed patches; returns (net states before and after,
    global_step, epoch losses)."""
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=8, n_layers=2, n_nodes=6, n_outputs=1)
    before = snapshot(net)
    module = make_module(net, steps_per_batch)
    data = loader().dataset
    trainer = bare_trainer(2)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=batch_size))
    loss = {k: v for k, v in trainer.callback_metrics.items() if k.endswith("loss")}
    return before, snapshot(net), trainer.global_step, loss


def pretrain_module(net, steps):
    return PretrainModule(
        net,
        stage=0,
        lambda_l2=1e-3,
        beta=0.5,
        rho=0.1,
        l2_on="both",
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        steps_per_batch=steps,
        micro_batch=16,
    )


def finetune_module(net, steps):
    return FinetuneModule(
        net,
        n_classes=2,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        steps_per_batch=steps,
        micro_batch=16,
    )


def finetune_module_lbfgs(net, steps):
    """LBFGS needs a closure (one loss evaluation per step at max_iter=1)."""
    return FinetuneModule(
        net,
        n_classes=2,
        optimizer=lambda p: torch.optim.LBFGS(p, lr=0.1, max_iter=1),
        steps_per_batch=steps,
        micro_batch=16,
    )


def finetune_module_sgd(net, steps):
    return FinetuneModule(
        net,
        n_classes=2,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        steps_per_batch=steps,
        micro_batch=16,
    )


def finetune_module_scheduled(net, steps):
    """A learning rate cut tenfold after every epoch (model.finetune.scheduler)."""
    return FinetuneModule(
        net,
        n_classes=2,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.1),
        steps_per_batch=steps,
        micro_batch=16,
    )


@pytest.mark.parametrize(
    "make_module",
    [
        pretrain_module,
        finetune_module,
        finetune_module_lbfgs,
        finetune_module_sgd,
        finetune_module_scheduled,
    ],
)
def test_grouped_steps_take_the_same_updates_as_single_steps(make_module):
    """data.loader.steps_per_batch: batches of 3 x 16 (and a last one of 16) stepped through one
    micro-batch at a time give the weights, step count and epoch loss of plain batches of 16."""
    before, single, single_steps, single_loss = grouped_fit(make_module, 16, 1)
    _, grouped, grouped_steps, grouped_loss = grouped_fit(make_module, 48, 3)
    assert any(not torch.equal(before[k], single[k]) for k in before)  # it did train
    assert single_steps == grouped_steps == 2 * 4  # 64 patches / 16, two epochs
    assert single.keys() == grouped.keys()
    for key in single:
        torch.testing.assert_close(grouped[key], single[key], rtol=0, atol=1e-6)
    assert single_loss.keys() == grouped_loss.keys() and single_loss
    for key in single_loss:
        torch.testing.assert_close(grouped_loss[key], single_loss[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps_per_batch", [1, 3])
def test_the_scheduler_steps_once_per_epoch_with_single_and_grouped_steps(steps_per_batch):
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=8, n_layers=2, n_nodes=6, n_outputs=1)
    module = finetune_module_scheduled(net, steps_per_batch)
    trainer = bare_trainer(3)
    data = DataLoader(loader().dataset, batch_size=16 * steps_per_batch)
    trainer.fit(module, train_dataloaders=data)
    (optimizer,) = trainer.optimizers
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.1**3)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3


def test_grouped_steps_reject_a_partial_micro_batch():
    from penn.lit.step_group import StepGroup

    w = torch.zeros(3, requires_grad=True)
    group = StepGroup(
        lambda x, y: {"loss": (x @ w).sum()},
        torch.optim.SGD([w], lr=0.1),
        micro_batch=4,
        steps=2,
        use_graph=False,
    )
    out = group(torch.ones(8, 3), torch.zeros(8))
    assert out["loss"].shape == (2,)
    torch.testing.assert_close(w.detach(), torch.full((3,), -0.8))  # two steps of -0.1 * 4
    with pytest.raises(ValueError, match="whole number of micro-batches of 4"):
        group(torch.ones(6, 3), torch.zeros(6))


def test_graph_capture_needs_a_capturable_optimizer():
    from functools import partial

    from penn.lit.step_group import grouped_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = grouped_optimizer(partial(torch.optim.Adam, lr=1e-3), params, use_graph=True)
    assert adam.param_groups[0]["capturable"] and adam.param_groups[0]["lr"] == 1e-3
    assert not grouped_optimizer(partial(torch.optim.Adam), params, False).param_groups[0][
        "capturable"
    ]
    with pytest.raises(ValueError, match="capturable.*got SGD"):
        grouped_optimizer(partial(torch.optim.SGD, lr=0.1), params, use_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_takes_the_eager_steps():
    """On a GPU: groups replayed from a captured CUDA graph end where eager steps end."""
    from penn.lit.step_group import StepGroup

    def run(use_graph):
        torch.manual_seed(0)
        net = StackedSparseAutoencoder(patch_size=8, n_layers=2, n_nodes=6, n_outputs=1).cuda()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, capturable=True)

        def step(x, y):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y)
            return {"loss": loss}

        group = StepGroup(step, opt, micro_batch=16, steps=4, use_graph=use_graph)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(5):  # warm-up, capture + replay, three replays
            x = torch.rand(64, 1, 8, 8, generator=g).cuda()
            losses.append(group(x, (x.mean(dim=(1, 2, 3)) > 0.5).float())["loss"])
        return snapshot(net), torch.cat(losses), group._graph is not None

    eager, eager_loss, eager_graphed = run(False)
    graphed, graphed_loss, captured = run(True)
    assert captured and not eager_graphed
    torch.testing.assert_close(graphed_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for key in eager:
        torch.testing.assert_close(graphed[key], eager[key], rtol=1e-5, atol=1e-6)
