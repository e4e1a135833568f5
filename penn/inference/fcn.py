"""PENN's patch classifier as a fully convolutional network over whole slices.

The first layer of the stack becomes a convolution with the patch size as kernel, applied at the
inference stride; the later layers become 1 x 1 convolutions. Every patch of the grid is then
classified in one pass, with the same values as classifying the patches one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from penn.models.sparse_ae import StackedSparseAutoencoder

__all__ = ["StackedRowsConv", "FullyConvolutional", "to_fully_convolutional"]


class StackedRowsConv(nn.Module):
    """The one-channel n x n first convolution, computed as a 1 x n convolution over n channels.

    Channel dy holds the slice moved up by dy rows (one ``unfold`` over the rows at the stride),
    so the kernel's rows become input channels: the same products, summed in another order. On an
    H200 it ran 1.4-1.8x faster than the one-channel convolution at stride 1 (docs/results/gpu),
    probably because cuDNN's tensor-core kernels want channel counts in multiples of 8 (not
    profiled). The stacked input is n times the slice (32 MB for a 512 x 512 float32 slice at
    stride 1).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        (n, _), (stride, _) = conv.kernel_size, conv.stride
        self.n, self.stride = n, stride
        # (h, 1, n [dy], n [dx]) -> (h, n [dy], 1, n [dx])
        self.weight = nn.Parameter(conv.weight.detach().permute(0, 2, 1, 3).contiguous())
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, h, ny, nx)
        rows = x[:, 0].unfold(1, self.n, self.stride)  # (B, ny, W, n): row i * s + dy
        rows = rows.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(rows, self.weight, self.bias, stride=(1, self.stride))


class FullyConvolutional(nn.Module):
    """A patch network's convolutional twin: the first layer over the slice (plus, with a context
    patch, a dilated convolution over the context image), then 1 x 1 layers.

    ``forward(x (B, 1, H, W), context (B, 1, H', W') or None)`` -> logits (B, K, ny, nx); the
    context image is :func:`penn.patches.context.context_image` for the same grid of centres.
    """

    def __init__(self, first: nn.Module, context: nn.Conv2d | None, rest: nn.Sequential):
        super().__init__()
        self.first, self.context, self.rest = first, context, rest

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        z = self.first(x)
        if self.context is not None:
            if context is None:
                raise ValueError(
                    "this network takes a context image (penn.patches.context.context_image)"
                )
            z = z + self.context(context)[:, :, : z.shape[2], : z.shape[3]]
        return self.rest(z)


def to_fully_convolutional(
    net: StackedSparseAutoencoder, stride: int, stacked_rows: bool = False
) -> FullyConvolutional:
    """Rewrites the patch network as convolutions: n x n (stride s), then 1 x 1 layers.

    The first encoder's weight (h, n*n) is reshaped to (h, 1, n, n): patches are flattened row by
    row, which is the layout of a convolution kernel. With a context patch its second n*n
    columns become a convolution of dilation d over the context image. Output: logits
    (B, n_outputs, ny, nx). ``stacked_rows``: the first layer as :class:`StackedRowsConv` (the
    same function; faster on a GPU).
    """
    n, d = net.patch_size, net.context_dilation
    first = net.stages[0].encoder
    hidden = first.out_features
    weight = first.weight.data.view(hidden, net.in_channels, n, n)
    conv = nn.Conv2d(1, hidden, n, stride=stride)
    conv.weight.data.copy_(weight[:, :1])
    conv.bias.data.copy_(first.bias.data)
    context = None
    if d > 0:
        context = nn.Conv2d(1, hidden, n, stride=stride, dilation=d, bias=False)
        context.weight.data.copy_(weight[:, 1:])
    layers: list[nn.Module] = [nn.Sigmoid()]
    for stage in net.stages[1:]:
        lin = stage.encoder
        layer = nn.Conv2d(lin.in_features, lin.out_features, 1)
        layer.weight.data.copy_(lin.weight.data[:, :, None, None])
        layer.bias.data.copy_(lin.bias.data)
        layers += [layer, nn.Sigmoid()]
    head = nn.Conv2d(net.head.in_features, net.head.out_features, 1)
    head.weight.data.copy_(net.head.weight.data[:, :, None, None])
    head.bias.data.copy_(net.head.bias.data)
    first_layer = StackedRowsConv(conv) if stacked_rows else conv
    return FullyConvolutional(first_layer, context, nn.Sequential(*layers, head)).eval()
