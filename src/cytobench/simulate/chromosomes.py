"""Human chromosome classes, G-band patterns, karyotypes and the rendering of one banded body.

Tables (the 24 classes ``"1"`` .. ``"22"``, ``"X"``, ``"Y"``, 1-based index 1-24):

* **Denver group** as in the KTH thesis Table 3.1: A (1-3, large, metacentric), B (4-5, large,
  submetacentric), C (6-12, X, medium, submetacentric), D (13-15, medium, acrocentric), E (16-18, relatively
  short, submetacentric), F (19-20, short, metacentric), G (21-22, Y, short, acrocentric).
* **Relative length** (percent of the haploid autosome set) and **centromere index** ``p / (p + q)``:
  rounded textbook (ISCN-style) mean values; they reproduce the ordering and the
  metacentric / submetacentric / acrocentric split of Table 3.1.
* **G-band pattern**: a fixed pseudo-random pattern per class (seeded by the class index only, never by
  the user's seed), so the same class always looks alike. Along the body from p-ter (``u = 0``) to q-ter
  (``u = 1``) each arm alternates pale and dark bands, starting pale at the telomere; the number of bands
  grows with the class length (about 30 for chromosome 1, 6 for chromosome 21, the ~400-band level).

Body model: a bent tube of half-width ``w`` around a smooth centreline of arc length ``L`` with round
caps, a waist at the centromere (the half-width dips by ``CENTROMERE_DEPTH`` over about one half-width)
and an optical density ``OD = density * band(u) * thickness * chromatid`` where ``thickness =
(1 - (d / w)^2)^0.3`` (flat-topped cylinder, ``d`` the distance to the centreline) and ``chromatid = 1 -
split * exp(-(d / 0.25 w)^2)`` (a pale line between the sister chromatids). The **mask** is the full body
``d <= w(s)``. Rendering is vectorised over the body's bounding-box crop: an OpenCV distance transform
with pixel labels gives every pixel its nearest centreline sample, whose local tangent then gives the
exact arc-length position and distance.

Debris (:func:`draw_debris`, never annotated): stain specks of one to three small overlapping ellipses
(0.2-1.3 chromosome half-widths, optical density 0.3-1.3) anywhere in the image and, for one item in
twenty, a large textured interphase nucleus (radius 0.3-0.5 x the chromosome-1 length) outside the spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

__all__ = [
    "CENTROMERE_DEPTH",
    "CLASSES",
    "CLASS_NAMES",
    "ChromosomeClass",
    "RenderedBody",
    "band_profile",
    "class_by_name",
    "draw_debris",
    "form_image",
    "format_karyotype",
    "render_body",
    "sample_centreline",
    "sample_karyotype",
]

CENTROMERE_DEPTH = 0.32  # relative dip of the half-width at the centromere
PROFILE_SAMPLES = 512  # samples of a band profile over u in [0, 1]
SAMPLE_SPACING = 0.5  # px between centreline samples (keeps the rasterised centreline 8-connected)
_BAND_SEED = 0xB4D5  # fixed: band patterns never depend on the user's seed


@dataclass(frozen=True)
class ChromosomeClass:
    """One of the 24 human chromosome classes.

    Attributes:
        index: 1-24 (``"X"`` is 23, ``"Y"`` is 24); the category id in karyotype label mode.
        name: ``"1"`` .. ``"22"``, ``"X"``, ``"Y"``.
        group: Denver group ``"A"`` .. ``"G"``.
        relative_length: percent of the haploid autosome length.
        centromere_index: ``p / (p + q)`` in (0, 0.5].
    """

    index: int
    name: str
    group: str
    relative_length: float
    centromere_index: float


_TABLE = (  # name, group, relative length %, centromere index
    ("1", "A", 8.44, 0.48), ("2", "A", 8.02, 0.39), ("3", "A", 6.83, 0.47),
    ("4", "B", 6.30, 0.29), ("5", "B", 6.08, 0.29),
    ("6", "C", 5.90, 0.39), ("7", "C", 5.36, 0.39), ("8", "C", 4.93, 0.34), ("9", "C", 4.80, 0.35),
    ("10", "C", 4.59, 0.32), ("11", "C", 4.61, 0.40), ("12", "C", 4.66, 0.30),
    ("13", "D", 3.74, 0.17), ("14", "D", 3.56, 0.18), ("15", "D", 3.46, 0.19),
    ("16", "E", 3.36, 0.41), ("17", "E", 3.25, 0.34), ("18", "E", 2.93, 0.31),
    ("19", "F", 2.67, 0.47), ("20", "F", 2.56, 0.45),
    ("21", "G", 1.90, 0.26), ("22", "G", 2.04, 0.27),
    ("X", "C", 5.12, 0.40), ("Y", "G", 2.15, 0.27),
)  # fmt: skip
CLASSES: tuple[ChromosomeClass, ...] = tuple(
    ChromosomeClass(i + 1, name, group, length, ci) for i, (name, group, length, ci) in enumerate(_TABLE)
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
MAX_RELATIVE_LENGTH = max(c.relative_length for c in CLASSES)
_TRISOMY_WEIGHTS = {"21": 0.5, "18": 0.2, "13": 0.15}  # viable trisomies; the rest share 0.15


def class_by_name(name: str) -> ChromosomeClass:
    """The class called ``name`` (``"1"`` .. ``"22"``, ``"X"``, ``"Y"``)."""
    return CLASSES[CLASS_NAMES.index(name)]


# ------------------------------------------------------------------------------------------- band patterns
@cache
def band_profile(index: int) -> np.ndarray:
    """The fixed G-band pattern of class ``index`` (1-24).

    Returns:
        (PROFILE_SAMPLES,) float32 relative optical density in [0.25, 1] over ``u`` from p-ter (0) to
        q-ter (1); read-only and identical on every call.
    """
    cls = CLASSES[index - 1]
    rng = np.random.default_rng([_BAND_SEED, index])
    n_bands = max(5, round(30 * cls.relative_length / MAX_RELATIVE_LENGTH))
    levels = np.empty(PROFILE_SAMPLES, dtype=np.float64)
    u = (np.arange(PROFILE_SAMPLES) + 0.5) / PROFILE_SAMPLES
    arms = ((0.0, cls.centromere_index), (cls.centromere_index, 1.0))
    for arm_index, (lo, hi) in enumerate(arms):
        k = max(2, round(n_bands * (hi - lo)))
        widths = rng.gamma(4.0, 1.0, size=k)
        edges = lo + (hi - lo) * np.concatenate([[0.0], np.cumsum(widths) / widths.sum()])
        values = np.where(np.arange(k) % 2 == 0, rng.uniform(0.25, 0.42, k), rng.uniform(0.7, 1.0, k))
        grey = rng.random(k) < 0.2
        values[grey] = rng.uniform(0.45, 0.6, int(grey.sum()))
        if arm_index == 1:  # pale bands at both telomeres: the q arm ends with its first (pale) band
            values = values[::-1]
        inside = (u >= lo) & (u < hi)
        levels[inside] = values[np.clip(np.searchsorted(edges, u[inside], side="right") - 1, 0, k - 1)]
    sigma = 0.25 * PROFILE_SAMPLES / (2 * n_bands)
    profile = gaussian_filter1d(levels, sigma, mode="nearest").astype(np.float32)
    profile.setflags(write=False)
    return profile


# ---------------------------------------------------------------------------------------------- karyotypes
def sample_karyotype(rng: np.random.Generator, n: int) -> list[int]:
    """Class indices (1-24) of a cell with ``n`` chromosomes.

    Starts from a normal 46,XX or 46,XY cell (equal odds); each extra chromosome is a sex chromosome
    (1 in 4) or an autosome (21, 18, 13 favoured as the viable trisomies); each missing one is a sex
    chromosome (1 in 5, only while two or more remain) or a uniformly chosen autosome copy.

    Returns:
        Sorted list of ``n`` class indices.
    """
    cells = [i for i in range(1, 23) for _ in range(2)] + [23, 23 if rng.random() < 0.5 else 24]
    autosome_p = np.full(22, 0.15 / 19)
    for name, weight in _TRISOMY_WEIGHTS.items():
        autosome_p[int(name) - 1] = weight
    while len(cells) < n:
        if rng.random() < 0.25:
            cells.append(23 if rng.random() < 0.6 else 24)
        else:
            cells.append(int(rng.choice(22, p=autosome_p / autosome_p.sum())) + 1)
    while len(cells) > n:
        sex = [k for k, c in enumerate(cells) if c > 22]
        auto = [k for k, c in enumerate(cells) if c <= 22]
        pool = sex if (len(sex) >= 2 and rng.random() < 0.2) or not auto else auto
        cells.pop(pool[int(rng.integers(len(pool)))])
    return sorted(cells)


def format_karyotype(indices: list[int]) -> str:
    """ISCN-style karyotype string, e.g. ``"46,XY"``, ``"47,XX,+21"``, ``"45,X"``, ``"45,XY,-13"``."""
    counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=25)
    parts = [str(len(indices)), "X" * int(counts[23]) + "Y" * int(counts[24])]
    for i in range(1, 23):
        delta = int(counts[i]) - 2
        parts.extend([f"+{i}"] * max(delta, 0) + [f"-{i}"] * max(-delta, 0))
    return ",".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------- centreline
def sample_centreline(rng: np.random.Generator, length: float, bend: float = 1.0) -> np.ndarray:
    """A smooth random centreline of arc length ``length``, in local coordinates.

    The heading is a random linear + quadratic function of arc length (arc and S shapes) plus, in one
    body of five, a smoothed kink (a V-bend up to ~100 degrees). The result is rotated so that its chord
    (first to last sample) points along +x and translated so that the mid-length sample is the origin.

    Args:
        rng: random generator.
        length: arc length in px (> 0).
        bend: scale of the random turning (0 gives a straight body).

    Returns:
        (M, 2) float64 ``(x, y)`` samples, ``M = ceil(length / 0.5) + 1``, equally spaced in arc length;
        the first sample is p-ter.
    """
    m = max(3, math.ceil(length / SAMPLE_SPACING) + 1)
    u = np.linspace(0.0, 1.0, m)
    heading = bend * (rng.normal(0.0, 0.45) * (u - 0.5) + rng.normal(0.0, 0.9) * ((u - 0.5) ** 2 - 1 / 12))
    if rng.random() < 0.2:
        angle = bend * rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.7)
        heading += angle / (1.0 + np.exp(-(u - rng.uniform(0.3, 0.7)) / 0.04))
    step = length / (m - 1)
    points = np.zeros((m, 2))
    mid_heading = 0.5 * (heading[1:] + heading[:-1])
    points[1:, 0] = np.cumsum(np.cos(mid_heading)) * step
    points[1:, 1] = np.cumsum(np.sin(mid_heading)) * step
    chord = points[-1] - points[0]
    angle = -math.atan2(chord[1], chord[0]) if np.hypot(*chord) > 1e-9 else 0.0
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = points @ rot.T
    return points - points[m // 2]


# -------------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class RenderedBody:
    """One body drawn into its crop.

    Attributes:
        x0: column of the crop's left edge in the image.
        y0: row of the crop's top edge in the image.
        od: (h, w) float32 optical density (0 outside the body).
        mask: (h, w) bool full-body mask.
    """

    x0: int
    y0: int
    od: np.ndarray
    mask: np.ndarray


def render_body(
    points: np.ndarray,
    half_width: float,
    profile: np.ndarray,
    image_size: tuple[int, int],
    *,
    centromere: float | None = None,
    u_range: tuple[float, float] = (0.0, 1.0),
    density: float = 1.0,
    split: float = 0.0,
) -> RenderedBody | None:
    """Draw a banded tube around a posed centreline (vectorised over its bounding-box crop).

    Args:
        points: (M, 2) float64 ``(x, y)`` centreline in image pixels (pixel ``(r, c)`` covers
            ``[c, c+1) x [r, r+1)``), equally spaced in arc length, p-ter first.
        half_width: tube half-width ``w`` in px.
        profile: (K,) relative optical density along the body (see :func:`band_profile`).
        image_size: ``(W, H)``; the crop is clipped to the image.
        centromere: arc length (px from ``points[0]``) of the centromere waist, None for no waist.
        u_range: the interval of ``profile`` (as ``u`` in [0, 1]) the body covers; a fragment covers less.
        density: optical density of the darkest band.
        split: depth of the pale line between the sister chromatids, in [0, 1).

    Returns:
        The crop, or None when the body lies outside the image.
    """
    width, height = image_size
    step = float(np.hypot(*(points[1] - points[0])))
    length = step * (len(points) - 1)
    reach = half_width + 2.0
    x0, y0 = (int(max(math.floor(v - reach), 0)) for v in points.min(axis=0))
    x1 = int(min(math.ceil(points[:, 0].max() + reach), width))
    y1 = int(min(math.ceil(points[:, 1].max() + reach), height))
    if x1 <= x0 or y1 <= y0:
        return None
    h, w = y1 - y0, x1 - x0
    cols = np.floor(points[:, 0]).astype(np.int64) - x0
    rows = np.floor(points[:, 1]).astype(np.int64) - y0
    ok = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    if not ok.any():
        return None
    sample_ids = np.flatnonzero(ok)
    linear, first = np.unique(rows[ok] * w + cols[ok], return_index=True)  # raster order = label order
    seeds = np.full(h * w, 255, dtype=np.uint8)
    seeds[linear] = 0
    dist, labels = cv2.distanceTransformWithLabels(
        seeds.reshape(h, w), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    near = np.flatnonzero(dist.ravel() <= reach)
    nearest = sample_ids[first[labels.ravel()[near] - 1]]  # nearest centreline sample per pixel
    tangent = np.gradient(points, axis=0)
    tangent /= np.maximum(np.hypot(tangent[:, 0], tangent[:, 1]), 1e-12)[:, None]
    dx = (near % w + x0 + 0.5) - points[nearest, 0]
    dy = (near // w + y0 + 0.5) - points[nearest, 1]
    s = nearest * step + dx * tangent[nearest, 0] + dy * tangent[nearest, 1]
    perp = -dx * tangent[nearest, 1] + dy * tangent[nearest, 0]
    excess = np.maximum(-s, 0.0) + np.maximum(s - length, 0.0)  # round caps beyond the ends
    d = np.sqrt(perp * perp + excess * excess)
    s = np.clip(s, 0.0, length)
    local_w = np.full_like(s, half_width)
    if centromere is not None:
        local_w *= 1.0 - CENTROMERE_DEPTH * np.exp(-(((s - centromere) / (0.9 * half_width)) ** 2))
    inside = d <= local_w
    near, s, d, local_w = near[inside], s[inside], d[inside], local_w[inside]
    u = u_range[0] + (u_range[1] - u_range[0]) * s / max(length, 1e-9)
    band = profile[np.clip(np.rint(u * (len(profile) - 1)).astype(np.int64), 0, len(profile) - 1)]
    t2 = (d / local_w) ** 2
    values = density * band * (1.0 - t2 + 1e-6) ** 0.3 * (1.0 - split * np.exp(-t2 / 0.0625))
    od = np.zeros(h * w, dtype=np.float32)
    od[near] = values
    mask = np.zeros(h * w, dtype=bool)
    mask[near] = True
    return RenderedBody(x0, y0, od.reshape(h, w), mask.reshape(h, w))


# ------------------------------------------------------------------------------------- image formation
def form_image(rng: np.random.Generator, od: np.ndarray, half_width: float) -> np.ndarray:
    """Absorbance image formation: ``I = B * exp(-stain * od)``, then blur, gamma, contrast and noise.

    Args:
        rng: random generator.
        od: (H, W) float32 summed optical density of every body.
        half_width: chromosome half-width in px (sets the blur).

    Returns:
        (H, W) uint8 image.
    """
    height, width = od.shape
    xn = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    yn = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    gx, gy = rng.uniform(-0.12, 0.12, size=2)
    vignette = np.float32(rng.uniform(0.0, 0.12))
    background = np.float32(rng.uniform(0.78, 0.95)) * (
        1.0 + np.float32(gx) * xn + np.float32(gy) * yn - vignette * 0.5 * (xn * xn + yn * yn)
    )
    image = background * np.exp(-np.float32(rng.uniform(0.75, 1.25)) * od)
    sigma = max(0.35, half_width * rng.uniform(0.1, 0.2))
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    np.clip(image, 0.0, 1.0, out=image)
    image **= np.float32(rng.uniform(0.75, 1.35))
    low, high = rng.uniform(0.0, 0.08), rng.uniform(0.92, 1.0)
    image = np.float32(low) + np.float32(high - low) * image
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.004, 0.025))
    return np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ debris
def draw_debris(
    rng: np.random.Generator,
    od: np.ndarray,
    n: int,
    scale: float,
    spread: tuple[tuple[float, float], tuple[float, float]],
) -> None:
    """Add ``n`` debris items to the optical density ``od`` (H, W) in place (see the module docstring).

    Args:
        rng: random generator.
        od: (H, W) float32 optical density.
        n: number of items.
        scale: length of chromosome 1 in px.
        spread: ``(centre (x, y), semi-axes (a_x, a_y))`` of the spread ellipse that nuclei avoid.
    """
    (sx, sy), (ax, ay) = spread
    height, width = od.shape
    half_width = 0.06 * scale
    for _ in range(n):
        if rng.random() < 0.05:
            radius = scale * rng.uniform(0.3, 0.5)
            for _try in range(20):
                x, y = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
                rx, ry = (x - sx) / ax, (y - sy) / ay
                if math.hypot(rx, ry) > 1.15 + radius / min(ax, ay):
                    nucleus = [(x, y, radius, radius * rng.uniform(0.75, 1.0))]
                    _add_blob(rng, od, nucleus, rng.uniform(0.5, 0.9), textured=True)
                    break
            continue
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        a = half_width * rng.uniform(0.2, 1.3)
        lobes = [(x, y, a, a * rng.uniform(0.4, 1.0))]
        for dx, dy, fa, fb in rng.normal(0.0, 1.0, (int(rng.integers(0, 3)), 4)):  # satellite lobes
            lobes.append((x + dx * a, y + dy * a, a * (0.55 + 0.12 * abs(fa)), a * (0.4 + 0.1 * abs(fb))))
        _add_blob(rng, od, lobes, rng.uniform(0.3, 1.3), textured=False)


def _add_blob(
    rng: np.random.Generator,
    od: np.ndarray,
    lobes: list[tuple[float, float, float, float]],
    density: float,
    *,
    textured: bool,
) -> None:
    """Add filled ellipses ``(cx, cy, a, b)`` (random angles) of optical density ``density`` to ``od``."""
    height, width = od.shape
    reach = max(max(a, b) for _x, _y, a, b in lobes) + 3
    x0 = max(int(min(lb[0] for lb in lobes) - reach), 0)
    y0 = max(int(min(lb[1] for lb in lobes) - reach), 0)
    x1 = min(int(max(lb[0] for lb in lobes) + reach) + 1, width)
    y1 = min(int(max(lb[1] for lb in lobes) + reach) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return
    patch = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    for cx, cy, a, b in lobes:
        centre = (int(round((cx - x0) * 16)), int(round((cy - y0) * 16)))
        axes = (max(int(round(a * 16)), 8), max(int(round(b * 16)), 8))
        cv2.ellipse(patch, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA, 4)
    blob = patch.astype(np.float32) * np.float32(density / 255.0)
    if textured:
        grain = rng.uniform(0.7, 1.3, size=(6, 6)).astype(np.float32)
        blob *= cv2.resize(grain, (blob.shape[1], blob.shape[0]), interpolation=cv2.INTER_CUBIC)
    od[y0:y1, x0:x1] += blob
