"""Intensity augmentation that spans MRI contrasts, for whole-slice training.

A network trained on one sequence learns that sequence's grey values: on T2 scans the bodies are
dark beside bright discs and CSF, on T1 and water-fat scans the relations change or invert.
:class:`ContrastAugment` re-draws the grey-value relations of every training slice so that shape,
not one sequence's contrast, carries the segmentation: random monotone and non-monotone
remappings of the intensity histogram, inversion, a smooth multiplicative bias field, lower
resolution, blur, gamma, brightness / contrast and noise. Each step is one of MONAI's random
array transforms where MONAI has it (histogram shift, bias field, low resolution, smoothing,
gamma, scale, shift, noise); the non-monotone remapping and the inversion are written here.

Intensity transforms only: the label is never touched, so image and label stay aligned (spatial
augmentation is :func:`penn.data.slice_data.augment_slice`'s). Images are (C, H, W) float32 on the
preprocessed [0, 1] scale; C > 1 (neighbour slices) get one draw for all channels.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandBiasField,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandHistogramShift,
    RandomizableTransform,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSimulateLowResolution,
)

__all__ = ["ContrastAugment", "RandInvert", "RandRemap", "remap"]


def remap(image: torch.Tensor, knots: np.ndarray) -> torch.Tensor:
    """Maps [0, 1] intensities through the piecewise-linear curve through ``knots``.

    Args:
        image: float tensor in [0, 1] (values outside are clipped first).
        knots: (n + 1,) curve values at 0, 1/n, ..., 1.

    Returns:
        The remapped image, same shape and dtype.
    """
    n = len(knots) - 1
    values = torch.as_tensor(knots, dtype=image.dtype, device=image.device)
    position = image.clamp(0.0, 1.0) * n
    low = position.floor().clamp(max=n - 1).long()
    weight = position - low
    return values[low] * (1 - weight) + values[low + 1] * weight


class RandRemap(RandomizableTransform):
    """With probability ``prob``, a random piecewise-linear intensity curve of ``points`` knots.

    Half of the curves are monotone (a cumulative sum of random steps, rising or falling: the
    order of tissues kept or reversed), half non-monotone (independent random knots: tissues
    swap places, as between T1, T2 and fat-suppressed scans).

    Args:
        prob: probability of remapping a slice.
        points: (low, high) range of the number of curve segments, inclusive.
    """

    def __init__(self, prob: float, points: tuple[int, int]):
        super().__init__(prob)
        self.points = (int(points[0]), int(points[1]))
        self.knots: np.ndarray | None = None

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        n = int(self.R.randint(self.points[0], self.points[1] + 1))
        if self.R.rand() < 0.5:
            steps = np.cumsum(self.R.rand(n + 1))
            knots = (steps - steps[0]) / max(steps[-1] - steps[0], 1e-6)
            self.knots = knots[::-1].copy() if self.R.rand() < 0.5 else knots
        else:
            self.knots = self.R.rand(n + 1)

    def __call__(self, image: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return image
        return remap(torch.as_tensor(image), self.knots)


class RandInvert(RandomizableTransform):
    """With probability ``prob``, ``1 - image`` (bright and dark tissues swap)."""

    def __call__(self, image: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return image
        return 1.0 - torch.as_tensor(image).clamp(0.0, 1.0)


class ContrastAugment:
    """The intensity augmentation of training slices, configured from ``model.slices.augment``.

    Args:
        remap_p: probability of a random (non-)monotone remapping (:class:`RandRemap`).
        remap_points: [low, high] number of its curve segments.
        histogram_p: probability of MONAI's monotone histogram shift.
        histogram_points: [low, high] number of its control points.
        invert_p: probability of inverting the intensities.
        bias_p: probability of a multiplicative bias field (MONAI, degree 3).
        bias_coeff: [low, high] range of the field's polynomial coefficients.
        lowres_p: probability of simulating a lower resolution (down, then up again).
        lowres_zoom: [low, high] zoom of the down-sampling (0.5: half the pixels per axis).
        blur_p: probability of a Gaussian blur.
        blur_sigma: [low, high] sigma in pixels.
        gamma_p: probability of a gamma change (on [0, 1]).
        gamma: [low, high] gamma range.
        scale_p: probability of a contrast change ``x * (1 + f)``.
        scale: the range of f, [low, high].
        shift_p: probability of a brightness change ``x + o``.
        shift: the range of o, [low, high].
        noise_p: probability of Gaussian noise.
        noise_std: its largest standard deviation (drawn in [0, noise_std]).
        seed: seed of every draw.
    """

    def __init__(
        self,
        remap_p: float,
        remap_points: list[int],
        histogram_p: float,
        histogram_points: list[int],
        invert_p: float,
        bias_p: float,
        bias_coeff: list[float],
        lowres_p: float,
        lowres_zoom: list[float],
        blur_p: float,
        blur_sigma: list[float],
        gamma_p: float,
        gamma: list[float],
        scale_p: float,
        scale: list[float],
        shift_p: float,
        shift: list[float],
        noise_p: float,
        noise_std: float,
        seed: int,
    ):
        sigma = tuple(blur_sigma)
        self.transform = Compose(
            [
                RandRemap(remap_p, tuple(remap_points)),
                RandHistogramShift(tuple(histogram_points), prob=histogram_p),
                RandInvert(invert_p),
                RandBiasField(degree=3, coeff_range=tuple(bias_coeff), prob=bias_p),
                RandSimulateLowResolution(
                    prob=lowres_p, upsample_mode="bilinear", zoom_range=tuple(lowres_zoom)
                ),
                RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, prob=blur_p),
                RandAdjustContrast(prob=gamma_p, gamma=tuple(gamma)),
                RandScaleIntensity(factors=tuple(scale), prob=scale_p),
                RandShiftIntensity(offsets=tuple(shift), prob=shift_p),
                RandGaussianNoise(prob=noise_p, std=noise_std),
            ]
        )
        self.transform.set_random_state(seed=seed)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) float32 in [0, 1] -> the same shape and dtype, clipped to [0, 1]."""
        out = torch.as_tensor(self.transform(image.clamp(0.0, 1.0)))
        return out.as_subclass(torch.Tensor).clamp(0.0, 1.0).to(image.dtype)
