"""The context patch: a second, coarse view of the slice around each patch's centre.

A 32 x 32 patch (16 mm on the phantom) cannot tell a bright lesion from a bright blob outside the
spine, nor where in the slice it lies. With ``data.patches.context_dilation`` d > 0 every patch
comes with a second channel: n x n samples taken every d pixels of the slice smoothed by a
Gaussian of sigma d / 2, centred on the same pixel (at d = 4, 64 mm of view). Past the slice's
edge the context is zero, so a patch near the edge sees the edge (a mirrored context shows a
doubled body there).

The context channel is a dilated version of the patch: in the dense read-out its first-layer
weights become a convolution with dilation d over the zero-padded smoothed slice
(:mod:`penn.inference.dense`), and in training the same values are cut from the same image
(:class:`penn.data.patch_stream.PatchDataset`). Both build that image with :func:`context_image`.

Sample k (0 <= k < n) of the context of the patch centred on pixel c (the centre-pixel rule's
pixel, ``c = corner + n // 2``) is the smoothed slice at ``c + d * (k - n // 2)``, or 0 outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur", "context_margins", "context_image", "input_channels"]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of (B, K, H, W) over H and W (reflected edges, 3 sigma).

    The same as ``scipy.ndimage.gaussian_filter(x, sigma, mode="mirror", truncate=3)`` per
    image, as long as the slice is larger than the kernel's radius.
    """
    if sigma <= 0:
        return x
    radius = max(1, min(int(3 * sigma + 0.5), x.shape[2] - 1, x.shape[3] - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, k, h, w = x.shape
    y = F.pad(x.reshape(b * k, 1, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1))
    y = F.conv2d(y, kernel.view(1, 1, -1, 1))
    return y.reshape(b, k, h, w)


def input_channels(context_dilation: int) -> int:
    """Input channels of a patch: 1, or 2 with a context patch."""
    return 2 if context_dilation > 0 else 1


def context_margins(patch_size: int, dilation: int) -> tuple[int, int]:
    """Pixels the context of a patch reaches before and after its centre pixel."""
    head = patch_size // 2
    return dilation * head, dilation * (patch_size - 1 - head)


def context_image(
    x: torch.Tensor,
    dilation: int,
    patch_size: int,
    first: int = 0,
    last: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The smoothed, zero-extended slices that context patches are sampled from.

    Args:
        x: (B, 1, H, W) preprocessed slices (not padded).
        dilation: d, the step between context samples (sigma d / 2 of the smoothing).
        patch_size: n.
        first: the first centre pixel (along both axes) whose context must fit.
        last: the last centre pixels (rows, columns); default (H - 1, W - 1).

    Returns:
        (B, 1, H', W') float: element ``[c - first + d * k]`` (per axis) is sample k of the context
        centred on pixel c, for ``first <= c <= last``. With the defaults, the slice's own grid
        shifted by ``context_margins(n, d)[0]``.
    """
    height, width = x.shape[2:]
    last_y, last_x = (height - 1, width - 1) if last is None else last
    before, after = context_margins(patch_size, dilation)
    smooth = gaussian_blur(x.float(), dilation / 2)
    pads = (
        before - first,
        last_x + after - (width - 1),
        before - first,
        last_y + after - (height - 1),
    )
    return F.pad(smooth, pads, mode="constant", value=0.0)  # negative pads crop
