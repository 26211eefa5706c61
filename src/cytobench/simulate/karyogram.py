"""Karyogram images: a cell's chromosomes stood upright and arranged in numbered homologous pairs.

The second data kind of the karyotyping thesis (KTH, Ch. 4): the images its detectors were trained on are
karyograms, the chromosomes of one metaphase cut out, rotated upright and set in rows of homologous pairs,
each pair above its class number.

**Layout** (:func:`karyogram_layout`): pure geometry on each chromosome's class and upright crop size, so
that it also arranges predicted chromosomes cut from a real spread (it draws nothing and draws no random
numbers).

* Rows (:data:`KARYOGRAM_ROWS`), the common layout of ISCN-style karyograms: row 1 holds 1-3 (Denver
  group A) and 4-5 (B), row 2 6-12 (C), row 3 13-15 (D) and 16-18 (E), row 4 19-20 (F), 21-22 (G) and the
  sex chromosomes X, Y. X belongs to group C by size and shape; the classical alternative (X after 12 in
  row 2) is ``rows=((1, 2, 3, 4, 5), (6, ..., 12, 23), (13, ..., 18), (19, 20, 21, 22, 24))``.
* Every class has a **slot** in its row, classes left to right in the order of the row. The copies of a
  class stand side by side in the slot, in input order, ``copy_gap`` apart: a pair, a trisomy's third copy
  beside the pair. A slot is as wide as its copies plus one placeholder width for each **missing** copy
  (fewer than two; fewer than one for Y), so a missing chromosome leaves its place empty (45,X: half the X
  slot and the whole Y slot). Slots are ``slot_gap`` apart, ``group_gap`` where the Denver group changes
  (X and Y count as one group here). Rows are justified to the canvas width.
* Chromosomes stand on their row's **baseline** (bottom-aligned); the row is as tall as its tallest
  chromosome. Below the baseline a band of ``label_height`` px holds the class numbers, centred under
  their slots (also under empty slots).
* Boxes are ``[x0, y0, x1, y1]`` in integer pixel-edge coordinates: a crop of ``(h, w)`` pixels covers
  columns ``x0 .. x1 - 1`` with ``x1 - x0 == w``. Boxes never overlap.

**Simulator** (:func:`simulate_karyogram`):

* **Cell.** ``n_chromosomes`` chromosomes (46 by default; a ``{count: probability}`` mapping gives 45/47
  cells), classes from :func:`~cytobench.simulate.chromosomes.sample_karyotype` as in the metaphase
  simulator. Lengths ``scale * relative_length / relative_length(chr 1)`` (per-cell condensation x
  U(0.85, 1.15), per chromosome x U(0.93, 1.07)), half-width ``~0.06 scale``, the class's centromere waist
  and fixed G-band pattern, drawn by :func:`~cytobench.simulate.chromosomes.render_body` around a
  centreline whose chord is vertical, p-ter on top: straight (3 in 10) or slightly bent (the metaphase
  centreline model with its turning scaled by 0.1-0.35).
* **Scale.** ``scale`` (length of chromosome 1 in px) is by default as large as the image height allows
  (about ``(H - margins - 4 label bands) / 3.2``); whenever a cell's karyogram would not fit the image it
  is redrawn with the same random shapes at a smaller scale, so every image holds the whole cell.
  Gaps grow with the scale, the label band (``0.032 min(W, H)``, at least 8 px) with the image.
* **Image.** Light background (0.88-0.97, gradient up to +-3 %), absorbance ``I = B exp(-stain * OD)``
  (stain 0.8-1.2), a line under each slot and the class numbers (Pillow's built-in font, nothing is
  fetched) drawn as optical density, a slight blur (sigma 0.05-0.12 half-widths, >= 0.3 px), a gamma in
  [0.85, 1.15] and mild Gaussian noise (sd 0.003-0.012). 8-bit grayscale PNG.

Truth (COCO), written by :func:`~cytobench.simulate.common.save_simulated_coco`: the 24 categories of the
metaphase simulator's ``label_mode="karyotype"`` (ids 1-24 named "1".."22", "X", "Y", supercategory the
Denver group); per chromosome ``bbox`` (tight mask box), ``segmentation`` (compressed RLE of the body),
``area``, ``iscrowd`` 0, ``chromosome_class``, ``denver_group`` and ``truth`` (``length``, ``half_width``,
``centromere``, ``centreline``), in the metaphase format; per image ``n_chromosomes`` and ``karyotype``
(:func:`~cytobench.simulate.chromosomes.format_karyotype`).

Randomness comes only from ``numpy.random.default_rng([seed, image_index])``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cytobench.io.images import write_image
from cytobench.simulate.chromosomes import (
    CLASSES,
    MAX_RELATIVE_LENGTH,
    band_profile,
    format_karyotype,
    render_body,
    sample_centreline,
    sample_karyotype,
)
from cytobench.simulate.common import (
    check_n_images,
    check_out_dir,
    check_seed,
    check_size,
    check_val_fraction,
    save_simulated_coco,
)
from cytobench.simulate.metaphase import ChromosomeTruth, categories, chromosome_annotation

__all__ = [
    "KARYOGRAM_ROWS",
    "KaryogramImage",
    "KaryogramLayout",
    "karyogram_layout",
    "render_karyogram",
    "simulate_karyogram",
]

#: Class indices (1-24; X = 23, Y = 24) of each karyogram row, top to bottom, left to right.
KARYOGRAM_ROWS: tuple[tuple[int, ...], ...] = (
    (1, 2, 3, 4, 5),
    (6, 7, 8, 9, 10, 11, 12),
    (13, 14, 15, 16, 17, 18),
    (19, 20, 21, 22, 23, 24),
)
_EXPECTED_COPIES = {index: 2 for index in range(1, 24)} | {24: 1}  # a slot keeps room for these
_MIN_SIDE = 128
_MIN_SCALE = 8.0  # px: chromosome 1 shorter than this is not drawn as a chromosome
_FIT_TRIES = 60
CountSpec = int | Mapping[int, float]


# ------------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class KaryogramLayout:
    """Where each chromosome and each class number goes (see the module docstring).

    Attributes:
        boxes: (N, 4) int64 ``[x0, y0, x1, y1]`` of each chromosome's crop, in input order.
        rows: (N,) int64 row (0 = top) of each chromosome.
        slots: (24, 4) int64 ``[x0, y0, x1, y1]`` reserved for class ``k`` in row ``k - 1`` (from the row's
            top to its baseline), also for absent classes.
        labels: (24, 2) float64 ``(x, y)`` centre of the class number of class ``k`` in row ``k - 1``.
        size: canvas ``(W, H)`` in px.
    """

    boxes: np.ndarray
    rows: np.ndarray
    slots: np.ndarray
    labels: np.ndarray
    size: tuple[int, int]


def karyogram_layout(
    classes: Sequence[int],
    sizes: Sequence[tuple[int, int]] | np.ndarray,
    *,
    rows: Sequence[Sequence[int]] = KARYOGRAM_ROWS,
    copy_gap: int = 4,
    slot_gap: int = 12,
    group_gap: int = 24,
    row_gap: int = 12,
    label_height: int = 16,
    margin: int = 8,
    placeholder: tuple[int, int] | None = None,
    canvas_size: tuple[int, int] | None = None,
) -> KaryogramLayout:
    """Arrange upright chromosome crops as a karyogram (see the module docstring).

    Args:
        classes: class index (1-24; X = 23, Y = 24) of each chromosome.
        sizes: upright crop size ``(h, w)`` in px of each chromosome (positive integers).
        rows: the class indices of each row, top to bottom and left to right; every class exactly once.
        copy_gap: px between the copies of one class (>= 1).
        slot_gap: px between neighbouring slots of one Denver group (>= 1).
        group_gap: px between slots of different groups (>= 1).
        row_gap: px between a row's label band and the next row (>= 0).
        label_height: height of the band under each row that holds the class numbers (>= 0).
        margin: px around the karyogram (>= 0).
        placeholder: ``(h, w)`` reserved for a missing copy (and the height of a row without any
            chromosome); None for the median crop size (``(4, 1) * label_height`` without crops).
        canvas_size: ``(W, H)`` to lay out in (rows justified to its width, spare height shared between
            the gaps); None for the smallest canvas that holds the karyogram.

    Returns:
        The layout.

    Raises:
        ValueError: bad arguments, or a ``canvas_size`` too small (the message gives the size needed).
    """
    cls = np.asarray(classes, dtype=np.int64).reshape(-1)
    dims = np.asarray(sizes).reshape(-1, 2) if len(cls) else np.zeros((0, 2), dtype=np.int64)
    if len(dims) != len(cls):
        raise ValueError(f"classes and sizes differ in length: {len(cls)} vs {len(dims)}")
    if len(cls) and (cls.min() < 1 or cls.max() > 24):
        raise ValueError(f"classes must be 1-24 (X = 23, Y = 24), got {sorted(set(cls.tolist()))}")
    if len(dims) and (not np.all(np.isfinite(dims)) or np.any(dims < 1) or np.any(dims != np.round(dims))):
        raise ValueError("sizes must be positive integers (h, w)")
    dims = dims.astype(np.int64)
    order = [int(c) for row in rows for c in row]
    if sorted(order) != list(range(1, 25)):
        raise ValueError(f"rows must hold each class 1-24 exactly once, got {[list(r) for r in rows]}")
    for name, value, low in (
        ("copy_gap", copy_gap, 1),
        ("slot_gap", slot_gap, 1),
        ("group_gap", group_gap, 1),
        ("row_gap", row_gap, 0),
        ("label_height", label_height, 0),
        ("margin", margin, 0),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if placeholder is None:
        placeholder = (
            (int(np.median(dims[:, 0])), int(np.median(dims[:, 1])))
            if len(dims)
            else (4 * max(label_height, 1), max(label_height, 1))
        )
    ph_h, ph_w = int(placeholder[0]), int(placeholder[1])
    if ph_h < 1 or ph_w < 1:
        raise ValueError(f"placeholder must be a positive (h, w), got {placeholder!r}")

    members = {c: [int(i) for i in np.flatnonzero(cls == c)] for c in range(1, 25)}
    slot_w = {}
    for c, idx in members.items():
        n_missing = max(_EXPECTED_COPIES[c] - len(idx), 0)
        widths = [int(dims[i, 1]) for i in idx] + [ph_w] * n_missing
        slot_w[c] = sum(widths) + copy_gap * max(len(widths) - 1, 0)
    gaps = [
        [group_gap if _slot_group(a) != _slot_group(b) else slot_gap for a, b in zip(row[:-1], row[1:])]
        for row in rows
    ]
    natural_rows = [sum(slot_w[int(c)] for c in row) + sum(g) for row, g in zip(rows, gaps)]
    heights = [max((int(dims[i, 0]) for c in row for i in members[int(c)]), default=ph_h) for row in rows]
    need_w = max(natural_rows) + 2 * margin
    need_h = 2 * margin + sum(heights) + label_height * len(rows) + row_gap * (len(rows) - 1)
    width, height = (need_w, need_h) if canvas_size is None else (int(canvas_size[0]), int(canvas_size[1]))
    if width < need_w or height < need_h:
        raise ValueError(f"the karyogram needs {need_w} x {need_h} px, the canvas is {width} x {height}")

    boxes = np.zeros((len(cls), 4), dtype=np.int64)
    row_of = np.zeros(len(cls), dtype=np.int64)
    slots = np.zeros((24, 4), dtype=np.int64)
    labels = np.zeros((24, 2), dtype=np.float64)
    spare_h = height - need_h
    top = margin
    for r, (row, row_gaps) in enumerate(zip(rows, gaps)):
        top_r = top + (r + 1) * spare_h // (len(rows) + 1)
        baseline = top_r + heights[r]
        spare_w = width - 2 * margin - natural_rows[r]
        x = margin + (spare_w // 2 if len(row) == 1 else 0)
        for k, c in enumerate(int(v) for v in row):
            x0 = x + (k * spare_w // (len(row) - 1) if len(row) > 1 else 0)
            slots[c - 1] = (x0, top_r, x0 + slot_w[c], baseline)
            labels[c - 1] = (x0 + 0.5 * slot_w[c], baseline + 0.5 * label_height)
            cx = x0
            for i in members[c]:
                h, w = int(dims[i, 0]), int(dims[i, 1])
                boxes[i] = (cx, baseline - h, cx + w, baseline)
                row_of[i] = r
                cx += w + copy_gap
            x += slot_w[c] + (row_gaps[k] if k < len(row_gaps) else 0)
        top += heights[r] + label_height + row_gap
    return KaryogramLayout(boxes, row_of, slots, labels, (width, height))


def _slot_group(index: int) -> str:
    """Denver group for the gaps of the layout; X and Y form one block."""
    return "XY" if index > 22 else CLASSES[index - 1].group


# --------------------------------------------------------------------------------------------- simulator
@dataclass(frozen=True)
class KaryogramImage:
    """A simulated karyogram: ``image`` (H, W) uint8, its chromosomes (sorted by class), karyotype string,
    layout and the scale (length of chromosome 1 in px) it was drawn at."""

    image: np.ndarray
    chromosomes: list[ChromosomeTruth]
    karyotype: str
    layout: KaryogramLayout
    scale: float


@dataclass(frozen=True)
class _Crop:
    """One upright chromosome in its own tight crop: optical density, mask, centreline (crop px)."""

    od: np.ndarray
    mask: np.ndarray
    centreline: np.ndarray
    half_width: float
    centromere_s: float


def simulate_karyogram(
    n_images: int,
    out_dir: str | Path,
    size: int | tuple[int, int] = (1024, 768),
    seed: int = 0,
    n_chromosomes: CountSpec = 46,
    scale: float | None = None,
    val_fraction: float | None = None,
) -> Path:
    """Simulate ``n_images`` labelled G-banded karyograms (see the module docstring).

    Args:
        n_images: number of images (>= 1).
        out_dir: output folder; images go to ``out_dir/images/karyogram_00000.png`` ...
        size: image size ``(W, H)`` in px or one int for a square (as ``--size``), each side >= 128.
        seed: random seed (>= 0).
        n_chromosomes: chromosomes per cell, an int >= 1 or a ``{count: probability}`` mapping.
        scale: largest length of chromosome 1 in px (before condensation), shrunk when a cell would not fit;
            None for as large as the image allows.
        val_fraction: None writes ``annotations.json``; a fraction in (0, 1) writes ``train.json`` and
            ``val.json`` (the last ``round(n * val_fraction)`` images, at least one, form ``val``).

    Returns:
        Path of ``annotations.json``, or of ``train.json`` (``val.json`` lies beside it) when splitting.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """
    n_images = check_n_images(n_images)
    width, height = check_size(size, min_side=_MIN_SIDE)
    seed = check_seed(seed)
    counts, probs = _count_spec(n_chromosomes)
    if scale is not None and not (
        isinstance(scale, int | float) and math.isfinite(scale) and _MIN_SCALE <= scale <= min(width, height)
    ):
        raise ValueError(f"scale must be a length in px in [{_MIN_SCALE:g}, min(W, H)], got {scale!r}")
    check_val_fraction(val_fraction, n_images)
    out_dir = check_out_dir(out_dir)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(n_images):
        rng = np.random.default_rng([seed, index])
        n = int(counts[rng.choice(len(counts), p=probs)]) if len(counts) > 1 else int(counts[0])
        sample = render_karyogram(rng, (width, height), n, scale=scale)
        file_name = f"karyogram_{index:05d}.png"
        write_image(out_dir / "images" / file_name, sample.image)
        images.append(
            {
                "id": index + 1,
                "file_name": file_name,
                "height": height,
                "width": width,
                "n_chromosomes": len(sample.chromosomes),
                "karyotype": sample.karyotype,
            }
        )
        for chrom in sample.chromosomes:
            ann = chromosome_annotation(chrom, height, width, "karyotype")
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})
    dataset = {
        "info": {"description": "cytobench G-banded karyogram simulator", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": categories("karyotype"),
    }
    return save_simulated_coco(out_dir, dataset, val_fraction)


def render_karyogram(
    rng: np.random.Generator, size: tuple[int, int], n_chromosomes: int, *, scale: float | None = None
) -> KaryogramImage:
    """Draw one karyogram in memory.

    Args:
        rng: random generator (the only source of randomness).
        size: ``(W, H)`` in px, each side >= 128.
        n_chromosomes: chromosomes in the cell (>= 1).
        scale: largest length of chromosome 1 in px; None for as large as the image allows.

    Returns:
        The image and its truth.

    Raises:
        ValueError: the image is too small for the cell.
    """
    width, height = size
    label_h = max(8, round(0.032 * min(width, height)))
    margin = max(3, round(0.02 * min(width, height)))
    classes = sample_karyotype(rng, n_chromosomes)
    condensation = float(rng.uniform(0.85, 1.15))
    shapes_seed = int(rng.integers(2**63))
    s = (height - 2 * margin - 4 * label_h) / 3.2 if scale is None else float(scale)
    for _try in range(_FIT_TRIES):
        if s < _MIN_SCALE:
            break
        shape_rng = np.random.default_rng(shapes_seed)  # the same shapes at every scale
        crops = [_upright_crop(shape_rng, c, s, condensation) for c in classes]
        sizes = [c.mask.shape for c in crops]
        spacing = {
            "copy_gap": max(1, round(0.03 * s)),
            "slot_gap": max(2, round(0.1 * s)),
            "group_gap": max(3, round(0.2 * s)),
            "row_gap": max(2, round(0.05 * s)),
            "label_height": label_h,
            "margin": margin,
        }
        natural = karyogram_layout(classes, sizes, **spacing).size
        if natural[0] <= width and natural[1] <= height:
            layout = karyogram_layout(classes, sizes, canvas_size=(width, height), **spacing)
            break
        s *= 0.98 * min(width / natural[0], height / natural[1], 1.0)
    else:
        s = 0.0
    if s < _MIN_SCALE:
        raise ValueError(
            f"size {width} x {height} is too small for a karyogram of {n_chromosomes} chromosomes"
        )

    od = np.zeros((height, width), dtype=np.float32)
    truths: list[ChromosomeTruth] = []
    for index, crop, box in zip(classes, crops, layout.boxes):
        x0, y0, x1, y1 = (int(v) for v in box)
        od[y0:y1, x0:x1] += crop.od
        points = crop.centreline + (x0, y0)
        c = points[min(round(crop.centromere_s / _arc_length(points) * (len(points) - 1)), len(points) - 1)]
        truths.append(ChromosomeTruth(index, x0, y0, crop.mask, points, crop.half_width, (c[0], c[1])))
    _draw_labels(od, layout, label_h)
    image = _form_image(rng, od, 0.06 * s)
    return KaryogramImage(image, truths, format_karyotype(classes), layout, s)


def _upright_crop(rng: np.random.Generator, index: int, scale: float, condensation: float) -> _Crop:
    """Draw chromosome class ``index`` upright (p-ter on top) into its own tight crop."""
    cls = CLASSES[index - 1]
    rel = cls.relative_length / MAX_RELATIVE_LENGTH
    length = scale * rel * condensation * rng.uniform(0.93, 1.07)
    half_width = 0.06 * scale * (0.92 + 0.08 * rel) * rng.uniform(0.95, 1.05)
    bend = 0.0 if rng.random() < 0.3 else rng.uniform(0.1, 0.35)
    local = sample_centreline(rng, length, bend=bend)  # chord along +x, p-ter first
    density = rng.uniform(0.9, 1.2)
    split = rng.uniform(0.0, 0.35) if rng.random() < 0.5 else 0.0
    upright = np.column_stack([-local[:, 1], local[:, 0]])  # chord along +y: p-ter on top
    reach = half_width + 2.0
    points = upright - upright.min(axis=0) + reach
    w, h = (math.ceil(v + reach) for v in points.max(axis=0))
    drawn = render_body(
        points,
        half_width,
        band_profile(index),
        (w, h),
        centromere=cls.centromere_index * length,
        density=density,
        split=split,
    )
    assert drawn is not None and drawn.mask.any()  # the body lies inside its own canvas
    x, y, bw, bh = cv2.boundingRect(drawn.mask.view(np.uint8))
    od = drawn.od[y : y + bh, x : x + bw].copy()
    mask = drawn.mask[y : y + bh, x : x + bw].copy()
    return _Crop(od, mask, points - (drawn.x0 + x, drawn.y0 + y), half_width, cls.centromere_index * length)


def _arc_length(points: np.ndarray) -> float:
    return float(np.hypot(*(points[1] - points[0]))) * (len(points) - 1)


def _label_font(size: int) -> Any:
    """Pillow's built-in font at ``size`` px (bundled with Pillow; nothing is downloaded)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw_labels(od: np.ndarray, layout: KaryogramLayout, label_h: int) -> None:
    """Add a line under each slot and the class numbers, as optical density, to ``od`` in place."""
    from PIL import Image, ImageDraw

    height, width = od.shape
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    font = _label_font(max(6, round(0.7 * label_h)))
    line = max(1, round(0.08 * label_h))
    for k, (slot, (cx, cy)) in enumerate(zip(layout.slots, layout.labels)):
        x0, _y0, x1, baseline = (int(v) for v in slot)
        draw.rectangle([x0, baseline + 1, x1 - 1, baseline + line], fill=200)
        text = CLASSES[k].name
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        centre_y = cy + 0.5 * (line + 1)
        draw.text((cx - 0.5 * (left + right), centre_y - 0.5 * (top + bottom)), text, fill=255, font=font)
    od += np.asarray(canvas, dtype=np.float32) * np.float32(1.1 / 255.0)


def _form_image(rng: np.random.Generator, od: np.ndarray, half_width: float) -> np.ndarray:
    """Light-background absorbance image: ``I = B exp(-stain * od)``, slight blur, gamma and noise."""
    height, width = od.shape
    xn = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    yn = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    gx, gy = rng.uniform(-0.03, 0.03, size=2)
    background = np.float32(rng.uniform(0.88, 0.97)) * (1.0 + np.float32(gx) * xn + np.float32(gy) * yn)
    image = background * np.exp(-np.float32(rng.uniform(0.8, 1.2)) * od)
    sigma = max(0.3, half_width * rng.uniform(0.05, 0.12))
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    np.clip(image, 0.0, 1.0, out=image)
    image **= np.float32(rng.uniform(0.85, 1.15))
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.003, 0.012))
    return np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _count_spec(n_chromosomes: CountSpec) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``n_chromosomes``; return ``(counts, probabilities)``."""
    spec = n_chromosomes if isinstance(n_chromosomes, Mapping) else {n_chromosomes: 1.0}
    if not spec:
        raise ValueError("n_chromosomes must be an int >= 1 or a non-empty {count: probability} mapping")
    for count, p in spec.items():
        if not isinstance(count, int | np.integer) or isinstance(count, bool) or count < 1:
            raise ValueError(f"n_chromosomes must be >= 1, got a count of {count!r}")
        if isinstance(p, bool) or not (isinstance(p, int | float) and math.isfinite(p) and p >= 0):
            raise ValueError(f"n_chromosomes: probability of {count} must be a finite number >= 0, got {p!r}")
    total = float(sum(spec.values()))
    if total <= 0:
        raise ValueError("n_chromosomes: the probabilities must not all be zero")
    counts = np.array(sorted(spec), dtype=np.int64)
    return counts, np.array([spec[c] for c in sorted(spec)], dtype=np.float64) / total
