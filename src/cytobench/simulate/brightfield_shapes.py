"""Adherent-cell shapes for the brightfield simulator: outline, nucleus, and their rasters.

A cell is drawn in a *round frame*: its outline is a smooth random radial profile
``r(theta) = R (1 + sum_k a_k cos(k theta + phi_k))`` (harmonics 2-5, star-shaped around the origin) and
its nucleus a disc of radius ``q * min r`` at most ``(0.85 - q) * min r`` from the origin. Because the
outline is star-shaped, every point closer to the origin than ``min r`` is inside it, so the disc lies
inside the cell with a margin of at least ``0.15 min r``. Both are then stretched by ``(sqrt(e),
1 / sqrt(e))`` (elongation ``e``, area kept) and rotated by a random angle: an affine map keeps the
nucleus inside, so the elongated nucleus follows the cell's long axis as in thesis Figs. 4.1-4.3.

Coordinates follow COCO: pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``; a polygon is
rasterised at pixel centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cytobench.simulate.brightfield_params import BrightfieldParams, uniform

__all__ = ["CellRaster", "CellShape", "draw_cell_shape", "rasterize_cell"]

_OUTLINE_POINTS = 96
_SUBPIXEL_BITS = 4  # fixed-point bits of cv2.fillPoly: vertices at 1/16 px
_MARGIN_PX = 2  # background pixels kept around a cell's crop (its inner border needs an outside)


@dataclass(frozen=True)
class CellShape:
    """One cell around its centre ``(0, 0)``.

    Attributes:
        outline: (P, 2) float64 polygon ``(x, y)`` of the cell.
        nucleus: (Q, 2) float64 polygon of its nucleus (inside the outline by construction).
        reach: largest distance of an outline vertex from the centre (px).
    """

    outline: np.ndarray
    nucleus: np.ndarray
    reach: float


@dataclass(frozen=True)
class CellRaster:
    """A shape placed at a centre and rasterised on its crop of the image.

    Attributes:
        shape: the cell's shape.
        centre: ``(x, y)`` in image pixels.
        x0, y0: top-left pixel of the crop.
        cell: (h, w) bool cell (amodal) mask on the crop, clipped to the image.
        nucleus: (h, w) bool nucleus mask on the crop.
    """

    shape: CellShape
    centre: tuple[float, float]
    x0: int
    y0: int
    cell: np.ndarray
    nucleus: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices of the crop in the image."""
        h, w = self.cell.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    @property
    def area(self) -> int:
        """Cell pixels inside the image."""
        return int(self.cell.sum())


def draw_cell_shape(rng: np.random.Generator, params: BrightfieldParams) -> CellShape:
    """A random cell shape (module docstring) with its radius, elongation and nucleus drawn from ``params``."""
    radius = uniform(rng, params.cell_radius_px)
    theta = np.linspace(0.0, 2.0 * math.pi, _OUTLINE_POINTS, endpoint=False)
    profile = np.ones_like(theta)
    for k in (2, 3, 4, 5):  # low harmonics only: smooth lobes, no spikes
        amp = rng.normal(0.0, params.roughness / math.sqrt(k - 1))
        profile += amp * np.cos(k * theta + rng.uniform(0.0, 2.0 * math.pi))
    profile = np.maximum(profile, 0.4)  # a deep negative lobe would pinch the cell
    round_outline = radius * profile[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    inner = radius * float(profile.min())
    q = uniform(rng, params.nucleus_scale)
    offset = inner * (0.85 - q) * math.sqrt(rng.random())
    angle = rng.uniform(0.0, 2.0 * math.pi)
    centre = offset * np.array([math.cos(angle), math.sin(angle)])
    disc = q * inner * np.stack([np.cos(theta), np.sin(theta)], axis=1) + centre
    stretch = math.sqrt(uniform(rng, params.elongation))
    turn = rng.uniform(0.0, 2.0 * math.pi)
    affine = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]]) @ np.diag(
        [stretch, 1.0 / stretch]
    )
    outline = round_outline @ affine.T
    return CellShape(outline, disc @ affine.T, float(np.hypot(outline[:, 0], outline[:, 1]).max()))


def _fill(polygon: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """(height, width) bool raster of an image-frame polygon on the crop at ``(x0, y0)``."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    vertices = np.round((polygon - (x0 + 0.5, y0 + 0.5)) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(canvas, [vertices], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return canvas.view(bool)


def rasterize_cell(shape: CellShape, cx: float, cy: float, width: int, height: int) -> CellRaster | None:
    """Place ``shape`` at ``(cx, cy)`` and rasterise cell and nucleus on their crop.

    Returns:
        The raster, or None when the nucleus is not wholly inside the image (a cell must show its nucleus)
        or the cell covers no pixel.
    """
    nucleus = shape.nucleus + (cx, cy)
    if nucleus[:, 0].min() < 0.5 or nucleus[:, 1].min() < 0.5:
        return None
    if nucleus[:, 0].max() > width - 0.5 or nucleus[:, 1].max() > height - 0.5:
        return None
    outline = shape.outline + (cx, cy)
    x0 = max(math.floor(outline[:, 0].min()) - _MARGIN_PX, 0)
    y0 = max(math.floor(outline[:, 1].min()) - _MARGIN_PX, 0)
    x1 = min(math.ceil(outline[:, 0].max()) + _MARGIN_PX + 1, width)
    y1 = min(math.ceil(outline[:, 1].max()) + _MARGIN_PX + 1, height)
    cell = _fill(outline, x0, y0, y1 - y0, x1 - x0)
    nuc = _fill(nucleus, x0, y0, y1 - y0, x1 - x0) & cell  # rounding at 1/16 px cannot leave the cell
    if not nuc.any():
        return None
    return CellRaster(shape, (float(cx), float(cy)), x0, y0, cell, nuc)
