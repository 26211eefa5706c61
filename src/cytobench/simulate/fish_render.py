"""Rendering of one interphase-FISH image: nuclei layout, DAPI texture, probe signals, optics, noise.

Used by :mod:`cytobench.simulate.fish`, which documents the model and writes the COCO truth. Coordinates
follow COCO: a continuous ``(x, y)`` frame in which pixel ``(row i, column j)`` covers ``[j, j + 1) x
[i, i + 1)``, so its centre is ``(j + 0.5, i + 0.5)``. Channel values are floats on the 0-1 scale of the
8-bit output (255 = 1.0) until :func:`render_fish` quantises them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["FishParams", "NucleusDraw", "RenderedFish", "render_fish"]

CHANNELS = ("red", "green")  # probe channels: RGB index 0 = chr21 probe, 1 = X probe; DAPI is index 2
_POLY_POINTS = 64
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel polygon filling


@dataclass(frozen=True)
class FishParams:
    """Physical and optical knobs of the simulator (ranges are drawn uniformly per image or per item).

    Attributes:
        pixel_size_um: pixel size in micrometres, or a ``(lo, hi)`` range drawn per image (the paper's
            images span 0.12-0.69 um).
        nucleus_diameter_um: mean diameter of a whole nucleus.
        coverage: fraction of the image area covered by nuclei, drawn per image; sets the nucleus count.
        destroyed_fraction: probability that a nucleus is destroyed (a cluster of fragments), per image.
        touch_fraction: probability that a nucleus is placed touching / slightly overlapping another.
        max_overlap: deepest overlap of touching nuclei, as a fraction of the sum of their radii.
        doublet_fraction: probability that one probe copy shows as a close doublet (two sister-chromatid
            dots); a doublet counts as **one** copy.
        doublet_separation: centre distance of a doublet's dots in units of the dot sigma.
        signal_sigma_um: Gaussian sigma of one probe dot before the optics.
        signal_level: peak amplitude range of a probe dot (0-1 scale), per image and channel.
        copy_brightness: per-copy factor on the dot amplitude (dim copies may fall below a detector's
            threshold, as weakly hybridised probes do).
        signal_separation_um: least distance between two copies of one probe in a nucleus (copies placed
            by chance this close may merge for a detector, as overlapping signals do in real preparations).
        signal_loss: probability that a probe copy fails to hybridise and is not drawn (the annotation's
            ``n_red`` / ``n_green`` count drawn copies; the karyotype keeps the true copy number).
        dapi_level: DAPI intensity range of nuclei, per image.
        haze_level: non-specific probe background inside nuclei, per image and channel.
        background_level: autofluorescence range, per image and channel (R, G, B share the range).
        psf_sigma_um: Gaussian point-spread sigma range, per image.
        photons: photon count at full scale (shot noise), range per image.
        read_noise: Gaussian read-noise sd range (0-1 scale), per image.
        speckles_per_mpx: faint probe speckles outside whole nuclei per megapixel.
    """

    pixel_size_um: float | tuple[float, float] = 0.15
    nucleus_diameter_um: float = 10.0
    coverage: tuple[float, float] = (0.08, 0.22)
    destroyed_fraction: tuple[float, float] = (0.1, 0.3)
    touch_fraction: float = 0.3
    max_overlap: float = 0.15
    doublet_fraction: float = 0.25
    doublet_separation: tuple[float, float] = (1.8, 2.8)
    signal_sigma_um: float = 0.25
    signal_level: tuple[float, float] = (0.5, 0.95)
    copy_brightness: tuple[float, float] = (0.5, 1.2)
    signal_separation_um: float = 1.0
    signal_loss: float = 0.0
    dapi_level: tuple[float, float] = (0.45, 0.8)
    haze_level: tuple[float, float] = (0.03, 0.08)
    background_level: tuple[float, float] = (0.02, 0.07)
    psf_sigma_um: tuple[float, float] = (0.08, 0.15)
    photons: tuple[float, float] = (200.0, 500.0)
    read_noise: tuple[float, float] = (0.005, 0.015)
    speckles_per_mpx: float = 20.0


@dataclass
class NucleusDraw:
    """One drawn nucleus.

    Attributes:
        whole: True for a whole nucleus, False for a destroyed one.
        polygon: (P, 2) float64 outline (x, y) in COCO pixel coordinates (destroyed: convex hull of the
            fragments, the contour an annotator draws around the cluster).
        karyotype: karyotype name (whole nuclei) or None.
        copies: ``{"red": (red copies), "green": ...}`` of the karyotype (whole nuclei).
        signals: one entry per drawn copy: ``(channel, x, y, dots)`` where ``dots`` is (K, 2), K = 1 for a
            single dot or 2 for a doublet, and ``(x, y)`` is the copy's centre (the doublet's midpoint).
        stray: probe dots drawn on a destroyed nucleus (not countable), ``(channel, x, y)``.
    """

    whole: bool
    polygon: np.ndarray
    karyotype: str | None = None
    copies: dict[str, int] = field(default_factory=dict)
    signals: list[tuple[str, float, float, np.ndarray]] = field(default_factory=list)
    stray: list[tuple[str, float, float]] = field(default_factory=list)
    _mask: np.ndarray | None = None  # (h, w) bool crop at (_x0, _y0)
    _x0: int = 0
    _y0: int = 0


@dataclass(frozen=True)
class RenderedFish:
    """``image`` (H, W, 3) uint8 RGB (R = chr21 probe, G = X probe, B = DAPI), its nuclei and pixel size."""

    image: np.ndarray
    nuclei: list[NucleusDraw]
    pixel_size_um: float


def _u(rng: np.random.Generator, span: tuple[float, float]) -> float:
    return float(rng.uniform(span[0], span[1]))


def _star_polygon(rng: np.random.Generator, radius: float, roughness: float, aspect: float) -> np.ndarray:
    """(P, 2) outline around (0, 0): radius with low harmonics, stretched by ``aspect`` and rotated."""
    theta = np.linspace(0.0, 2 * math.pi, _POLY_POINTS, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        r += rng.normal(0.0, roughness / k) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    pts = np.stack([r * np.cos(theta) * radius, r * np.sin(theta) * radius * aspect], axis=1)
    a = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T


def _fill(polygon: np.ndarray, x0: int, y0: int, h: int, w: int) -> np.ndarray:
    """(h, w) bool raster of a COCO-frame polygon in the crop at ``(x0, y0)`` (pixel centres inside)."""
    canvas = np.zeros((h, w), dtype=np.uint8)
    pts = np.round((polygon - [x0 + 0.5, y0 + 0.5]) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas.astype(bool)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian-filtered noise with correlation length ``scale`` px."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(scale, 0.5))
    return noise / max(float(noise.std()), 1e-6)


def _place(
    rng: np.random.Generator,
    radii: list[float],
    width: int,
    height: int,
    touch: float,
    max_overlap: float,
) -> list[tuple[float, float]]:
    """Centres for discs of ``radii`` inside the image: apart, or touching one neighbour.

    A touching disc sits at ``(r_i + r_j) * U(1 - max_overlap, 1)`` from its neighbour; every other pair
    keeps a gap of 8 % of the radii. Discs that find no room after 60 tries are dropped (NaN centre).
    """
    centres: list[tuple[float, float]] = []
    placed: list[int] = []
    for i, r in enumerate(radii):
        spot = (math.nan, math.nan)
        for _ in range(60):
            if placed and rng.random() < touch:
                j = placed[int(rng.integers(len(placed)))]
                a = rng.uniform(0, 2 * math.pi)
                d = (r + radii[j]) * rng.uniform(1.0 - max_overlap, 1.0)
                x, y, partner = centres[j][0] + d * math.cos(a), centres[j][1] + d * math.sin(a), j
            else:
                x, y, partner = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2), -1
            if not (r + 2 <= x <= width - r - 2 and r + 2 <= y <= height - r - 2):
                continue
            if all(
                k == partner or math.hypot(x - centres[k][0], y - centres[k][1]) >= 1.08 * (r + radii[k])
                for k in placed
            ):
                spot = (x, y)
                break
        centres.append(spot)
        if not math.isnan(spot[0]):
            placed.append(i)
    return centres


def _whole_shape(rng: np.random.Generator, diameter: float) -> np.ndarray:
    return _star_polygon(rng, 0.5 * diameter * rng.uniform(0.85, 1.15), 0.05, rng.uniform(0.8, 1.0))


def _destroyed_shape(rng: np.random.Generator, diameter: float) -> list[np.ndarray]:
    """Fragments (each (P, 2) around (0, 0)) scattered in an ellipse about one nucleus across."""
    axes = 0.5 * diameter * rng.uniform(0.7, 1.2, size=2)
    fragments = []
    for _ in range(int(rng.integers(8, 31))):
        rr = math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        centre = np.array([axes[0] * rr * math.cos(a), axes[1] * rr * math.sin(a)])
        frag = _star_polygon(rng, diameter * rng.uniform(0.04, 0.13), 0.2, rng.uniform(0.5, 1.0))
        fragments.append(frag + centre)
    return fragments


def _crop(polygon: np.ndarray, pad: int, width: int, height: int) -> tuple[int, int, int, int]:
    x0 = max(int(math.floor(polygon[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(polygon[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(polygon[:, 0].max())) + pad, width)
    y1 = min(int(math.ceil(polygon[:, 1].max())) + pad, height)
    return x0, y0, x1 - x0, y1 - y0


def _add_dot(channel: np.ndarray, x: float, y: float, sigma: float, amplitude: float) -> None:
    """Add a Gaussian dot centred at COCO ``(x, y)`` to ``channel`` (H, W) in place."""
    half = int(math.ceil(4 * sigma)) + 1
    j0, j1 = max(int(x) - half, 0), min(int(x) + half + 1, channel.shape[1])
    i0, i1 = max(int(y) - half, 0), min(int(y) + half + 1, channel.shape[0])
    if j0 >= j1 or i0 >= i1:
        return
    gx = np.exp(-((np.arange(j0, j1) + 0.5 - x) ** 2) / (2 * sigma**2))
    gy = np.exp(-((np.arange(i0, i1) + 0.5 - y) ** 2) / (2 * sigma**2))
    channel[i0:i1, j0:j1] += (amplitude * gy[:, None] * gx[None, :]).astype(np.float32)


def _place_signals(
    rng: np.random.Generator,
    allowed: np.ndarray,
    x0: int,
    y0: int,
    n: int,
    min_sep: float,
) -> list[tuple[float, float]]:
    """Up to ``n`` COCO points in the ``allowed`` (h, w) crop, pairwise at least ``min_sep`` apart."""
    rows, cols = np.nonzero(allowed)
    if rows.size == 0:
        return []
    points: list[tuple[float, float]] = []
    for _ in range(n):
        for attempt in range(200):
            k = int(rng.integers(rows.size))
            x, y = x0 + cols[k] + rng.uniform(0.1, 0.9), y0 + rows[k] + rng.uniform(0.1, 0.9)
            sep = min_sep if attempt < 150 else 0.5 * min_sep
            if all(math.hypot(x - px, y - py) >= sep for px, py in points):
                points.append((x, y))
                break
    return points


def render_fish(
    rng: np.random.Generator,
    width: int,
    height: int,
    karyotypes: Mapping[str, tuple[int, int]],
    mix: Mapping[str, float],
    params: FishParams,
) -> RenderedFish:
    """Draw one FISH image in memory.

    Args:
        rng: random generator (the only source of randomness).
        width: W in px.
        height: H in px.
        karyotypes: ``{name: (red copies, green copies)}`` table.
        mix: ``{karyotype name: probability}`` (sums to 1); each whole nucleus draws its karyotype from it.
        params: simulator knobs.

    Returns:
        The uint8 image and its nuclei (whole ones carry their karyotype and signals).
    """
    px = params.pixel_size_um
    pixel = float(px) if isinstance(px, int | float) else _u(rng, (float(px[0]), float(px[1])))
    diameter = params.nucleus_diameter_um / pixel
    sigma = max(params.signal_sigma_um / pixel, 0.7)
    n_nuclei = max(1, round(_u(rng, params.coverage) * width * height / (math.pi * diameter**2 / 4)))
    p_destroyed = _u(rng, params.destroyed_fraction)
    kinds = rng.random(n_nuclei) >= p_destroyed  # True = whole
    shapes: list[np.ndarray | list[np.ndarray]] = []
    radii: list[float] = []
    for whole in kinds:
        shape = _whole_shape(rng, diameter) if whole else _destroyed_shape(rng, diameter)
        pts = shape if whole else np.concatenate(shape)
        shapes.append(shape)
        radii.append(float(np.hypot(pts[:, 0], pts[:, 1]).max()))
    radii = [min(r, 0.5 * min(width, height) - 3) for r in radii]
    centres = _place(rng, radii, width, height, params.touch_fraction, params.max_overlap)

    dapi = np.zeros((height, width), dtype=np.float32)
    probes = {c: np.zeros((height, width), dtype=np.float32) for c in CHANNELS}
    cover = np.zeros((height, width), dtype=np.uint8)
    dapi_level = _u(rng, params.dapi_level)
    haze = {c: _u(rng, params.haze_level) for c in CHANNELS}
    nuclei: list[NucleusDraw] = []
    names = list(mix)
    probs = np.array([mix[k] for k in names], dtype=np.float64)
    for whole, shape, (cx, cy), r in zip(kinds, shapes, centres, radii):
        if math.isnan(cx) or (not whole and r < 2):
            continue
        level = dapi_level * rng.uniform(0.75, 1.25)
        if whole:
            polygon = shape + [cx, cy]
            x0, y0, w, h = _crop(polygon, 2, width, height)
            mask = _fill(polygon, x0, y0, h, w)
            texture = 1.0 + 0.12 * _smooth_noise(rng, (h, w), diameter / 14)
            texture += 0.08 * _smooth_noise(rng, (h, w), diameter / 40)
            dist = ndimage.distance_transform_edt(mask)
            dome = 0.8 + 0.2 * np.minimum(dist / (0.25 * diameter), 1.0)
            body = mask * level * texture * dome
            name = names[int(rng.choice(len(names), p=probs))]
            copies = karyotypes[name]
            draw = NucleusDraw(True, polygon, name, {"red": copies[0], "green": copies[1]}, _mask=mask)
        else:
            fragments = [f + [cx, cy] for f in shape]
            hull = cv2.convexHull(np.concatenate(fragments).astype(np.float32)).reshape(-1, 2)
            polygon = hull.astype(np.float64)
            x0, y0, w, h = _crop(polygon, 2, width, height)
            body = np.zeros((h, w), dtype=np.float32)
            for frag in fragments:
                body += _fill(frag, x0, y0, h, w) * level * rng.uniform(0.6, 1.3)
            mask = _fill(polygon, x0, y0, h, w)
            draw = NucleusDraw(False, polygon, _mask=mask)
        draw._x0, draw._y0 = x0, y0
        dapi[y0 : y0 + h, x0 : x0 + w] += body.astype(np.float32)
        cover[y0 : y0 + h, x0 : x0 + w] += mask
        for c in CHANNELS:
            probes[c][y0 : y0 + h, x0 : x0 + w] += mask * np.float32(haze[c] * rng.uniform(0.7, 1.3))
        nuclei.append(draw)

    levels = {c: _u(rng, params.signal_level) for c in CHANNELS}
    for nuc in nuclei:
        _draw_signals(rng, nuc, cover, probes, levels, sigma, diameter, params)
    _draw_speckles(rng, probes, cover, sigma, params.speckles_per_mpx)
    image = _form_image(rng, dapi, probes, pixel, params)
    return RenderedFish(image, nuclei, pixel)


def _draw_signals(
    rng: np.random.Generator,
    nuc: NucleusDraw,
    cover: np.ndarray,
    probes: dict[str, np.ndarray],
    levels: dict[str, float],
    sigma: float,
    diameter: float,
    params: FishParams,
) -> None:
    """Probe copies of a whole nucleus (or stray dots on a destroyed one), away from borders and neighbours."""
    mask = nuc._mask
    assert mask is not None
    h, w = mask.shape
    x0, y0 = nuc._x0, nuc._y0
    margin = max(3.0, 2.5 * sigma, 0.08 * diameter)
    others = cover[y0 : y0 + h, x0 : x0 + w] > mask
    clear = ndimage.distance_transform_edt(~others) > margin if others.any() else np.ones_like(mask)
    allowed = (ndimage.distance_transform_edt(mask) > margin) & clear
    brightness = rng.uniform(0.8, 1.2)
    if not nuc.whole:
        if rng.random() < 0.5:
            for x, y in _place_signals(rng, allowed, x0, y0, int(rng.integers(1, 4)), 3 * sigma):
                channel = CHANNELS[int(rng.integers(2))]
                _add_dot(probes[channel], x, y, sigma, levels[channel] * brightness * rng.uniform(0.5, 1.0))
                nuc.stray.append((channel, x, y))
        return
    min_sep = max(params.signal_separation_um * diameter / params.nucleus_diameter_um, 3.0 * sigma)
    for channel in CHANNELS:
        n = sum(rng.random() >= params.signal_loss for _ in range(nuc.copies[channel]))
        for x, y in _place_signals(rng, allowed, x0, y0, n, min_sep):
            amp = levels[channel] * brightness * _u(rng, params.copy_brightness)
            s = sigma * rng.uniform(0.85, 1.2)
            if rng.random() < params.doublet_fraction:
                d = 0.5 * s * _u(rng, params.doublet_separation)
                a = rng.uniform(0, math.pi)
                dots = np.array(
                    [[x + d * math.cos(a), y + d * math.sin(a)], [x - d * math.cos(a), y - d * math.sin(a)]]
                )
                for dx, dy in dots:
                    _add_dot(probes[channel], dx, dy, s, amp * rng.uniform(0.75, 1.0))
            else:
                dots = np.array([[x, y]])
                _add_dot(probes[channel], x, y, s, amp)
            nuc.signals.append((channel, x, y, dots))


def _draw_speckles(
    rng: np.random.Generator, probes: dict[str, np.ndarray], cover: np.ndarray, sigma: float, per_mpx: float
) -> None:
    """Faint non-specific probe speckles (some above the detection threshold) outside every nucleus."""
    height, width = cover.shape
    for _ in range(int(rng.poisson(per_mpx * width * height / 1e6))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        if cover[min(int(y), height - 1), min(int(x), width - 1)]:
            continue
        channel = CHANNELS[int(rng.integers(2))]
        _add_dot(probes[channel], x, y, 0.8 * sigma, rng.uniform(0.1, 0.5))


def _form_image(
    rng: np.random.Generator,
    dapi: np.ndarray,
    probes: dict[str, np.ndarray],
    pixel: float,
    params: FishParams,
) -> np.ndarray:
    """Background autofluorescence, optics blur, shot and read noise; (H, W, 3) uint8 RGB."""
    height, width = dapi.shape
    small = (max(2, width // 64), max(2, height // 64))
    psf = max(_u(rng, params.psf_sigma_um) / pixel, 0.3)
    photons = _u(rng, params.photons)
    read = _u(rng, params.read_noise)
    out = np.empty((height, width, 3), dtype=np.uint8)
    for index, signal in enumerate((probes["red"], probes["green"], dapi)):
        low = rng.uniform(0.7, 1.3, size=(small[1], small[0])).astype(np.float32)
        low = cv2.resize(cv2.GaussianBlur(low, (0, 0), 1.5), (width, height), interpolation=cv2.INTER_CUBIC)
        value = signal + _u(rng, params.background_level) * low
        value = cv2.GaussianBlur(value, (0, 0), psf)
        value = rng.poisson(np.clip(value, 0, None) * photons).astype(np.float32) / photons
        value += rng.normal(0.0, read, size=value.shape).astype(np.float32)
        out[:, :, index] = np.round(np.clip(value, 0.0, 1.0) * 255).astype(np.uint8)
    return out
