"""Seeded synthetic sagittal spine MRI phantoms, written in the nnU-Net raw layout.

Arrays are (X, Y, Z) in RAS voxel axes (axis0 L-R, axis1 P->A, axis2 I->S): ``image[x]`` is a
sagittal slice. Labels: 0 other, 1 vertebral body, 2 tumour (always inside one body). Tissues
are painted relative to mean marrow (1.0) for the chosen sequence (``t1gd``, the paper's
Gd-enhanced T1, or ``t2``), then textured, blurred (partial volume), biased, corrupted with
Rician noise and scaled so that the brightest tissue is about 1000.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

LABELS = {"background": 0, "vertebra": 1, "tumor": 2}
META_NAME = "penn_phantom.json"
VERSION = 4  # bump when the generator changes, to invalidate cached datasets
_SCALE = 1000.0 / 2.2

# Tissue intensities that depend on the sequence, relative to mean marrow (ranges are drawn per
# volume). Fat (1.35-1.7), muscle, viscera and cortical bone are shared. On Gd-enhanced T1 (the
# paper's scans) CSF is dark and discs are iso- to hypo-intense; on T2 (like lumbar-vb) CSF and
# hydrated nuclei are bright.
SEQUENCES = {
    "t1gd": {"csf": (0.2, 0.4), "nucleus": (0.45, 0.8), "cord": 0.75},
    "t2": {"csf": (1.9, 2.3), "nucleus": (0.45, 1.8), "cord": 0.85},
}


@dataclass(frozen=True)
class PhantomSpec:
    """Generator tunables (supplied by the caller's config).

    Attributes:
        shape: Volume shape (L-R slices, P-A, I-S) in voxels.
        spacing: Voxel size in mm along the same axes.
        n_vertebrae: Number of labelled vertebral bodies.
        tumor_probability: Chance that a volume has any tumour.
        max_tumors: Tumours per volume are drawn from 1..max_tumors when present.
        tumor_radius_px: In-plane tumour radius range in pixels.
        tumor_contrast: Tumour/marrow intensity ratio range; (0.8, 1.25) is never drawn.
        noise_sigma: Rician noise sigma relative to the maximum clean signal.
        bias_strength: Amplitude of the smooth multiplicative bias field.
        sequence: Tissue contrast, a key of :data:`SEQUENCES` (``t1gd`` or ``t2``).
        viscera_contrast: Intensity/marrow range of the bright bowel-like blobs in front of the
            column (one value drawn per volume); ranges that overlap ``tumor_contrast`` make
            them lesion mimics. The default here is the mimicking range of the first phantom
            versions; ``conf/data/phantom.yaml`` sets 1.15-1.45.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    n_vertebrae: int
    tumor_probability: float
    max_tumors: int
    tumor_radius_px: tuple[float, float]
    tumor_contrast: tuple[float, float]
    noise_sigma: float
    bias_strength: float
    sequence: str = "t1gd"
    viscera_contrast: tuple[float, float] = (1.6, 2.0)

    def __post_init__(self) -> None:
        """Coerce config containers (lists, OmegaConf nodes) to plain tuples and numbers."""
        for name, kind in (
            ("shape", int),
            ("spacing", float),
            ("tumor_radius_px", float),
            ("tumor_contrast", float),
            ("viscera_contrast", float),
        ):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
        for name, kind in (
            ("n_vertebrae", int),
            ("max_tumors", int),
            ("tumor_probability", float),
            ("noise_sigma", float),
            ("bias_strength", float),
        ):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.sequence not in SEQUENCES:
            raise ValueError(f"phantom sequence {self.sequence!r}: use one of {sorted(SEQUENCES)}")


@dataclass
class _Geom:
    """Sampled column geometry: grids, centreline yc(z) and per-body sizes (voxels)."""

    x: np.ndarray  # (X, 1, 1)
    y: np.ndarray  # (1, Y, 1)
    z: np.ndarray  # (Z,)
    yc: np.ndarray  # (Z,) A-P position of the column centreline
    slope: np.ndarray  # (Z,) dyc/dz
    xc: float  # L-R midline
    rx: float  # L-R half width of the bodies
    pitch: float  # I-S distance between body centres
    zc: np.ndarray  # (n,) body centres
    hw: np.ndarray  # (n,) A-P half widths
    hh: np.ndarray  # (n,) I-S half heights


def _field(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    sigma: tuple[float, ...],
) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit std; sigma in voxels per axis.

    Large-scale fields are filtered on a coarse grid and interpolated up, for speed.
    """
    step = [max(1, int(s // 2)) for s in sigma]
    coarse = tuple(
        n if k == 1 else max(2, -(-n // k) + 1) for n, k in zip(shape, step, strict=True)
    )
    f = ndimage.gaussian_filter(
        rng.standard_normal(coarse, dtype=np.float32),
        [max(s / k, 0.3) for s, k in zip(sigma, step, strict=True)],
        mode="wrap",
    )
    if coarse != tuple(shape):
        order = 3 if np.prod(shape) <= 2**18 else 1  # cubic for small windows, linear for speed
        f = ndimage.zoom(f, [n / c for n, c in zip(shape, coarse, strict=True)], order=order)
    return (f - f.mean()) / (f.std() + 1e-6)


def _sample_geometry(spec: PhantomSpec, rng: np.random.Generator) -> _Geom:
    """Sample a gently curved (lordotic), slightly anterior column of n_vertebrae bodies."""
    (nx, ny, nz), n = spec.shape, spec.n_vertebrae
    z = np.arange(nz, dtype=np.float32)
    t = 2.0 * z / nz - 1.0
    amp, tilt = rng.uniform(0.0, 0.06) * ny, rng.uniform(-0.04, 0.04) * ny
    yc = ny * rng.uniform(0.55, 0.6) + amp * (0.5 - t**2) + tilt * t
    pitch = nz / (n + 0.1) * rng.uniform(0.97, 1.05)
    zc = (nz - (n - 1) * pitch) / 2 + rng.uniform(-0.1, 0.1) * pitch + pitch * np.arange(n)
    return _Geom(
        x=np.arange(nx, dtype=np.float32)[:, None, None],
        y=np.arange(ny, dtype=np.float32)[None, :, None],
        z=z,
        yc=yc,
        slope=np.gradient(yc),
        xc=(nx - 1) / 2 + rng.uniform(-0.05, 0.05) * nx,
        rx=rng.uniform(0.3, 0.35) * nx,
        pitch=pitch,
        zc=zc + rng.normal(0.0, 0.02 * pitch, n),
        hw=ny * rng.uniform(0.145, 0.165, n),
        hh=pitch * rng.uniform(0.38, 0.43, n),
    )


def _frame(g: _Geom, zc: float) -> tuple[float, float, float]:
    """Centreline point y and unit tangent (ty, tz) at height zc."""
    s = g.slope[int(np.clip(zc, 0, len(g.z) - 1))]
    return float(np.interp(zc, g.z, g.yc)), s / np.hypot(1.0, s), 1.0 / np.hypot(1.0, s)


def _superellipse(g: _Geom, zc: float, hw: float, hh: float, p: float) -> tuple[slice, np.ndarray]:
    """Level set (<= 1 inside) of a body-like solid tilted with the curve, on a z window.

    The L-R cross-section is rounded: lateral slices show a shorter, posteriorly anchored
    A-P extent, and nothing beyond ``g.rx``.
    """
    win = slice(max(0, int(zc - 1.6 * hh)), max(0, min(len(g.z), int(zc + 1.6 * hh) + 1)))
    y0, ty, tz = _frame(g, zc)
    dy, dz = g.y - y0, g.z[None, None, win] - zc
    along, across = dy * ty + dz * tz, dy * tz - dz * ty
    r2 = ((g.x - g.xc) / g.rx) ** 2
    w = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    q = (
        np.abs((across - hw * (w - 1.0)) / np.maximum(hw * w, 1e-3)) ** p
        + np.abs(along / (hh * (1.0 - 0.1 * r2))) ** p
    )
    q[w[:, 0, 0] < 0.25] = np.inf
    return win, q


def _ellipsoid(
    img: np.ndarray,
    g: _Geom,
    val: float,
    v: float,
    zc: float,
    hv: float,
    hz: float,
    dx: float,
    hx: float,
) -> None:
    """Paint ``val`` in an ellipsoid at A-P offset v from the centreline, L-R offset dx."""
    win = slice(max(0, int(zc - hz)), max(0, min(len(g.z), int(zc + hz) + 2)))
    hv, hz = max(hv, 0.5), max(hz, 0.5)
    q = (
        ((g.y - g.yc[win] - v) / hv) ** 2
        + ((g.z[win] - zc) / hz) ** 2
        + ((g.x - g.xc - dx) / hx) ** 2
    )
    img[:, :, win][q <= 1.0] = val


def _paint_soft_tissue(
    img: np.ndarray, g: _Geom, rng: np.random.Generator, spec: PhantomSpec
) -> None:
    """Muscle behind the column, mixed viscera and aorta in front, fat, skin and air."""
    nx, ny, nz = img.shape
    blobs = _field(rng, img.shape, (1.0, 8.0, 8.0))
    bright = rng.uniform(*spec.viscera_contrast)
    front = np.where(blobs > 1.1, bright, np.where(blobs < -1.0, 0.35, 0.7))
    img[:] = np.where(g.y > g.yc, front, rng.uniform(0.5, 0.65))
    aorta = (g.hw.mean() + 0.12 * ny, nz / 2, 0.09 * ny, 4 * nz, -0.3 * nx, 0.15 * nx)
    _ellipsoid(img, g, 0.15, *aorta)  # flow void
    wave = np.sin(g.z * rng.uniform(0.01, 0.03) + rng.uniform(0, 6.3)) * 0.015 * ny
    skin = 0.04 * ny + 0.4 * (g.yc - g.yc.mean()) + wave
    fat = skin + rng.uniform(0.06, 0.1) * ny + 0.5 * wave
    for edge, val in ((fat, rng.uniform(1.35, 1.7)), (skin + 2, 0.8), (skin, 0.0)):
        img[np.broadcast_to(g.y < edge, img.shape)] = val


def _paint_canal(img: np.ndarray, g: _Geom, rng: np.random.Generator, tissue: dict) -> None:
    """Posterior elements (unlabelled bone), epidural fat, CSF-filled canal and cord."""
    nx, ny, nz = img.shape
    front, width, hx = -g.hw.mean() - 0.01 * ny, rng.uniform(0.09, 0.12) * ny, 0.15 * nx
    levels = np.r_[g.zc[0] - g.pitch, g.zc, g.zc[-1] + g.pitch]
    for zc, hh in zip(levels, np.r_[g.hh[0], g.hh, g.hh[-1]], strict=True):
        for val, d in ((0.3, 0.0), (rng.uniform(0.8, 1.05), 1.5)):  # cortex, then marrow
            _ellipsoid(
                img,
                g,
                val,
                front - width - 0.1 * ny,
                zc - 0.25 * g.pitch,
                0.1 * ny - d,
                0.6 * hh - d,
                0.0,
                max(1.5, 0.1 * nx),
            )  # spinous process
            for side in (-1, 1):  # pedicles / facets, seen in lateral slices
                _ellipsoid(
                    img,
                    g,
                    val,
                    front - 0.5 * width,
                    zc + 0.3 * hh,
                    0.7 * width - d,
                    0.4 * hh - d,
                    side * 0.27 * nx,
                    0.12 * nx,
                )
    mid = front - 0.5 * width
    _ellipsoid(img, g, rng.uniform(1.35, 1.7), mid, nz / 2, 0.5 * width + 0.02 * ny, 4 * nz, 0, hx)
    csf = rng.uniform(*tissue["csf"])
    _ellipsoid(img, g, csf, mid, nz / 2, 0.5 * width, 4 * nz, 0.0, hx)
    conus = rng.uniform(0.3, 0.8) * nz
    _ellipsoid(img, g, tissue["cord"], mid, nz, 0.2 * width, nz - conus, 0.0, 0.5 * hx)


def _paint_column(img: np.ndarray, g: _Geom, rng: np.random.Generator, tissue: dict) -> np.ndarray:
    """Paint discs, then vertebral bodies (textured later) with a dark cortical rim.

    Returns:
        uint8 map holding body index + 1 inside each body, 0 elsewhere.
    """
    body = np.zeros(img.shape, np.uint8)
    edges = np.r_[g.zc[0] - g.pitch, g.zc, g.zc[-1] + g.pitch]
    for za, zb in zip(edges[:-1], edges[1:], strict=True):
        win, q = _superellipse(g, (za + zb) / 2, 0.93 * g.hw.mean(), 0.45 * (zb - za), 2.5)
        nucleus = rng.uniform(*tissue["nucleus"])
        val = np.where(q < 0.5, nucleus, 0.5 + 0.3 * nucleus)  # nucleus, annulus
        img[:, :, win] = np.where(q <= 1.0, val, img[:, :, win])
    for j, (zc, hw, hh) in enumerate(zip(g.zc, g.hw, g.hh, strict=True)):
        p = rng.uniform(3.0, 5.0)
        win, q = _superellipse(g, zc, hw, hh, p)
        rim = q > (1.0 - 1.5 / min(hw, hh)) ** p
        val = np.where(rim, 0.3, rng.uniform(0.9, 1.1))
        img[:, :, win] = np.where(q <= 1.0, val, img[:, :, win])
        body[:, :, win][q <= 1.0] = j + 1
    return body


def _contrast(spec: PhantomSpec, rng: np.random.Generator) -> float:
    """Draw a hypo- or hyper-intense tumour/marrow ratio, avoiding (0.8, 1.25)."""
    lo, hi = spec.tumor_contrast
    parts = [(a, b) for a, b in ((lo, min(hi, 0.8)), (max(lo, 1.25), hi)) if b > a] or [(lo, hi)]
    return float(rng.uniform(*parts[rng.integers(len(parts))]))


def _paint_tumor(
    img: np.ndarray,
    labels: np.ndarray,
    body_id: np.ndarray,
    g: _Geom,
    spec: PhantomSpec,
    rng: np.random.Generator,
) -> None:
    """Insert one noise-deformed ellipsoidal lesion clipped to one vertebral body."""
    ok = np.flatnonzero((g.zc - 0.6 * g.hh >= 0) & (g.zc + 0.6 * g.hh < img.shape[2]))
    j = int(rng.choice(ok)) if len(ok) else int(rng.integers(len(g.zc)))
    ry = rng.uniform(*spec.tumor_radius_px)
    rad = (
        max(0.8, ry * spec.spacing[1] / spec.spacing[0] * rng.uniform(0.7, 1.2)),
        ry,
        ry * rng.uniform(0.75, 1.3),
    )
    along, across = rng.uniform(-0.5, 0.5) * g.hh[j], rng.uniform(-0.45, 0.45) * g.hw[j]
    y0, ty, tz = _frame(g, g.zc[j])
    ctr = (
        g.xc + rng.uniform(-0.4, 0.4) * g.rx,
        y0 + along * ty + across * tz,
        g.zc[j] + along * tz - across * ty,
    )
    box = tuple(
        slice(max(0, int(c - 1.4 * r - 2)), min(n, max(0, int(c + 1.4 * r + 3))))
        for c, r, n in zip(ctr, rad, img.shape, strict=True)
    )
    grids = np.ogrid[box]
    if any(gr.size == 0 for gr in grids):
        return
    rho = np.sqrt(sum(((gr - c) / r) ** 2 for gr, c, r in zip(grids, ctr, rad, strict=True)))
    sigma = (max(rad[0] / 2, 0.5), rad[1] / 3, rad[2] / 3)
    bumps = rng.uniform(0.1, 0.25) * _field(rng, rho.shape, sigma)
    dist = (1.0 + bumps - rho) * min(rad[1:])  # ~ signed distance (px) to the boundary
    inside = body_id[box] == j + 1
    mottle = 1.0 + rng.uniform(0.05, 0.12) * _field(rng, rho.shape, (0.7, 2.5, 2.5))
    lesion = _contrast(spec, rng) * mottle - 1.0  # heterogeneous, like real metastases
    img[box] *= 1.0 + lesion * np.clip(0.5 + dist / 1.5, 0, 1) * inside
    labels[box][(dist >= 0) & inside] = LABELS["tumor"]


def _acquire(
    img: np.ndarray, body: np.ndarray, spec: PhantomSpec, rng: np.random.Generator
) -> np.ndarray:
    """Apply texture, partial-volume blur, bias field and Rician noise; return float32."""
    nx, ny, nz = img.shape
    texture = 0.06 * _field(rng, img.shape, (0.5, 3.0, 3.0))
    img *= 1.0 + texture + 0.05 * _field(rng, img.shape, (1.0, 10.0, 10.0)) * body
    img = ndimage.gaussian_filter(img, (0.0, 0.6, 0.6))
    ramp = rng.uniform(0.3, 1.0) * (0.5 - np.arange(ny, dtype=np.float32) / ny)[None, :, None]
    bias = ramp + 0.3 * _field(rng, img.shape, (2.0 * nx, ny / 3, nz / 3))
    img *= 1.0 + spec.bias_strength * bias / (np.abs(bias).max() + 1e-6)
    noise = rng.standard_normal((2, *img.shape), dtype=np.float32) * (spec.noise_sigma * img.max())
    return (np.hypot(np.clip(img, 0.0, None) + noise[0], noise[1]) * _SCALE).astype(np.float32)


def generate_volume_with_body(
    spec: PhantomSpec,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`generate_volume`, also returning the body mask (bool) before tumours."""
    g = _sample_geometry(spec, rng)
    img = np.zeros(spec.shape, np.float32)
    _paint_soft_tissue(img, g, rng, spec)
    tissue = SEQUENCES[spec.sequence]
    _paint_canal(img, g, rng, tissue)
    body_id = _paint_column(img, g, rng, tissue)
    labels = (body_id > 0).astype(np.uint8)
    if spec.max_tumors > 0 and rng.random() < spec.tumor_probability:
        for _ in range(int(rng.integers(1, spec.max_tumors + 1))):
            _paint_tumor(img, labels, body_id, g, spec, rng)
    return _acquire(img, body_id > 0, spec, rng), labels, body_id > 0


def generate_volume(spec: PhantomSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generate one phantom volume.

    Args:
        spec: Generator tunables.
        rng: The only source of randomness, so a seeded generator gives identical output.

    Returns:
        ``(image float32 (X, Y, Z), labels uint8 (X, Y, Z))`` in RAS voxel axes: axis0 L-R
        (``image[x]`` is a sagittal slice), axis1 P->A, axis2 I->S.
    """
    image, labels, _ = generate_volume_with_body(spec, rng)
    return image, labels
