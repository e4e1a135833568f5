import math

import torch

from penn.models.sparse_ae import SparseAutoencoder, StackedSparseAutoencoder, kl_sparsity


def test_kl_term_matches_closed_form():
    codes = torch.tensor([[0.1, 0.5], [0.3, 0.7]])  # mean activations 0.2 and 0.6
    rho = 0.05
    expected = sum(
        rho * math.log(rho / r) + (1 - rho) * math.log((1 - rho) / (1 - r)) for r in (0.2, 0.6)
    )
    assert math.isclose(kl_sparsity(codes, rho).item(), expected, rel_tol=1e-6)


def test_kl_term_is_zero_at_target_activation():
    assert kl_sparsity(torch.full((4, 3), 0.15), 0.15).item() < 1e-9


def test_loss_terms_combine_as_the_paper_says():
    torch.manual_seed(0)
    ae = SparseAutoencoder(16, 4)
    x = torch.rand(8, 16)
    loss, terms = ae.loss(x, lambda_l2=0.1, beta=2.0, rho=0.1, l2_on="encoder")
    recon, codes = ae(x)
    mse = ((recon - x) ** 2).mean()
    l2 = 0.5 * (ae.encoder.weight**2).sum()
    assert torch.allclose(terms["mse"], mse) and torch.allclose(terms["l2"], l2)
    assert torch.allclose(loss, mse + 0.1 * l2 + 2.0 * kl_sparsity(codes, 0.1))
    _, both = ae.loss(x, 0.1, 2.0, 0.1, "both")
    assert torch.allclose(both["l2"], l2 + 0.5 * (ae.decoder.weight**2).sum())


def test_stack_shapes_follow_the_config():
    net = StackedSparseAutoencoder(patch_size=8, n_layers=2, n_nodes=5, n_outputs=3)
    assert [s.encoder.in_features for s in net.stages] == [64, 5]
    assert net(torch.rand(4, 1, 8, 8)).shape == (4, 3)
    assert net.encode(torch.rand(4, 1, 8, 8), depth=1).shape == (4, 5)
