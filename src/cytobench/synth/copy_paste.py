"""Copy-paste of whole cells in the phase-contrast domain (thesis Sec. 4.4.1, Fig. 4.8).

Phase contrast is taken as additive (thesis Sec. 4.4): where cells overlap, the image is the background
plus the sum of the cells' contributions. A new image is therefore built as

    canvas = background + sum_i alpha_i * warp_i(signal_i)

* ``signal_i`` is a cell cut from a real phase image minus that image's background level
  (:class:`CellCrop`; :mod:`cytobench.synth.cells` cuts them), zero on the pixels of other cells, so a
  pasted cell never brings a piece of a neighbour along.
* ``warp_i`` is one random augmentation applied to the crop, its mask and its nucleus together (the same
  inverse map, so pixels and masks stay aligned): resize (log-uniform scale in ``scale_range``), rotation
  (uniform angle), an elastic deformation (a smooth random displacement field: Gaussian-filtered white
  noise scaled to a peak of ``elastic_strength`` cell diameters) and a shift (the random paste position).
* ``alpha_i`` feathers the edge (the thesis blurs the crop's edge with a Gaussian, sigma = 20 px): 1 on
  the cell's mask and ``exp(-d^2 / (2 sigma^2))`` at distance ``d`` outside it, cut at ``3 sigma``. The
  cell's own halo just outside its mask is thus carried over and fades into the background. The thesis's
  20 px belong to its 1080 x 1080 images; by default sigma is scaled with the canvas
  (:func:`thesis_edge_sigma`: ``20 * min(H, W) / 1080``), so a 256 px canvas uses 4.7 px.

Overlap bound (thesis: ``0 <= p <= 0.2``): a cell is pasted only if, counting amodal masks, at most
``max_overlap`` of its area lies under cells already there, **and** no cell already there gets more than
``max_overlap`` of its area covered by other cells. So on the final masks every cell's overlap ratio
``|A_i and (union of the other A_j)| / |A_i|`` is at most ``max_overlap``, whatever the paste order. A
rejected try draws a new cell, augmentation and position; after ``max_tries`` rejected tries in a row the
canvas counts as full and the image keeps the cells pasted so far (:attr:`PasteResult.n_pasted` <
``n_requested``; callers report it).

Depth: cells are stacked in paste order, the last on top. The amodal mask is the whole warped cell; the
visible mask is the amodal mask minus the cells above it (:func:`visible_masks`). Pasted masks lie wholly
inside the canvas (their feathered halo may be cut by the edge).

Everything random comes from the one ``numpy.random.Generator`` passed in: same generator state, same
image. Each crop is warped by one inverse map evaluated with vectorised ``map_coordinates`` (signal,
mask and nucleus); no per-pixel Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "THESIS_EDGE_SIGMA",
    "THESIS_IMAGE_SIDE",
    "CellCrop",
    "CopyPasteParams",
    "PasteResult",
    "Placement",
    "augment_cell",
    "compose_canvas",
    "feather_alpha",
    "instance_masks",
    "overlap_ratios",
    "pad_cell",
    "paste_cells",
    "place",
    "thesis_edge_sigma",
    "visible_masks",
]

#: The thesis's edge-blur sigma (px) and the image side it was used at.
THESIS_EDGE_SIGMA = 20.0
THESIS_IMAGE_SIDE = 1080
#: The feather is cut where it falls below exp(-4.5) = 1.1 %.
FEATHER_REACH = 3.0


@dataclass(frozen=True)
class CellCrop:
    """One cell cut from a phase image, ready to paste.

    Attributes:
        signal: ``(h, w)`` float32: the phase image minus its background level; zero on other cells'
            pixels and outside the source image.
        mask: ``(h, w)`` bool, the cell (non-empty).
        nucleus: ``(h, w)`` bool inside ``mask``, or None for a cell without a nucleus.
        source: provenance, e.g. ``{"image_id": 3, "cell_id": 17}`` (written to the json).
    """

    signal: np.ndarray
    mask: np.ndarray
    nucleus: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.signal.ndim != 2 or self.signal.shape != self.mask.shape:
            raise ValueError(f"signal {self.signal.shape} and mask {self.mask.shape} must be one (h, w)")
        if self.nucleus is not None and self.nucleus.shape != self.mask.shape:
            raise ValueError(f"nucleus {self.nucleus.shape} differs from mask {self.mask.shape}")
        if not self.mask.any():
            raise ValueError("a cell crop needs a non-empty mask")


@dataclass(frozen=True)
class CopyPasteParams:
    """Knobs of :func:`paste_cells`.

    Attributes:
        max_overlap: bound p on every cell's overlap ratio, in [0, 1) (thesis: 0.2).
        edge_sigma: feather sigma in px; None = :func:`thesis_edge_sigma` of the canvas.
        augment: warp each cell (False pastes crops as cut, for checks).
        scale_range: resize factor range (log-uniform).
        rotate: rotate by a uniform random angle.
        elastic_strength: peak displacement of the elastic field, in cell diameters (0 = none).
        elastic_smoothness: std of the Gaussian smoothing the field, in cell diameters.
        max_tries: rejected tries in a row after which the canvas counts as full.
    """

    max_overlap: float = 0.2
    edge_sigma: float | None = None
    augment: bool = True
    scale_range: tuple[float, float] = (0.8, 1.25)
    rotate: bool = True
    elastic_strength: float = 0.06
    elastic_smoothness: float = 0.25
    max_tries: int = 50

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        checks = [
            ("max_overlap", self.max_overlap, 0.0 <= self.max_overlap < 1.0, "in [0, 1)"),
            ("edge_sigma", self.edge_sigma, self.edge_sigma is None or self.edge_sigma >= 0, ">= 0"),
            ("scale_range", self.scale_range, 0 < lo <= hi, "0 < lo <= hi"),
            ("elastic_strength", self.elastic_strength, self.elastic_strength >= 0, ">= 0"),
            ("elastic_smoothness", self.elastic_smoothness, self.elastic_smoothness > 0, "> 0"),
            ("max_tries", self.max_tries, self.max_tries >= 1, ">= 1"),
        ]
        for name, value, ok, rule in checks:
            if not ok:  # NaN fails every comparison
                raise ValueError(f"{name} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class Placement:
    """A warped cell at its paste position.

    Attributes:
        top / left: canvas position of the crop's pixel (0, 0) (may be negative: the halo may leave the
            canvas, the mask never does).
        contribution: ``(h, w)`` float32 added to the canvas (``alpha * signal``).
        mask / nucleus: ``(h, w)`` bool amodal cell mask and nucleus (None: no nucleus).
        source: the crop's provenance.
    """

    top: int
    left: int
    contribution: np.ndarray
    mask: np.ndarray
    nucleus: np.ndarray | None
    source: dict[str, Any]


@dataclass
class PasteResult:
    """A copy-paste image and its truth.

    Attributes:
        phase: ``(H, W)`` float32 canvas (not clipped).
        background: the canvas's background level.
        placements: the pasted cells in paste (depth) order, the last on top.
        amodal: ``(N, H, W)`` bool whole-cell masks; ``visible``: the same minus the cells above.
        nuclei: ``(N, H, W)`` bool whole nuclei (empty for cells without one); ``has_nucleus`` ``(N,)``.
        n_requested: cells asked for; ``n_pasted`` < it means the canvas filled up first.
    """

    phase: np.ndarray
    background: float
    placements: list[Placement]
    amodal: np.ndarray
    visible: np.ndarray
    nuclei: np.ndarray
    has_nucleus: np.ndarray
    n_requested: int

    @property
    def n_pasted(self) -> int:
        return len(self.placements)


def thesis_edge_sigma(height: int, width: int) -> float:
    """The thesis's 20 px edge sigma scaled from its 1080 px images to a ``height`` x ``width`` canvas."""
    return THESIS_EDGE_SIGMA * min(height, width) / THESIS_IMAGE_SIDE


def feather_alpha(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Edge weights of a pasted crop: 1 on ``mask``, ``exp(-d^2 / 2 sigma^2)`` at distance ``d`` outside,
    0 beyond ``3 sigma`` (and everywhere outside for ``sigma == 0``).

    Returns:
        ``(h, w)`` float32 in [0, 1].
    """
    mask = np.asarray(mask, dtype=bool)
    if sigma <= 0:
        return mask.astype(np.float32)
    distance = ndimage.distance_transform_edt(~mask)
    alpha = np.exp(-(distance**2) / (2.0 * sigma**2))
    alpha[distance > FEATHER_REACH * sigma] = 0.0
    return alpha.astype(np.float32)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)``: rows ``r0:r1`` and columns ``c0:c1`` hold every pixel of a non-empty mask."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def pad_cell(cell: CellCrop, margin: int) -> CellCrop:
    """``cell`` cropped / zero-padded so that exactly ``margin`` px surround its mask's bounding box."""
    r0, r1, c0, c1 = _mask_box(cell.mask)
    h, w = cell.mask.shape
    pads = ((max(margin - r0, 0), max(r1 + margin - h, 0)), (max(margin - c0, 0), max(c1 + margin - w, 0)))
    rows = slice(r0 - margin + pads[0][0], r1 + margin + pads[0][0])
    cols = slice(c0 - margin + pads[1][0], c1 + margin + pads[1][0])

    def fit(array: np.ndarray) -> np.ndarray:
        return np.pad(array, pads)[rows, cols]

    nucleus = None if cell.nucleus is None else fit(cell.nucleus)
    return CellCrop(fit(cell.signal), fit(cell.mask), nucleus, cell.source)


def _elastic_field(
    shape: tuple[int, int], amplitude: float, smoothness: float, rng: np.random.Generator
) -> np.ndarray:
    """``(2, h, w)`` smooth random displacement (dy, dx) with peak magnitude ``amplitude`` px.

    White noise smoothed by a Gaussian of std ``smoothness`` px. The field holds no detail finer than
    that std, so the noise is drawn and smoothed on a grid ``step = smoothness / 4`` px coarse and
    interpolated (bilinearly) to full resolution: ``step**2`` times less filtering, the same kind of field.
    """
    step = max(1, int(smoothness // 4))
    coarse = (shape[0] // step + 2, shape[1] // step + 2)
    noise = rng.standard_normal((2, *coarse))
    if amplitude <= 0:
        return np.zeros((2, *shape))
    field_ = ndimage.gaussian_filter(noise, sigma=(0.0, smoothness / step, smoothness / step), mode="reflect")
    if step > 1:
        rows, cols = np.meshgrid(np.arange(shape[0]) / step, np.arange(shape[1]) / step, indexing="ij")
        field_ = np.stack([ndimage.map_coordinates(f, [rows, cols], order=1) for f in field_])
    else:
        field_ = field_[:, : shape[0], : shape[1]]
    peak = float(np.sqrt((field_**2).sum(axis=0)).max())
    return field_ * (amplitude / peak) if peak > 0 else field_


def augment_cell(
    cell: CellCrop, rng: np.random.Generator, params: CopyPasteParams, margin: int
) -> CellCrop | None:
    """Resize, rotate and elastically deform ``cell`` (signal, mask and nucleus by one map).

    The output crop holds the warped mask with ``margin`` px around its bounding box. The warp is an
    inverse map: output pixel ``q`` reads the source at ``A^-1 (q - c_out) + c_src + d(q)`` (``A`` = scale x
    rotation about the mask's centroid, ``d`` the elastic field), bilinearly for the signal; the masks are
    interpolated the same way and thresholded at 0.5.

    Returns:
        The warped crop, or None when the warped mask is empty (a degenerate draw).
    """
    lo, hi = params.scale_range
    scale = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
    angle = float(rng.uniform(0.0, 2.0 * math.pi)) if params.rotate else 0.0
    cos, sin = math.cos(angle), math.sin(angle)
    forward = scale * np.array([[cos, -sin], [sin, cos]])  # acts on (y, x)
    ys, xs = np.nonzero(cell.mask)
    centre = np.array([ys.mean(), xs.mean()])
    diameter = 2.0 * math.sqrt(ys.size / math.pi)
    amplitude = params.elastic_strength * diameter
    # the output frame: the transformed mask box, grown by the field's reach and the margin
    r0, r1, c0, c1 = _mask_box(cell.mask)
    corners = np.array([[r0, c0], [r0, c1], [r1, c0], [r1, c1]], dtype=float) - centre
    moved = corners @ forward.T
    reach = amplitude * scale + 2.0
    low = np.floor(moved.min(axis=0) - reach) - margin
    high = np.ceil(moved.max(axis=0) + reach) + margin
    shape = (int(high[0] - low[0]) + 1, int(high[1] - low[1]) + 1)
    grid = np.indices(shape, dtype=np.float64).reshape(2, -1) + low[:, None]
    source = np.linalg.inv(forward) @ grid + centre[:, None]
    source += _elastic_field(shape, amplitude, params.elastic_smoothness * diameter, rng).reshape(2, -1)

    inner = (slice(margin, shape[0] - margin), slice(margin, shape[1] - margin))
    inner_source = source.reshape(2, *shape)[(slice(None), *inner)].reshape(2, -1)

    def warp(array: np.ndarray, where: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
        values = ndimage.map_coordinates(array.astype(np.float32), where, order=1, mode="constant", cval=0.0)
        return values.reshape(out_shape)

    def warp_mask(array: np.ndarray) -> np.ndarray:
        """Masks lie inside the margin ring: warp only the inner frame (a third of the pixels at 1080 px)."""
        out = np.zeros(shape, dtype=bool)
        out[inner] = warp(array, inner_source, (shape[0] - 2 * margin, shape[1] - 2 * margin)) >= 0.5
        return out

    mask = warp_mask(cell.mask)
    if not mask.any():
        return None
    nucleus = None if cell.nucleus is None else warp_mask(cell.nucleus) & mask
    warped = CellCrop(warp(cell.signal, source, shape), mask, nucleus, cell.source)
    return pad_cell(warped, margin)


def place(cell: CellCrop, top: int, left: int, sigma: float) -> Placement:
    """``cell`` at canvas position ``(top, left)`` with its feathered contribution ``alpha * signal``."""
    contribution = (feather_alpha(cell.mask, sigma) * cell.signal).astype(np.float32)
    return Placement(int(top), int(left), contribution, cell.mask, cell.nucleus, dict(cell.source))


def _windows(
    shape: tuple[int, int], top: int, left: int, crop: tuple[int, int]
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Matching (canvas, crop) slices of a crop at ``(top, left)``, clipped to the canvas; None if outside."""
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + crop[0], shape[0]), min(left + crop[1], shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


def compose_canvas(shape: tuple[int, int], background: float, placements: Sequence[Placement]) -> np.ndarray:
    """The additive canvas: ``background`` plus every placement's contribution (clipped to the canvas).

    Returns:
        ``(H, W)`` float32 (not clipped to [0, 1]).
    """
    canvas = np.full(shape, background, dtype=np.float32)
    for p in placements:
        windows = _windows(shape, p.top, p.left, p.contribution.shape)
        if windows is not None:
            canvas[windows[0]] += p.contribution[windows[1]]
    return canvas


def instance_masks(
    shape: tuple[int, int], placements: Sequence[Placement]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-size masks of the placements.

    Returns:
        ``(amodal (N, H, W) bool, nuclei (N, H, W) bool, has_nucleus (N,) bool)``.
    """
    amodal = np.zeros((len(placements), *shape), dtype=bool)
    nuclei = np.zeros_like(amodal)
    for i, p in enumerate(placements):
        windows = _windows(shape, p.top, p.left, p.mask.shape)
        if windows is None:
            continue
        amodal[i][windows[0]] = p.mask[windows[1]]
        if p.nucleus is not None:
            nuclei[i][windows[0]] = p.nucleus[windows[1]]
    has_nucleus = np.array([p.nucleus is not None and bool(p.nucleus.any()) for p in placements], dtype=bool)
    return amodal, nuclei, has_nucleus


def visible_masks(amodal: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` visible masks of depth-ordered amodal masks: each minus the union of those after it."""
    visible = np.zeros_like(amodal, dtype=bool)
    covered = np.zeros(amodal.shape[1:], dtype=bool)
    for i in range(len(amodal) - 1, -1, -1):
        visible[i] = amodal[i] & ~covered
        covered |= amodal[i]
    return visible


def overlap_ratios(amodal: np.ndarray) -> np.ndarray:
    """``(N,)``: the fraction of each amodal mask covered by the union of the other masks."""
    masks = np.asarray(amodal, dtype=bool)
    count = masks.sum(axis=0, dtype=np.int32)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    shared = (masks & (count >= 2)).reshape(len(masks), -1).sum(axis=1)
    return shared / np.maximum(areas, 1)


class _Coverage:
    """Which canvas pixels the pasted amodal masks cover, to test the overlap bound of a new cell fast.

    ``count`` holds how many masks cover a pixel, ``owner`` the one mask covering a pixel where
    ``count == 1``; ``overlapped[k]`` is the area of mask ``k`` shared with other masks.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.count = np.zeros(shape, dtype=np.int32)
        self.owner = np.full(shape, -1, dtype=np.int32)
        self.area: list[int] = []
        self.overlapped: list[int] = []

    def _hits(self, top: int, left: int, mask: np.ndarray) -> tuple[tuple[slice, slice], int, np.ndarray]:
        window = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
        count = self.count[window]
        shared = int(np.count_nonzero(mask & (count > 0)))
        newly = self.owner[window][mask & (count == 1)]  # pixels a single cell covered until now
        added = np.bincount(newly, minlength=len(self.area)) if self.area else np.zeros(0, dtype=np.int64)
        return window, shared, added

    def allows(self, top: int, left: int, mask: np.ndarray, max_overlap: float) -> bool:
        """Whether a mask (inside the canvas) at ``(top, left)`` keeps every overlap ratio <= ``max_overlap``."""
        _, shared, added = self._hits(top, left, mask)
        if shared > max_overlap * np.count_nonzero(mask):
            return False
        if not self.area:
            return True
        return bool(np.all(np.asarray(self.overlapped) + added <= max_overlap * np.asarray(self.area)))

    def add(self, top: int, left: int, mask: np.ndarray) -> None:
        window, shared, added = self._hits(top, left, mask)
        for k in np.nonzero(added)[0]:
            self.overlapped[k] += int(added[k])
        self.owner[window][mask & (self.count[window] == 0)] = len(self.area)
        self.count[window] += mask
        self.area.append(int(np.count_nonzero(mask)))
        self.overlapped.append(shared)


def _random_position(
    mask: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int] | None:
    """A uniform ``(top, left)`` keeping the whole mask inside the canvas; None if it cannot fit."""
    r0, r1, c0, c1 = _mask_box(mask)
    if r1 - r0 > shape[0] or c1 - c0 > shape[1]:
        return None
    return int(rng.integers(-r0, shape[0] - r1 + 1)), int(rng.integers(-c0, shape[1] - c1 + 1))


def paste_cells(
    shape: tuple[int, int],
    background: float,
    draw_cell: Callable[[np.random.Generator], CellCrop],
    n_cells: int,
    rng: np.random.Generator,
    params: CopyPasteParams | None = None,
) -> PasteResult:
    """Paste up to ``n_cells`` random cells onto a blank canvas (rules in the module docstring).

    Args:
        shape: canvas ``(H, W)``.
        background: the canvas's level before any cell (the source images' background).
        draw_cell: draws one source cell with the generator (e.g. :meth:`CellBank.draw`).
        n_cells: cells wanted (>= 0).
        rng: the only source of randomness.
        params: augmentation and overlap knobs.

    Returns:
        The :class:`PasteResult`.
    """
    params = params or CopyPasteParams()
    height, width = int(shape[0]), int(shape[1])
    sigma = params.edge_sigma if params.edge_sigma is not None else thesis_edge_sigma(height, width)
    margin = math.ceil(FEATHER_REACH * sigma) + 1
    coverage = _Coverage((height, width))
    placements: list[Placement] = []
    for _ in range(int(n_cells)):
        for _try in range(params.max_tries):
            source = draw_cell(rng)
            cell = augment_cell(source, rng, params, margin) if params.augment else pad_cell(source, margin)
            position = None if cell is None else _random_position(cell.mask, (height, width), rng)
            if cell is None or position is None:
                continue
            r0, r1, c0, c1 = _mask_box(cell.mask)
            tight = cell.mask[r0:r1, c0:c1]
            top, left = position[0] + r0, position[1] + c0
            if coverage.allows(top, left, tight, params.max_overlap):
                coverage.add(top, left, tight)
                placements.append(place(cell, position[0], position[1], sigma))
                break
        else:  # max_tries rejections in a row: the canvas is full
            break
    amodal, nuclei, has_nucleus = instance_masks((height, width), placements)
    return PasteResult(
        phase=compose_canvas((height, width), background, placements),
        background=float(background),
        placements=placements,
        amodal=amodal,
        visible=visible_masks(amodal),
        nuclei=nuclei,
        has_nucleus=has_nucleus,
        n_requested=int(n_cells),
    )
