"""Brightfield / phase-contrast images of adherent cells with known truth (SEU-Net thesis, Sec. 4.1).

Each sample is what the thesis' microscope gives (x63, 1080 x 1080 by default): a **lower** and an
**upper brightfield focal plane** and a **phase-contrast** image of the same cells, each an 8-bit PNG.
Any size with room for one mean cell works (89 px square; 126 px when cells must overlap). Cells are
irregular, elongated adherent bodies with one nucleus, dense enough to touch and overlap; a fraction
``overlap_fraction`` of them (default 0.3, about what thesis Fig. 4.6 shows) overlaps at least one
other cell, measured on the amodal masks.

Model (knobs: :class:`~cytobench.simulate.brightfield_params.BrightfieldParams`):

* **Shapes** (:mod:`~cytobench.simulate.brightfield_shapes`): smooth random radial outline, elongation
  1.2-2.6, random orientation, equivalent radius 40-60 px; an elongated nucleus inside, following the
  cell's long axis.
* **Layout** (:mod:`~cytobench.simulate.brightfield_layout`): the cell count follows a coverage of
  40-55 % of the image; overlapping cells come in clusters of two or three sharing 4-25 % of the smaller
  cell; the overlapping count is drawn so that its mean is ``overlap_fraction`` of the cells. No cell
  covers another's nucleus; every nucleus lies inside the image (cells may be cut by the edge).
* **Optics** (:mod:`~cytobench.simulate.brightfield_render`): phase contrast is linear in the summed
  phase (overlaps add) with a bright halo; each brightfield plane is a saturating defocus (lens)
  response, dark-rimmed in the lower plane and bright-rimmed in the upper one, where stacked cells do
  not add. Then uneven illumination, Poisson shot noise (brightfield noisier than phase contrast, as in
  the thesis) and unannotated debris.
* **Truth** (:mod:`~cytobench.simulate.brightfield_truth`): random depth order; visible mask = amodal
  mask minus the cells above; nucleus mask = nucleus AND visible cell (in practice the whole nucleus);
  semantic map (0 background, 1 cytoplasm, 2 nucleus, 3 border of the visible masks, 2 px) and overlap
  map (two or more amodal masks).

Files (in ``out_dir/images``, the data set's ``root``), per image ``bf_00000``: ``bf_00000_bf_lower.png``,
``bf_00000_bf_upper.png``, ``bf_00000_phase.png``, ``bf_00000_semantic.png``, ``bf_00000_overlap.png``.
COCO json: categories 1 ``cell`` and 2 ``nucleus``; each image has ``file_name`` (the lower plane),
``planes`` (lower, upper, phase), ``maps`` (``semantic``, ``overlap``), ``n_cells`` and the realised
``overlap_fraction``; a cell has an RLE ``segmentation`` (visible), an RLE ``amodal_segmentation``, the
box and area of its visible mask, ``depth`` (0 = bottom) and ``nucleus_id``; a nucleus has an RLE
``segmentation`` and ``cell_id``. :class:`~cytobench.data.coco_dataset.CocoDetectionDataset` reads it
with ``planes=[0, 1]`` (the two brightfield planes), ``with_semantic=True``, ``maps=["overlap"]`` and
``with_amodal_masks=True``.

Randomness comes only from ``numpy.random.default_rng([seed, image_index])``: image ``i`` is the same
for a seed whatever the number of images, and images can be made in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.io.coco_convert import encode_mask
from cytobench.io.images import write_image
from cytobench.simulate.brightfield_layout import Layout, cell_capacity, place_cells
from cytobench.simulate.brightfield_params import BrightfieldParams, Optics, draw_optics, uniform
from cytobench.simulate.brightfield_render import (
    acquire,
    cell_phase,
    debris_phase,
    illumination_field,
    phase_map,
    render_brightfield_planes,
    render_phase_contrast,
)
from cytobench.simulate.brightfield_truth import SEMANTIC_CLASSES, BrightfieldTruth, build_truth
from cytobench.simulate.common import (
    check_n_images,
    check_out_dir,
    check_seed,
    check_size,
    check_val_fraction,
    save_simulated_coco,
)

__all__ = [
    "CATEGORIES",
    "BrightfieldParams",
    "BrightfieldSample",
    "check_brightfield_request",
    "render_brightfield_sample",
    "render_layout",
    "simulate_brightfield",
]

CATEGORIES: list[dict[str, Any]] = [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}]
BORDER_PX = 2  # width of the semantic border class
_MIN_SIDE = 64
_MAX_SIDE = 8192
_PLANES = ("bf_lower", "bf_upper", "phase")


@dataclass(frozen=True)
class BrightfieldSample:
    """One simulated sample in memory.

    Attributes:
        lower / upper / phase: (H, W) uint8 images (lower and upper brightfield plane, phase contrast).
        layout: the placed cells (amodal masks and nuclei on their crops) and their clusters.
        truth: depth order, visible masks, nuclei, semantic and overlap maps.
        optics: the image's optics.
    """

    lower: np.ndarray
    upper: np.ndarray
    phase: np.ndarray
    layout: Layout
    truth: BrightfieldTruth
    optics: Optics


def check_brightfield_request(
    width: int, height: int, overlap_fraction: float, params: BrightfieldParams | None = None
) -> None:
    """Refuse a request the image cannot hold.

    Raises:
        ValueError: ``overlap_fraction`` is not in [0, 1]; the image is too small for one mean-sized cell;
            or ``overlap_fraction > 0`` while it holds room for only one.
    """
    params = params or BrightfieldParams()
    if isinstance(overlap_fraction, bool) or not isinstance(overlap_fraction, int | float | np.floating):
        raise ValueError(f"overlap_fraction must be a number in [0, 1], got {overlap_fraction!r}")
    if not 0.0 <= float(overlap_fraction) <= 1.0:  # NaN fails too
        raise ValueError(f"overlap_fraction must be in [0, 1], got {overlap_fraction!r}")
    room = cell_capacity(width, height, params)
    cell = f"a mean cell covers {params.mean_cell_area:,.0f} px^2"
    if room < 1.0:
        raise ValueError(f"size {width}x{height} is too small for even one cell ({cell})")
    if overlap_fraction > 0 and room < 2.0:
        raise ValueError(
            f"overlap_fraction {overlap_fraction} needs two cells, but a {width}x{height} image holds room "
            f"for only one ({cell}); use a larger size or overlap_fraction 0"
        )


def render_brightfield_sample(
    rng: np.random.Generator,
    width: int,
    height: int,
    overlap_fraction: float = 0.3,
    params: BrightfieldParams | None = None,
) -> BrightfieldSample:
    """Simulate one sample in memory (module docstring); ``rng`` is its only randomness.

    Raises:
        ValueError: see :func:`check_brightfield_request`.
    """
    params = params or BrightfieldParams()
    check_brightfield_request(width, height, overlap_fraction, params)
    layout = place_cells(rng, width, height, float(overlap_fraction), params)
    return render_layout(rng, layout, width, height, params)


def render_layout(
    rng: np.random.Generator, layout: Layout, width: int, height: int, params: BrightfieldParams
) -> BrightfieldSample:
    """Images and truth of laid-out cells: phases, debris, optics, illumination, noise, depth order."""
    phases = [cell_phase(rng, cell, params) for cell in layout.cells]
    phase = phase_map(width, height, layout.cells, phases) + debris_phase(rng, width, height, params)
    optics = draw_optics(rng, params)
    lower, upper = render_brightfield_planes(phase, optics)
    contrast = render_phase_contrast(phase, optics)
    amplitude = uniform(rng, params.illumination)
    lamp = illumination_field(rng, width, height, amplitude)
    bf_photons = uniform(rng, params.bf_photons) / optics.bf_background
    pc_photons = uniform(rng, params.phase_photons)
    pc_lamp = illumination_field(rng, width, height, 0.5 * amplitude)  # computed phase: flatter field
    images = (
        acquire(rng, lower, lamp, bf_photons),
        acquire(rng, upper, lamp, bf_photons),
        acquire(rng, contrast, pc_lamp, pc_photons),
    )
    depth = rng.permutation(len(layout.cells))
    truth = build_truth(layout.cells, depth, width, height, BORDER_PX)
    return BrightfieldSample(*images, layout=layout, truth=truth, optics=optics)


def simulate_brightfield(
    n_images: int,
    out_dir: str | Path,
    size: int | Sequence[int] = 1080,
    seed: int = 0,
    overlap_fraction: float = 0.3,
    val_fraction: float | None = None,
    params: BrightfieldParams | None = None,
    pixel_scale: float = 1.0,
) -> Path:
    """Simulate ``n_images`` labelled brightfield samples into ``out_dir`` (module docstring).

    Args:
        n_images: number of samples (>= 1).
        out_dir: output folder; images go to ``out_dir/images`` (the data set's ``root``).
        size: an int for a square or ``(W, H)``; each side in [64, 8192] px.
        seed: random seed (>= 0).
        overlap_fraction: requested fraction of cells overlapping another cell, in [0, 1].
        val_fraction: None writes ``annotations.json``; a fraction in (0, 1) writes ``train.json`` and
            ``val.json`` (the last ``round(n * val_fraction)`` images, at least one, form ``val``).
        params: simulator knobs.
        pixel_scale: magnification relative to the thesis' x63 images (``params`` lengths are in their
            pixels): 0.5 draws every cell, halo and blur at half the size in pixels, so the same ``size``
            holds about four times as many cells (smaller cells for LIVECell's small / medium areas).

    Returns:
        Path of ``annotations.json``, or of ``train.json`` (``val.json`` lies beside it) when splitting.

    Raises:
        ValueError: an argument is out of range, or the image cannot hold the request (the message says
            which); nothing is written then.
    """
    width, height = check_size(size, min_side=_MIN_SIDE, max_side=_MAX_SIDE)
    n_images = check_n_images(n_images)
    seed = check_seed(seed)
    check_val_fraction(val_fraction, n_images)
    params = (params or BrightfieldParams()).scaled(float(pixel_scale))
    check_brightfield_request(width, height, overlap_fraction, params)
    out_dir = check_out_dir(out_dir)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(n_images):
        sample = render_brightfield_sample(
            np.random.default_rng([seed, index]), width, height, overlap_fraction, params
        )
        stem = f"bf_{index:05d}"
        files = {name: f"{stem}_{name}.png" for name in (*_PLANES, "semantic", "overlap")}
        for name, array in zip(
            files, (sample.lower, sample.upper, sample.phase, sample.truth.semantic, sample.truth.overlap)
        ):
            write_image(out_dir / "images" / files[name], array)
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": files["bf_lower"],
                "width": width,
                "height": height,
                "planes": [files[name] for name in _PLANES],
                "maps": {"semantic": files["semantic"], "overlap": files["overlap"]},
                "n_cells": len(sample.layout.cells),
                "overlap_fraction": round(sample.layout.overlap_fraction, 4),
            }
        )
        annotations += _annotations(sample, image_id, len(annotations) + 1, width, height)
    info = {
        "description": "cytobench brightfield simulator (lower / upper brightfield planes, phase contrast)",
        "version": "1",
        "overlap_fraction_requested": float(overlap_fraction),
        "semantic_classes": list(SEMANTIC_CLASSES),
        "border_px": BORDER_PX,
    }
    dataset = {"info": info, "images": images, "annotations": annotations, "categories": CATEGORIES}
    return save_simulated_coco(out_dir, dataset, val_fraction)


def _box(mask: np.ndarray, x0: int, y0: int) -> list[int]:
    """COCO ``[x, y, w, h]`` of a non-empty crop mask at ``(x0, y0)``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _annotations(
    sample: BrightfieldSample, image_id: int, first_id: int, width: int, height: int
) -> list[dict[str, Any]]:
    """COCO annotations of one sample: per cell, the cell (id ``a``) then its nucleus (id ``a + 1``)."""
    canvas = np.zeros((height, width), dtype=np.uint8)  # one full-size buffer for the RLE encoder

    def rle(crop: np.ndarray, window: tuple[slice, slice]) -> dict[str, Any]:
        canvas[window] = crop
        code = encode_mask(canvas)
        canvas[window] = 0
        return code

    out: list[dict[str, Any]] = []
    truth = sample.truth
    for k, cell in enumerate(sample.layout.cells):
        cell_id, nucleus_id = first_id + 2 * k, first_id + 2 * k + 1
        seen, nucleus = truth.visible[k], truth.nuclei[k]
        out.append(
            {
                "id": cell_id,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": rle(seen, cell.window),
                "amodal_segmentation": rle(cell.cell, cell.window),
                "bbox": _box(seen, cell.x0, cell.y0),
                "area": int(seen.sum()),
                "iscrowd": 0,
                "depth": int(truth.depth[k]),
                "nucleus_id": nucleus_id,
            }
        )
        out.append(
            {
                "id": nucleus_id,
                "image_id": image_id,
                "category_id": 2,
                "segmentation": rle(nucleus, cell.window),
                "bbox": _box(nucleus, cell.x0, cell.y0),
                "area": int(nucleus.sum()),
                "iscrowd": 0,
                "cell_id": cell_id,
            }
        )
    return out
