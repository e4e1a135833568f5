"""SAU-Net (Zhang et al., MIDL 2020): Dense U-Net features plus inter-slice attention (ISA).

Only the abstract is retrievable; the layout is penn's spec. One Dense U-Net
with shared weights maps each of slices i-k, i, i+k to features F (32 channels, full size); ISA
refines the centre slice: F'_i = F_i + A- * F_i + A+ * F_i with A+- = sigmoid(conv1x1(F_{i+-k})).

Examples::

    >>> net = SAUNet(n_outputs=1, stem_channels=8, growth=4, depth=2, encoder_layers=2,
    ...              decoder_layers=2, decoder_channels=8, feature_channels=8)
    >>> net(torch.rand(2, 3, 37, 45)).shape  # (B, [i-k, i, i+k], H, W)
    torch.Size([2, 1, 37, 45])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from penn.models.baselines.padding import crop_to, pad_to_multiple

__all__ = ["DenseBlock", "DenseUNet", "SAUNet", "neighbour_triplets"]


def _bn_relu_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
    )


class DenseBlock(nn.Module):
    """``n_layers`` of BN-ReLU-1x1 conv(4g)-BN-ReLU-3x3 conv(g), each output concatenated.

    ``memory_efficient``: in training, each layer's intermediate activations are recomputed in
    the backward pass instead of stored (as torchvision's DenseNet ``memory_efficient``): the
    same gradients for several times less memory and some more compute; batch-norm running
    statistics see each training batch twice.
    """

    def __init__(
        self, in_channels: int, growth: int, n_layers: int, memory_efficient: bool = False
    ):
        super().__init__()
        self.memory_efficient = memory_efficient
        self.layers = nn.ModuleList(
            nn.Sequential(
                _bn_relu_conv(in_channels + i * growth, 4 * growth, 1),
                _bn_relu_conv(4 * growth, growth, 3),
            )
            for i in range(n_layers)
        )
        self.out_channels = in_channels + n_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.memory_efficient and self.training and x.requires_grad:
                new = checkpoint(layer, x, use_reentrant=False)
            else:
                new = layer(x)
            x = torch.cat([x, new], dim=1)
        return x


class DenseUNet(nn.Module):
    """Densely connected U-Net: one slice (B, 1, H, W) -> features (B, feature_channels, H, W)."""

    def __init__(
        self,
        stem_channels: int,
        growth: int,
        depth: int,
        encoder_layers: int,
        decoder_layers: int,
        decoder_channels: int,
        feature_channels: int,
        memory_efficient: bool = False,
    ):
        super().__init__()
        self.multiple = 2**depth
        self.stem = nn.Conv2d(1, stem_channels, 3, padding=1, bias=False)
        self.encoder, self.transitions, skips = nn.ModuleList(), nn.ModuleList(), []
        channels = stem_channels
        for _ in range(depth):
            block = DenseBlock(channels, growth, encoder_layers, memory_efficient)
            skips.append(block.out_channels)
            self.encoder.append(block)
            self.transitions.append(
                nn.Sequential(
                    _bn_relu_conv(block.out_channels, block.out_channels // 2, 1), nn.MaxPool2d(2)
                )
            )
            channels = block.out_channels // 2
        self.bottleneck = DenseBlock(channels, growth, encoder_layers, memory_efficient)
        channels = self.bottleneck.out_channels
        self.up, self.fuse, self.decoder = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for skip in reversed(skips):
            self.up.append(nn.ConvTranspose2d(channels, channels // 2, 2, stride=2))
            self.fuse.append(nn.Conv2d(channels // 2 + skip, decoder_channels, 1))
            block = DenseBlock(decoder_channels, growth, decoder_layers, memory_efficient)
            self.decoder.append(block)
            channels = block.out_channels
        self.out = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, feature_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.multiple)
        h, skips = self.stem(x), []
        for block, transition in zip(self.encoder, self.transitions, strict=True):
            h = block(h)
            skips.append(h)
            h = transition(h)
        h = self.bottleneck(h)
        for up, fuse, block in zip(self.up, self.fuse, self.decoder, strict=True):
            h = block(fuse(torch.cat([up(h), skips.pop()], dim=1)))
        return crop_to(self.out(h), size)


class SAUNet(nn.Module):
    """Dense U-Net + inter-slice attention; logits for the centre slice.

    Args:
        n_outputs: 1 (sigmoid, binary) or the number of classes (softmax).
        stem_channels, growth, depth, encoder_layers, decoder_layers, decoder_channels,
            feature_channels: the Dense U-Net (spec: 32, 16, 4, 4, 3, 64, 32).
        memory_efficient: recompute the dense layers' activations in the backward pass
            (:class:`DenseBlock`).
    """

    def __init__(
        self,
        n_outputs: int,
        stem_channels: int,
        growth: int,
        depth: int,
        encoder_layers: int,
        decoder_layers: int,
        decoder_channels: int,
        feature_channels: int,
        memory_efficient: bool = False,
    ):
        super().__init__()
        self.features = DenseUNet(
            stem_channels,
            growth,
            depth,
            encoder_layers,
            decoder_layers,
            decoder_channels,
            feature_channels,
            memory_efficient,
        )
        self.attention = nn.Conv2d(feature_channels, feature_channels, 1)  # shared for i-k, i+k
        self.head = nn.Conv2d(feature_channels, n_outputs, 1)

    def attend(self, before: torch.Tensor, centre: torch.Tensor, after: torch.Tensor):
        """ISA: logits of the centre slice from the features (B, C, H, W) of three slices."""
        gate = torch.sigmoid(self.attention(before)) + torch.sigmoid(self.attention(after))
        return self.head(centre + gate * centre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_outputs, H, W) of the centre of slice triplets (B, 3, H, W)."""
        batch, _, height, width = x.shape
        feats = self.features(x.reshape(batch * 3, 1, height, width))
        feats = feats.reshape(batch, 3, -1, height, width)
        return self.attend(feats[:, 0], feats[:, 1], feats[:, 2])

    def segment_volume(self, slices: torch.Tensor, offset: int) -> torch.Tensor:
        """Logits (S, n_outputs, H, W) of every slice of (S, 1, H, W), features computed once.

        Neighbours i +- offset beyond the volume replicate its first or last slice.
        """
        feats = self.features(slices)
        index = torch.arange(len(slices), device=slices.device)
        before = feats[(index - offset).clamp(0, len(slices) - 1)]
        after = feats[(index + offset).clamp(0, len(slices) - 1)]
        return self.attend(before, feats, after)


def neighbour_triplets(slices: torch.Tensor, offset: int) -> torch.Tensor:
    """(S, 3, H, W) triplets [i - offset, i, i + offset] of (S, 1, H, W), edges replicated."""
    padded = F.pad(slices[None, :, 0], (0, 0, 0, 0, offset, offset), mode="replicate")[0]
    count = len(slices)
    return torch.stack([padded[:count], padded[offset : offset + count], padded[2 * offset :]], 1)
