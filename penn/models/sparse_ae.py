"""Stacked sparse autoencoder and the patch classifier built on its encoders (the paper's step 5).

Each autoencoder encodes z = sigmoid(W1 x + b1) and decodes y = sigmoid(W2 z + b2); its loss is
MSE + lambda * L2(weights) + beta * sum_j KL(rho || rho_hat_j), as MATLAB's ``msesparse`` that the
paper's authors used.

Examples::

    >>> net = StackedSparseAutoencoder(patch_size=32, n_layers=3, n_nodes=200, n_outputs=1)
    >>> net(torch.rand(8, 1, 32, 32)).shape
    torch.Size([8, 1])
"""

from __future__ import annotations

import torch
from torch import nn

from penn.patches.context import input_channels

__all__ = ["SparseAutoencoder", "StackedSparseAutoencoder", "kl_sparsity", "l2_weights"]


def kl_sparsity(codes: torch.Tensor, rho: float, eps: float = 1e-6) -> torch.Tensor:
    """Sparsity penalty sum_j KL(rho || rho_hat_j) over hidden units.

    paper Eq. 2 prints this ratio upside down; this is the standard
    rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat)), as the paper writes it.

    Args:
        codes: (B, H) hidden activations in (0, 1).
        rho: target mean activation.
    """
    rho_hat = codes.mean(dim=0).clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


def l2_weights(*layers: nn.Linear) -> torch.Tensor:
    """MATLAB's L2 weight regulariser: 1/2 * sum of squared weights (biases excluded)."""
    return 0.5 * sum((layer.weight**2).sum() for layer in layers)


class SparseAutoencoder(nn.Module):
    """One autoencoder stage: ``in_features -> hidden -> in_features`` with sigmoid units."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.encoder = nn.Linear(in_features, hidden)
        self.decoder = nn.Linear(hidden, in_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (reconstruction (B, in), codes (B, hidden))."""
        codes = self.encode(x)
        return torch.sigmoid(self.decoder(codes)), codes

    def loss(self, x: torch.Tensor, lambda_l2: float, beta: float, rho: float, l2_on: str):
        """Sparse AE loss and its three terms for logging.

        Args:
            x: (B, in) inputs in [0, 1].
            lambda_l2: weight of the L2 term; beta: weight of the sparsity term; rho: target
                activation; l2_on: ``encoder`` (the paper's reading) or ``both`` (MATLAB's).
        """
        recon, codes = self(x)
        mse = ((recon - x) ** 2).mean()
        layers = (self.encoder,) if l2_on == "encoder" else (self.encoder, self.decoder)
        l2 = l2_weights(*layers)
        kl = kl_sparsity(codes, rho)
        return mse + lambda_l2 * l2 + beta * kl, {"mse": mse, "l2": l2, "kl": kl}


class StackedSparseAutoencoder(nn.Module):
    """PENN: a stack of sparse-autoencoder encoders and a classification head on patches.

    Args:
        patch_size: patch side n; the input has n*n features per channel, flattened row by row.
        n_layers: number of hidden layers (paper: 3).
        n_nodes: units per hidden layer (paper: 200).
        n_outputs: 1 (sigmoid, binary target) or the number of classes (softmax).
        context_dilation: d > 0: each patch comes with a second channel, its context patch
            (:mod:`penn.patches.context`), so the first layer has 2 n*n inputs; 0: the patch alone.
    """

    def __init__(
        self,
        patch_size: int,
        n_layers: int,
        n_nodes: int,
        n_outputs: int,
        context_dilation: int = 0,
    ):
        super().__init__()
        if context_dilation < 0:
            raise ValueError(f"context_dilation must be >= 0, got {context_dilation}")
        self.patch_size, self.context_dilation = patch_size, int(context_dilation)
        self.in_channels = input_channels(self.context_dilation)
        sizes = [self.in_channels * patch_size * patch_size] + [n_nodes] * n_layers
        self.stages = nn.ModuleList(
            SparseAutoencoder(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(sizes[-1], n_outputs)

    def encode(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Codes after the first ``depth`` encoders (all if None); x: (B, C, n, n) or (B, C*n*n)."""
        h = x.flatten(1)
        for stage in self.stages[:depth]:
            h = stage.encode(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_outputs) of patches (B, C, n, n) (C = ``in_channels``)."""
        return self.head(self.encode(x))
