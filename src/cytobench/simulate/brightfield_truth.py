"""Truth of a brightfield image: depth order, visible masks, nuclei, semantic and overlap maps.

Rules (the data contract of the brightfield task):

* **Depth.** Every cell gets a random depth rank; a cell with a higher rank lies above. The cell on top
  of an overlap is fully visible; the **visible mask** of a cell is its amodal (whole-cell) mask minus
  the amodal masks of the cells above it.
* **Nucleus mask** = the nucleus AND the visible part of its cell. The layout never puts a cell over a
  nucleus (:mod:`cytobench.simulate.brightfield_layout`), so in simulated images this is the whole
  nucleus; the rule stands for any layout.
* **Semantic map** (uint8): 0 background, 1 cytoplasm (cell, not nucleus), 2 nucleus, 3 border: the inner
  border, ``border_px`` wide, of every cell's *visible* mask (4-connected, by
  :func:`cytobench.data.rasterize.inner_border`; the image edge is not a border), painted last.
* **Overlap map** (uint8, 0/1): pixels covered by the amodal masks of two or more cells.

All per-cell masks are kept on the cell's crop (:class:`~cytobench.simulate.brightfield_shapes.CellRaster`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cytobench.data.rasterize import inner_border
from cytobench.simulate.brightfield_shapes import CellRaster

__all__ = ["SEMANTIC_CLASSES", "BrightfieldTruth", "build_truth"]

#: Classes of the semantic map, by value.
SEMANTIC_CLASSES = ("background", "cytoplasm", "nucleus", "border")


@dataclass(frozen=True)
class BrightfieldTruth:
    """Per-cell visible masks and nuclei (on each cell's crop) and the two per-pixel maps.

    Attributes:
        depth: (N,) int rank of every cell, 0 = bottom.
        visible: per cell, (h, w) bool visible mask on its crop.
        nuclei: per cell, (h, w) bool nucleus mask (nucleus AND visible cell) on its crop.
        semantic: (H, W) uint8 class map (:data:`SEMANTIC_CLASSES`).
        overlap: (H, W) uint8, 1 where two or more amodal cell masks cover the pixel.
    """

    depth: np.ndarray
    visible: list[np.ndarray]
    nuclei: list[np.ndarray]
    semantic: np.ndarray
    overlap: np.ndarray


def build_truth(
    cells: list[CellRaster], depth: np.ndarray, width: int, height: int, border_px: int = 2
) -> BrightfieldTruth:
    """Visible masks, nuclei, semantic and overlap maps of ``cells`` stacked by ``depth`` (module docstring).

    Args:
        cells: the placed cells.
        depth: (N,) distinct depth ranks (higher = above).
        width / height: image size.
        border_px: width of the border class in pixels (>= 1).

    Returns:
        The truth.
    """
    depth = np.asarray(depth, dtype=np.int64)
    top = np.zeros((height, width), dtype=np.int32)  # 1 + index of the topmost cell; 0 = background
    cover = np.zeros((height, width), dtype=np.uint16)
    for index in np.argsort(depth, kind="stable"):  # bottom first: cells above paint over
        cell = cells[index]
        top[cell.window][cell.cell] = index + 1
        cover[cell.window] += cell.cell
    visible = [top[cell.window] == index + 1 for index, cell in enumerate(cells)]
    nuclei = [cell.nucleus & seen for cell, seen in zip(cells, visible)]
    semantic = (top > 0).astype(np.uint8)
    for cell, nucleus in zip(cells, nuclei):
        semantic[cell.window][nucleus] = 2
    for cell, seen in zip(cells, visible):
        semantic[cell.window][inner_border(seen, border_px)] = 3
    return BrightfieldTruth(depth, visible, nuclei, semantic, (cover >= 2).astype(np.uint8))
