"""Simulated metastasis-like lesions implanted into the vertebral bodies of real scans.

A lesion is one to a few overlapping ellipsoids ("lobes", confluent lesions) of random size,
aspect and orientation whose boundary is pushed in and out by a smooth random field, all in
millimetres through the volume's spacing. Inside it the scan's smooth intensity is replaced by a
level set relative to the body's marrow and to the fluid of the scan's spinal canal, so the
contrast follows the sequence: a lytic lesion is fluid-like (dark on T1, bright on T2 and STIR),
a sclerotic one dark on every sequence. The level is mottled with a heterogeneity that scales
with the marrow's own variation, optionally lined by a fluid-like rim, and blended with a
partial-volume blur. The scan's own fine texture and noise (the image minus its smooth part) are
kept, so a lesion is as noisy as the scan. Every change stays inside the vertebral-body mask and
within the scan's [min, max]; labels become 0 background, 1 vertebra, 2 tumour.

Arrays are canonical (X, Y, Z) volumes as :func:`penn.io.dataset.read_case` returns them.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components

from penn.io.volume import Volume

__all__ = [
    "LesionSpec",
    "find_bodies",
    "fluid_reference",
    "implant_lesions",
    "lesion_rng",
    "on_disk_values",
]

log = logging.getLogger(__name__)

# fluid / marrow ratio of a scan where the canal cannot be sampled: a T2-like one
FALLBACK_FLUID_RATIO = 2.0


@dataclass(frozen=True)
class LesionSpec:
    """Lesion model tunables (from ``data.lesions`` in the config).

    Attributes:
        count: (min, max) lesions in a scan that has any.
        none_probability: chance that a scan gets no lesion at all.
        radius_mm: (min, max) radius of the main lobe, drawn log-uniformly.
        aspect: (min, max) factor on the radius of each of the three ellipsoid axes.
        lobes: (min, max) overlapping ellipsoids that make one (confluent) lesion.
        irregularity: amplitude of the smooth boundary deformation, as a fraction of the radius.
        lytic_probability: chance that a lesion is lytic (fluid-like), else sclerotic.
        lytic_fluid_fraction: (min, max) where a lytic lesion's level lies between the marrow
            (0) and the canal fluid (1): dark on T1, bright on T2 and STIR.
        lytic_min_contrast: the least |lesion / marrow - 1| of a lytic lesion, on the side of
            the fluid, so a scan whose fluid is close to its marrow still shows it.
        sclerotic_contrast: (min, max) lesion / marrow intensity ratio of sclerotic lesions
            (dark on every sequence).
        fluid_ratio: canal fluid / marrow intensity ratio; None measures it in each scan
            (:func:`fluid_reference`); a number fixes it for a collection (about 0.5 on T1,
            1.5-2 on T2, 3 or more on STIR / TIRM).
        canal_mm: (near, far) depth of the band behind each body's posterior edge that samples
            the canal fluid.
        rim_probability: chance that a lesion has a rim.
        rim_fraction: (min, max) where the rim's level lies between marrow (0) and fluid (1).
        rim_width_mm: rim thickness (Gaussian sigma inward from the boundary).
        blur_sigma_mm: partial-volume blur of the lesion's edge (Gaussian sigma).
        texture: (min, max) lesion heterogeneity as a multiple of the marrow's coefficient of
            variation.
        texture_sigma_mm: grain of that heterogeneity (Gaussian sigma of the random field).
        background_sigma_mm: scale that splits the scan into a smooth part (replaced inside the
            lesion) and fine texture plus noise (kept).
        body_label: label value of the vertebral bodies in the source labels.
        tumor_label: label value written for lesion voxels.
        min_body_voxels: connected components of the body mask smaller than this are ignored.
    """

    count: tuple[int, int]
    none_probability: float
    radius_mm: tuple[float, float]
    aspect: tuple[float, float]
    lobes: tuple[int, int]
    irregularity: float
    lytic_probability: float
    lytic_fluid_fraction: tuple[float, float]
    lytic_min_contrast: float
    sclerotic_contrast: tuple[float, float]
    fluid_ratio: float | None
    canal_mm: tuple[float, float]
    rim_probability: float
    rim_fraction: tuple[float, float]
    rim_width_mm: float
    blur_sigma_mm: float
    texture: tuple[float, float]
    texture_sigma_mm: float
    background_sigma_mm: float
    body_label: int
    tumor_label: int
    min_body_voxels: int

    def __post_init__(self) -> None:
        """Coerces config containers to tuples and numbers and checks the ranges."""
        for name, kind in (
            ("count", int),
            ("lobes", int),
            ("radius_mm", float),
            ("aspect", float),
            ("lytic_fluid_fraction", float),
            ("sclerotic_contrast", float),
            ("canal_mm", float),
            ("rim_fraction", float),
            ("texture", float),
        ):
            value = tuple(kind(v) for v in getattr(self, name))
            if len(value) != 2 or value[0] > value[1] or value[0] < 0:
                raise ValueError(
                    f"lesions.{name}={list(value)}: need [min, max] with 0 <= min <= max"
                )
            object.__setattr__(self, name, value)
        for name in ("body_label", "tumor_label", "min_body_voxels"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.fluid_ratio is not None:
            object.__setattr__(self, "fluid_ratio", float(self.fluid_ratio))
            if self.fluid_ratio <= 0:
                raise ValueError(f"lesions.fluid_ratio={self.fluid_ratio}: must be > 0 or null")
        for name in ("none_probability", "lytic_probability", "rim_probability"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"lesions.{name}={getattr(self, name)}: must be in [0, 1]")
        if self.radius_mm[0] <= 0 or self.lobes[0] < 1:
            raise ValueError("lesions.radius_mm must be > 0 and lesions.lobes >= 1")

    @classmethod
    def from_config(cls, cfg: dict) -> LesionSpec:
        """The spec from a ``data.lesions`` block, ignoring its run-level keys (seed, ...)."""
        return cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})


def lesion_rng(seed: int, name: str, *extra: int) -> np.random.Generator:
    """The generator of one case's lesions: fixed per (seed, case), or also per ``extra`` keys.

    Keyed by the case name rather than its position, so adding a case changes no other case.
    The training scans use ``extra = (epoch, run seed)``.
    """
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), *map(int, extra)])


def find_bodies(labels: np.ndarray, spec: LesionSpec) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """The vertebral bodies: connected components of ``labels == body_label`` (by faces).

    Returns:
        Per body of at least ``min_body_voxels``: its bounding box (a tuple of slices) and its
        boolean mask inside that box.
    """
    components = connected_components(labels == spec.body_label, connectivity=1)
    bodies = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is not None and (components[box] == index).sum() >= spec.min_body_voxels:
            bodies.append((box, components[box] == index))
    return bodies


def fluid_reference(
    image: np.ndarray, labels: np.ndarray, spacing, spec: LesionSpec
) -> float | None:
    """The median intensity of the spinal canal: the band ``canal_mm`` behind the posterior edge
    of every body (canonical axis 1 runs posterior to anterior), in the central 6 mm of the
    body from left to right, over the body's own superior-inferior extent. CSF is the canal's
    main content: darker than fatty marrow on T1, brighter on T2, far brighter on STIR. None
    when the band holds no voxel."""
    near, far = (int(round(mm / spacing[1])) for mm in spec.canal_mm)
    half = max(1, int(round(3.0 / spacing[0])))
    values = []
    for box, mask in find_bodies(labels, spec):
        x = box[0].start + int(np.median(np.nonzero(mask)[0]))
        for k in np.nonzero(mask.any(axis=(0, 1)))[0]:
            rows = np.nonzero(mask[:, :, k].any(axis=0))[0]
            back = box[1].start + int(rows.min())  # the body's posterior edge at this level
            lo, hi = max(back - far, 0), max(back - near, 0)
            values.append(image[max(x - half, 0) : x + half + 1, lo:hi, box[2].start + k].ravel())
    values = np.concatenate(values) if values else np.empty(0)
    return float(np.median(values)) if values.size else None


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with the given smoothness (voxels per axis)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return (field - field.mean()) / (field.std() + 1e-6)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _lesion_depth(rng, shape, spacing, centre, radius, spec: LesionSpec) -> np.ndarray:
    """Approximate depth (mm) inside a confluent, irregular lesion: > 0 inside, < 0 outside.

    Args:
        shape: the grid (voxels) the lesion is drawn on; ``centre`` is in its voxel coordinates.
        spacing: voxel size (mm) per axis.
        radius: radius (mm) of the main lobe.
    """
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    grid = grid.astype(np.float32) * np.asarray(spacing, np.float32)  # (..., 3) mm
    depth = np.full(shape, -np.inf, np.float32)
    n_lobes = int(rng.integers(spec.lobes[0], spec.lobes[1] + 1))
    main = np.asarray(centre, np.float32) * np.asarray(spacing, np.float32)
    for lobe in range(n_lobes):
        r = radius if lobe == 0 else radius * rng.uniform(0.5, 0.9)
        offset = 0.0 if lobe == 0 else rng.normal(size=3) * (radius / np.sqrt(3.0))
        radii = r * rng.uniform(*spec.aspect, size=3)
        rotated = (grid - (main + offset)) @ _random_rotation(rng)
        rho = np.sqrt(((rotated / radii) ** 2).sum(axis=-1))
        sigma = [max(0.5, 0.5 * r / s) for s in spacing]
        bumps = spec.irregularity * _smooth_field(rng, shape, sigma)
        depth = np.maximum(depth, (1.0 + bumps - rho) * radii.min())
    return depth


def _masked_smooth(image: np.ndarray, mask: np.ndarray, sigma_vox) -> np.ndarray:
    """Gaussian smoothing of ``image`` inside ``mask`` only (normalised convolution)."""
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma_vox)
    total = ndimage.gaussian_filter(np.where(mask, image, 0.0).astype(np.float32), sigma_vox)
    return np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), image)


def _draw_contrast(rng: np.random.Generator, spec: LesionSpec, fluid: float) -> tuple[float, str]:
    """(lesion / marrow ratio, kind) of one lesion in a scan whose fluid / marrow ratio is
    ``fluid``."""
    if rng.random() >= spec.lytic_probability:
        return float(rng.uniform(*spec.sclerotic_contrast)), "sclerotic"
    ratio = 1.0 + rng.uniform(*spec.lytic_fluid_fraction) * (fluid - 1.0)
    side = 1.0 if fluid >= 1.0 else -1.0
    if side * (ratio - 1.0) < spec.lytic_min_contrast:
        ratio = 1.0 + side * spec.lytic_min_contrast
    return float(max(ratio, 0.05)), "lytic"


def _implant_one(image, labels, body, spacing, spec: LesionSpec, rng, marrow, fluid) -> dict:
    """Implants one lesion into one body in place; returns its record.

    Args:
        image, labels: the whole volume (modified in place inside the body's box).
        body: (box, mask) of the body from :func:`find_bodies`.
        marrow: (median, robust coefficient of variation) of the body's intensities before any
            lesion.
        fluid: the scan's canal fluid / marrow intensity ratio.
    """
    box, inside_body = body
    sub, lab = image[box], labels[box]
    radius = float(np.exp(rng.uniform(*np.log(spec.radius_mm))))
    # a centre deep enough that most of the lesion lies in the body (bodies are ~ 15 mm deep)
    depth_body = ndimage.distance_transform_edt(np.pad(inside_body, 1), sampling=spacing)
    depth_body = depth_body[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(depth_body >= min(0.5 * radius, 0.8 * depth_body.max()))
    centre = candidates[rng.integers(len(candidates))]
    depth = _lesion_depth(rng, sub.shape, spacing, centre, radius, spec)
    lesion = (depth >= 0) & inside_body
    to_vox = np.asarray(spacing, np.float32)
    blur = spec.blur_sigma_mm / to_vox
    # partial volume: the change fades over the lesion's edge and over the body's own edge
    weight = ndimage.gaussian_filter((depth >= 0).astype(np.float32), blur)
    weight *= ndimage.gaussian_filter(inside_body.astype(np.float32), blur)
    smooth = _masked_smooth(sub, inside_body, spec.background_sigma_mm / to_vox)
    contrast, kind = _draw_contrast(rng, spec, fluid)
    heterogeneity = rng.uniform(*spec.texture) * marrow[1]
    mottle = _smooth_field(rng, sub.shape, spec.texture_sigma_mm / to_vox)
    # heterogeneity in units of marrow, so dark lesions are as mottled as bright ones
    level = marrow[0] * (contrast + heterogeneity * mottle)
    rim = 0.0
    if rng.random() < spec.rim_probability:
        rim = float(rng.uniform(*spec.rim_fraction))
    if rim > 0:  # a fluid-like ring lining the inside of the boundary (labelled)
        ring = np.exp(-0.5 * (np.maximum(depth, 0.0) / spec.rim_width_mm) ** 2)
        level = level + ring * ((1.0 + rim * (fluid - 1.0)) * marrow[0] - level)
    changed = smooth + weight * (level - smooth) + (sub - smooth)
    sub[inside_body] = changed[inside_body]
    lab[lesion] = spec.tumor_label
    return {
        "centre_voxel": [int(c + b.start) for c, b in zip(centre, box, strict=True)],
        "radius_mm": round(radius, 2),
        "kind": kind,
        "contrast": round(contrast, 3),
        "rim": round(rim, 3),
        "voxels": int(lesion.sum()),
    }


def _fluid_ratio(image, labels, spacing, spec: LesionSpec) -> float:
    """``spec.fluid_ratio``, or the scan's canal fluid over its median marrow intensity
    (:data:`FALLBACK_FLUID_RATIO`, with a warning, when no canal voxel is found)."""
    if spec.fluid_ratio is not None:
        return spec.fluid_ratio
    fluid = fluid_reference(image, labels, spacing, spec)
    marrow = float(np.median(image[labels == spec.body_label]))
    if fluid is None or marrow <= 0:
        log.warning(
            "lesions: no canal fluid behind the bodies; fluid / marrow taken as %.1f (T2-like)",
            FALLBACK_FLUID_RATIO,
        )
        return FALLBACK_FLUID_RATIO
    return fluid / marrow


def implant_lesions(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    spec: LesionSpec,
    rng: np.random.Generator,
):
    """Implants a random number of lesions into the vertebral bodies of one scan.

    Args:
        image: (X, Y, Z) float intensities as read (before any preprocessing).
        labels: (X, Y, Z) uint8 labels with the bodies as ``spec.body_label``.
        spacing: voxel size in mm along the three axes.
        spec: the lesion model.
        rng: the only source of randomness (see :func:`lesion_rng`).

    Returns:
        (image float32 clipped to the input's [min, max], labels uint8 with lesion voxels set to
        ``spec.tumor_label``, a record per lesion). The inputs are not modified.
    """
    image_out = image.astype(np.float32, copy=True)
    labels_out = labels.astype(np.uint8, copy=True)
    bodies = find_bodies(labels, spec)
    if not bodies or rng.random() < spec.none_probability:
        return image_out, labels_out, []
    fluid = _fluid_ratio(image, labels, spacing, spec)
    records = []
    for _ in range(int(rng.integers(spec.count[0], spec.count[1] + 1))):
        which = int(rng.integers(len(bodies)))
        box, mask = bodies[which]
        # robust spread (IQR / 1.349, a std for Gaussian data): the cortex and partial volume at
        # the mask's edge would inflate a plain standard deviation
        low, median, high = np.percentile(image[box][mask], [25, 50, 75])
        marrow = (float(median), float((high - low) / 1.349 / median) if median > 0 else 0.0)
        record = _implant_one(
            image_out, labels_out, bodies[which], spacing, spec, rng, marrow, fluid
        )
        records.append({"body": which, "fluid_ratio": round(fluid, 3), **record})
    np.clip(image_out, image.min(), image.max(), out=image_out)
    return image_out, labels_out, records


def on_disk_values(image: np.ndarray, volume: Volume) -> np.ndarray:
    """Rounds to the source file's integer data type (if it has one), as writing it would."""
    dtype = volume.header.get_data_dtype()
    if np.issubdtype(dtype, np.integer):
        return np.round(image).astype(np.float32)
    return image.astype(np.float32, copy=False)
