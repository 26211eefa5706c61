"""Layout of a brightfield image: how many cells, where, and which of them overlap.

A cell *overlaps* when its amodal (whole-cell) mask shares at least one pixel with another cell's; the
simulator controls the fraction ``F`` of such cells (thesis Fig. 4.6 shows about a third).

Algorithm (:func:`place_cells`):

1. **Count.** ``N = round(coverage * W * H / mean cell area)`` cells (coverage drawn per image), at least
   one, at least two when ``F > 0``.
2. **Overlap target.** ``k`` overlapping cells, drawn from ``{0, 2, 3, ..., N}`` (one cell cannot overlap
   alone) by randomised rounding of ``F * N`` between its two nearest allowed values, so ``E[k] = F N``
   exactly and the realised fraction averages to ``F`` over images even when ``N`` is small.
3. **Clusters first.** The ``k`` cells form clusters of two or three: a seed placed in free space, then
   partners placed against a random member along a random direction, kept when they share
   ``overlap_share`` of the smaller cell with their own cluster and touch no other cell.
4. **Isolated cells.** The other ``N - k`` cells go to free space and share no pixel with any cell
   (touching is allowed). Candidate centres are drawn among the pixels (of a 2-px grid) farther from
   every placed cell than 0.8 times the new cell's inscribed radius (one distance transform per cell),
   so dense images still fill; every candidate is then checked exactly on the masks.

Every cell keeps its nucleus uncovered: no cell lies over another cell's nucleus, and every nucleus lies
wholly inside the image. Overlaps are therefore between cytoplasm, as in the thesis' images, and a
nucleus is always fully visible whatever the depth order. A cell that finds no valid position in
``placement_tries`` tries is dropped (its cluster may end smaller); the realised fraction is
:attr:`Layout.overlap_fraction`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cytobench.simulate.brightfield_params import BrightfieldParams, uniform
from cytobench.simulate.brightfield_shapes import CellRaster, CellShape, draw_cell_shape, rasterize_cell

__all__ = ["Layout", "cell_capacity", "overlap_count", "place_cells"]

_SHAPE_REDRAW = 10  # failed tries before a cell's shape is redrawn (a smaller one may fit)
_GRID = 2  # sub-grid step of the free-space distance map (candidate centres only; checks are exact)


@dataclass(frozen=True)
class Layout:
    """Placed cells and their clusters.

    Attributes:
        cells: the cells, in placement order.
        cluster: (N,) int cluster index of every cell; a cluster of one is an isolated cell.
        requested: the overlapping-cell count ``k`` drawn for this image.
    """

    cells: list[CellRaster]
    cluster: np.ndarray
    requested: int

    @property
    def overlapping(self) -> np.ndarray:
        """(N,) bool: the cell's cluster has two or more cells (so it overlaps another cell)."""
        sizes = np.bincount(self.cluster, minlength=int(self.cluster.max(initial=-1)) + 1)
        return sizes[self.cluster] >= 2

    @property
    def overlap_fraction(self) -> float:
        """Fraction of the cells that overlap another cell (0 for no cells)."""
        return float(self.overlapping.mean()) if len(self.cells) else 0.0


def cell_capacity(width: int, height: int, params: BrightfieldParams) -> float:
    """How many mean-sized cells the image area holds (its area over the mean cell area)."""
    return width * height / params.mean_cell_area


def overlap_count(rng: np.random.Generator, n_cells: int, fraction: float) -> int:
    """``k`` in ``{0, 2, ..., n_cells}`` with ``E[k] = fraction * n_cells`` (step 2 of the module docstring)."""
    x = fraction * n_cells
    lo, hi = (0, 2) if x < 2 else (math.floor(x), math.ceil(x))
    if hi == lo:
        return int(lo)
    return int(hi if rng.random() < (x - lo) / (hi - lo) else lo)


def _cluster_sizes(rng: np.random.Generator, k: int) -> list[int]:
    """Split ``k`` (0 or >= 2) into clusters of two or three cells."""
    sizes = []
    while k > 0:
        size = k if k in (2, 3) else 2 if k == 4 else int(rng.integers(2, 4))
        sizes.append(size)
        k -= size
    return sizes


def _reach(shape: CellShape, direction: float) -> float:
    """Largest extent of the outline from the centre along ``direction`` (radians)."""
    return float((shape.outline @ np.array([math.cos(direction), math.sin(direction)])).max())


class _Canvas:
    """Occupancy of the image while cells are placed: cluster labels, nucleus pixels, cover counts."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.owner = np.zeros((height, width), dtype=np.int32)  # cluster index + 1 of a covering cell; 0 free
        self.nuclei = np.zeros((height, width), dtype=bool)
        self.cover = np.zeros((height, width), dtype=np.uint16)

    def add(self, cell: CellRaster, cluster: int) -> None:
        """Record a placed cell of ``cluster``."""
        window = cell.window
        self.owner[window][cell.cell] = cluster + 1
        self.nuclei[window] |= cell.nucleus
        self.cover[window] += cell.cell

    def free_distance(self) -> np.ndarray:
        """(ceil(H / 2), ceil(W / 2)) float32 distance in px from every other pixel to the nearest covered
        pixel of the same sub-grid (a cheap candidate filter: image edges are not walls)."""
        free = (self.owner[::_GRID, ::_GRID] == 0).view(np.uint8)
        distance = cv2.distanceTransform(free, cv2.DIST_L2, 3)
        np.minimum(distance, 1e6, out=distance)  # no covered pixel at all: FLT_MAX, which would overflow
        return distance * _GRID

    def fits_alone(self, cell: CellRaster) -> bool:
        """The cell shares no pixel with any placed cell."""
        return not self.owner[cell.window][cell.cell].any()

    def shared_with(
        self, cell: CellRaster, cluster: int, share: tuple[float, float], partner_area: int
    ) -> bool:
        """The cell overlaps only ``cluster``, by a share of the smaller cell in ``share``, and covers no
        nucleus while its own nucleus lies on free pixels."""
        window = cell.window
        under = self.owner[window][cell.cell]
        if (under[under > 0] != cluster + 1).any():
            return False
        shared = int((under > 0).sum())
        if not shared or not share[0] <= shared / min(cell.area, partner_area) <= share[1]:
            return False
        if (self.nuclei[window] & cell.cell).any():
            return False
        return not (self.cover[window] > 0)[cell.nucleus].any()


def _place_free(rng: np.random.Generator, canvas: _Canvas, params: BrightfieldParams) -> CellRaster | None:
    """A cell sharing no pixel with any placed cell, or None after ``placement_tries`` tries."""
    distance = canvas.free_distance()
    spots = np.empty(0, dtype=np.int64)
    for attempt in range(params.placement_tries):
        if attempt % _SHAPE_REDRAW == 0:
            shape = draw_cell_shape(rng, params)
            inscribed = float(np.hypot(shape.outline[:, 0], shape.outline[:, 1]).min())
            spots = np.flatnonzero(distance >= 0.8 * inscribed)  # the cell's core disc would be free
        if spots.size == 0:
            continue
        row, col = divmod(int(spots[rng.integers(spots.size)]), distance.shape[1])
        cx, cy = _GRID * (col + rng.random()), _GRID * (row + rng.random())
        cell = rasterize_cell(shape, cx, cy, canvas.width, canvas.height)
        if cell is not None and canvas.fits_alone(cell):
            return cell
    return None


def _place_partner(
    rng: np.random.Generator,
    canvas: _Canvas,
    members: list[CellRaster],
    cluster: int,
    params: BrightfieldParams,
) -> CellRaster | None:
    """A cell overlapping a member of ``cluster`` (and nothing else), or None after the tries."""
    shape = draw_cell_shape(rng, params)
    for attempt in range(params.placement_tries):
        if attempt and attempt % _SHAPE_REDRAW == 0:
            shape = draw_cell_shape(rng, params)
        anchor = members[int(rng.integers(len(members)))]  # the member to overlap
        direction = rng.uniform(0.0, 2.0 * math.pi)
        # closer than touching along this direction (factor 1), so the outlines cross
        distance = rng.uniform(0.55, 1.0) * (
            _reach(anchor.shape, direction) + _reach(shape, direction + math.pi)
        )
        cx = anchor.centre[0] + distance * math.cos(direction)
        cy = anchor.centre[1] + distance * math.sin(direction)
        if not (0.0 <= cx < canvas.width and 0.0 <= cy < canvas.height):
            continue
        cell = rasterize_cell(shape, cx, cy, canvas.width, canvas.height)
        if cell is not None and canvas.shared_with(cell, cluster, params.overlap_share, anchor.area):
            return cell
    return None


def place_cells(
    rng: np.random.Generator, width: int, height: int, overlap_fraction: float, params: BrightfieldParams
) -> Layout:
    """Lay out one image's cells (module docstring).

    Args:
        rng: the image's generator.
        width / height: image size in px.
        overlap_fraction: requested fraction ``F`` of overlapping cells, in [0, 1].
        params: the simulator's knobs.

    Returns:
        The layout (cells in placement order, their clusters and the drawn target ``k``).
    """
    n_cells = max(1, round(uniform(rng, params.coverage) * cell_capacity(width, height, params)))
    if overlap_fraction > 0:
        n_cells = max(n_cells, 2)
    k = overlap_count(rng, n_cells, overlap_fraction)
    canvas = _Canvas(width, height)
    cells: list[CellRaster] = []
    clusters: list[int] = []
    plans = _cluster_sizes(rng, k) + [1] * (n_cells - k)  # clusters first, while there is room
    for index, size in enumerate(plans):
        members: list[CellRaster] = []
        seed = _place_free(rng, canvas, params)
        if seed is None:
            continue
        canvas.add(seed, index)
        members.append(seed)
        for _ in range(size - 1):
            partner = _place_partner(rng, canvas, members, index, params)
            if partner is not None:
                canvas.add(partner, index)
                members.append(partner)
        cells += members
        clusters += [index] * len(members)
    return Layout(cells, np.asarray(clusters, dtype=np.int64), k)
