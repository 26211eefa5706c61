"""Write a synthetic set: copy-paste phase images (and their pix2pix brightfield planes) as a COCO set.

The output follows the brightfield data contract, so any brightfield data config reads it:

* ``OUT/train.json`` and ``OUT/val.json`` (the last ``round(n * val_fraction)`` images, as every
  simulator splits; one image or ``val_fraction = 0``: ``train.json`` only), images in ``OUT/images/``.
* Categories ``{"id": 1, "name": "cell"}``, ``{"id": 2, "name": "nucleus"}``.
* Per image ``synth_NNNNN``: with a translator (pix2pix), ``planes = [_bf_lower.png, _bf_upper.png,
  _phase.png]`` and ``file_name`` the lower plane; without one, a **phase-domain set**:
  ``planes = [_phase.png]`` and ``file_name`` the phase image (``info.phase_only`` is true; train on it
  with ``planes: [0]``). ``maps = {"semantic": _semantic.png, "overlap": _overlap.png}``.
* Cells (category 1) in paste order, the last on top (``depth`` = paste index): ``segmentation`` the
  visible mask (RLE), ``amodal_segmentation`` the whole cell, ``bbox`` / ``area`` of the visible mask,
  ``nucleus_id``, and ``source`` (the image and cell it was cut from). Nuclei (category 2): the cell's
  nucleus clipped to the cell's visible part, with ``cell_id``; a nucleus wholly hidden by cells above is
  not annotated and its cell's ``nucleus_id`` is null.
* Semantic map (uint8): 0 background, 1 cytoplasm (visible cell, not nucleus), 2 nucleus, 3 border (the
  inner border of every visible cell mask, painted last, as wide as the source set's ``info.border_px``:
  2 px for ``cytobench simulate brightfield``, the default when the source does not say). Overlap map (uint8 0/1): pixels under the
  amodal masks of two or more cells.

The phase canvas is clipped to [0, 1] and written as 8-bit PNG like the source planes. Image ``i``
depends only on ``(seed, i)`` (and the source set and checkpoint): same arguments, same files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.data.rasterize import inner_border, overlap_map
from cytobench.io.coco import save_coco
from cytobench.io.coco_convert import encode_masks
from cytobench.io.images import write_image
from cytobench.simulate.common import (
    check_n_images,
    check_out_dir,
    check_seed,
    check_size,
    save_simulated_coco,
    val_count,
)
from cytobench.synth.cells import CellBank
from cytobench.synth.copy_paste import CopyPasteParams, PasteResult, paste_cells, thesis_edge_sigma

__all__ = [
    "CATEGORIES",
    "SEMANTIC_CLASSES",
    "SynthSummary",
    "Translator",
    "cell_annotations",
    "make_synthetic_set",
    "semantic_classes",
]

CATEGORIES: list[dict[str, Any]] = [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}]
SEMANTIC_CLASSES = ("background", "cytoplasm", "nucleus", "border")
#: border width (px) when the source set's info does not state one (the brightfield simulator's)
DEFAULT_BORDER_PX = 2
#: phase (H, W) float in [0, 1] and a seed -> the two brightfield planes (2, H, W) float in [0, 1]
Translator = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class SynthSummary:
    """What :func:`make_synthetic_set` wrote.

    Attributes:
        json_path: ``train.json`` (``val.json`` beside it when split).
        n_images / n_cells: images and pasted cells.
        n_short: images that got fewer cells than requested (the overlap bound filled the canvas).
        phase_only: no brightfield planes (no translator).
    """

    json_path: Path
    n_images: int
    n_cells: int
    n_short: int
    phase_only: bool


def semantic_classes(
    visible: np.ndarray, nuclei: np.ndarray, border_px: int = DEFAULT_BORDER_PX
) -> np.ndarray:
    """The semantic map (classes in the module docstring) of ``(N, H, W)`` visible cells and nuclei."""
    height, width = visible.shape[1:]
    classes = np.zeros((height, width), dtype=np.uint8)
    classes[visible.any(axis=0)] = 1
    classes[nuclei.any(axis=0)] = 2
    for mask in visible:
        classes[inner_border(mask, border_px)] = 3
    return classes


def _box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def cell_annotations(result: PasteResult, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of a paste result: each cell, then its nucleus (rules in the module docstring).

    Args:
        result: the copy-paste image.
        image_id: its COCO id.
        first_id: id of the first annotation; ids count up from it.
    """
    if result.n_pasted == 0:
        return []
    nuclei = result.nuclei & result.visible
    visible_rles = encode_masks(result.visible)
    amodal_rles = encode_masks(result.amodal)
    nucleus_rles = encode_masks(nuclei)
    annotations: list[dict[str, Any]] = []
    next_id = first_id
    for depth, placement in enumerate(result.placements):
        cell_id, next_id = next_id, next_id + 1
        has_nucleus = bool(nuclei[depth].any())
        cell = {
            "id": cell_id,
            "image_id": image_id,
            "category_id": 1,
            "segmentation": visible_rles[depth],
            "amodal_segmentation": amodal_rles[depth],
            "bbox": _box(result.visible[depth]),
            "area": int(result.visible[depth].sum()),
            "iscrowd": 0,
            "nucleus_id": next_id if has_nucleus else None,
            "depth": depth,
            "source": placement.source,
        }
        annotations.append(cell)
        if has_nucleus:
            annotations.append(
                {
                    "id": next_id,
                    "image_id": image_id,
                    "category_id": 2,
                    "segmentation": nucleus_rles[depth],
                    "bbox": _box(nuclei[depth]),
                    "area": int(nuclei[depth].sum()),
                    "iscrowd": 0,
                    "cell_id": cell_id,
                }
            )
            next_id += 1
    return annotations


def _seed_of(seed: int, index: int) -> int:
    """A 32-bit seed for image ``index``'s translation noise (pix2pix dropout)."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])


def make_synthetic_set(
    bank: CellBank,
    out_dir: str | Path,
    n_images: int,
    *,
    seed: int = 0,
    size: int | tuple[int, int] | None = None,
    cells_per_image: int | None = None,
    params: CopyPasteParams | None = None,
    translator: Translator | None = None,
    val_fraction: float = 0.2,
    progress: Callable[[int, int], None] | None = None,
    info: dict[str, Any] | None = None,
) -> SynthSummary:
    """Build ``n_images`` copy-paste images from ``bank``'s cells and write them (module docstring).

    Args:
        bank: the source cells.
        out_dir: output folder (the caller refuses to replace an existing set).
        n_images: images (>= 1).
        seed: random seed (>= 0); image ``i`` uses ``numpy.random.default_rng([seed, i])``.
        size: canvas ``(W, H)`` (or one int for a square); None = the source images' size.
        cells_per_image: cells asked for per image; None = Poisson with the source's mean count scaled by
            the canvas area.
        params: copy-paste knobs.
        translator: phase -> brightfield planes (e.g. :func:`cytobench.synth.pix2pix.Translator`); None
            writes the phase-domain set only.
        val_fraction: fraction of images in ``val.json``, in [0, 1) (0: ``train.json`` only).
        progress: called as ``progress(done, n_images)`` after each image.
        info: extra entries for the json's ``info``.

    Raises:
        ValueError: an argument out of range.
    """
    n_images = check_n_images(n_images)
    seed = check_seed(seed)
    if size is None:
        height, width = bank.image_size
    else:
        width, height = check_size(size, min_side=16)
    if cells_per_image is not None and (not isinstance(cells_per_image, int) or cells_per_image < 1):
        raise ValueError(f"cells_per_image must be an integer >= 1, got {cells_per_image!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    out_dir = check_out_dir(out_dir)
    params = params or CopyPasteParams()
    sigma = params.edge_sigma if params.edge_sigma is not None else thesis_edge_sigma(height, width)
    bank.ensure_margin(math.ceil(4.0 * sigma) + 2)  # the feather's 3 sigma after shrinking by up to 0.8
    border_px = int((bank.coco.get("info") or {}).get("border_px", DEFAULT_BORDER_PX))
    source_h, source_w = bank.image_size
    mean_cells = bank.cells_per_image * (height * width) / (source_h * source_w)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    n_short = 0
    for index in range(n_images):
        rng = np.random.default_rng([seed, index])
        n_cells = cells_per_image if cells_per_image is not None else max(1, int(rng.poisson(mean_cells)))
        result = paste_cells((height, width), bank.background, bank.draw, n_cells, rng, params)
        n_short += result.n_pasted < result.n_requested
        entry = _write_image(
            out_dir / "images", f"synth_{index:05d}", result, translator, _seed_of(seed, index), border_px
        )
        images.append({"id": index + 1, "height": height, "width": width, **entry})
        annotations += cell_annotations(result, index + 1, len(annotations) + 1)
        if progress is not None:
            progress(index + 1, n_images)
    dataset = {
        "info": {
            "description": "cytobench synthetic brightfield set: copy-paste in phase contrast"
            + (" + pix2pix" if translator is not None else " (phase-domain only)"),
            "source": str(bank.ann_file),
            "eligibility": bank.eligibility,
            "phase_only": translator is None,
            "max_overlap": params.max_overlap,
            "edge_sigma": sigma,
            "border_px": border_px,
            "seed": seed,
            **(info or {}),
        },
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    if n_images >= 2 and val_fraction > 0 and val_count(n_images, val_fraction) >= 1:
        path = save_simulated_coco(out_dir, dataset, val_fraction)
    else:
        path = save_coco(out_dir / "train.json", dataset)
    n_cells_total = sum(a["category_id"] == 1 for a in annotations)
    return SynthSummary(path, n_images, n_cells_total, int(n_short), translator is None)


def _write_image(
    folder: Path, stem: str, result: PasteResult, translator: Translator | None, seed: int, border_px: int
) -> dict[str, Any]:
    """Write one image's planes and maps; returns its json entry's ``file_name`` / ``planes`` / ``maps``."""
    phase = np.clip(result.phase, 0.0, 1.0)
    phase_name = f"{stem}_phase.png"
    write_image(folder / phase_name, phase)
    planes = [phase_name]
    if translator is not None:
        lower, upper = np.asarray(translator(phase, seed))
        planes = [f"{stem}_bf_lower.png", f"{stem}_bf_upper.png", phase_name]
        write_image(folder / planes[0], np.clip(lower, 0.0, 1.0))
        write_image(folder / planes[1], np.clip(upper, 0.0, 1.0))
    nuclei = result.nuclei & result.visible
    maps = {"semantic": f"{stem}_semantic.png", "overlap": f"{stem}_overlap.png"}
    write_image(folder / maps["semantic"], semantic_classes(result.visible, nuclei, border_px))
    labels = np.ones(result.n_pasted, dtype=np.int64)
    height, width = phase.shape
    write_image(folder / maps["overlap"], overlap_map(result.amodal, labels, height, width))
    return {"file_name": planes[0], "planes": planes, "maps": maps}
