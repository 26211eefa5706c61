"""G-banded metaphase spreads with known truth (DeepACEv2 chromosome enumeration, Sec. 3.1).

Each image is an 8-bit grayscale PNG of one metaphase cell (default 1600 x 1200 like the paper's
CytoVision images; smaller sizes for CPU work keep all chromosomes, scaled to the image).

Model (see :mod:`~cytobench.simulate.chromosomes` and :mod:`~cytobench.simulate.metaphase_layout`):

* **Cell.** ``n_chromosomes`` chromosomes (46 by default; a distribution such as ``{45: 0.1, 46: 0.8,
  47: 0.1}`` gives aneuploid cells, e.g. ``"47,XX,+21"``, ``"45,X"``). Each is a bent tube whose length is
  ``scale * relative_length / relative_length(chr 1)`` (per-cell condensation x U(0.85, 1.15), per
  chromosome x U(0.93, 1.07)), half-width ``~0.06 scale`` (nearly class independent), with a waist at its
  class's centromere index and its class's fixed G-band pattern. ``scale`` is the length of chromosome 1
  in px, by default ``0.13 * min(W, H)`` (156 px at 1600 x 1200, 50 px at 512 x 384).
* **Layout.** Random position in an elliptical spread region, random angle and bending; touching and
  crossing chromosomes are added or removed until ``~Binomial(n, overlap_target)`` of them lie in the
  severely-overlapping subset S_o of DeepACEv2 Eq. 14 (tau = 0.5), about 10 % as in Table 4.
* **Confounders (not annotated).** ``n_fragments`` partial-looking pieces (20-55 % of a random class's
  body with its bands) and ``n_debris`` stain specks (one in twenty is a large interphase nucleus, put
  outside the spread when possible).
* **Image formation (absorbance).** ``I = B(x, y) * exp(-stain * sum of optical densities)``, so bodies
  are darker where they overlap; ``B`` is a smooth background (level 0.78-0.95, linear gradient up to
  +-12 %, vignetting up to 12 %), then a Gaussian blur (sigma ~ 0.1-0.2 half-widths, >= 0.35 px), a gamma
  in [0.75, 1.35], a contrast stretch and Gaussian noise (sd 0.004-0.025), as the varied contrast of Fig. 6.

Truth (COCO): one annotation per chromosome with ``bbox`` [x, y, w, h] (the tight pixel box of the mask),
``segmentation`` (compressed RLE of the chromosome's **full body**, visible and occluded parts alike:
the whole extent a labeller draws, so masks and boxes of crossing chromosomes overlap), ``area`` (mask
pixels), ``iscrowd`` 0, ``chromosome_class`` ("1".."22", "X", "Y"), ``denver_group`` ("A".."G") and
``truth`` (``length`` and ``half_width`` in px, ``centromere`` [x, y], ``centreline``: 17 [x, y] points from
p-ter to q-ter). Categories: ``label_mode="chromosome"`` gives the single category 1 ``"chromosome"``;
``"karyotype"`` gives 24 categories, ids 1-24 named "1".."22", "X", "Y" (supercategory: Denver group).
Per image: ``n_chromosomes``, ``karyotype`` and ``overlap_fraction`` (the fraction of the image's boxes in
S_o, computed by :func:`cytobench.evaluation.enumeration.overlapping_subset`).

Randomness comes only from ``numpy.random.default_rng([seed, image_index])``: image ``i`` is the same for a
seed whatever ``n_images`` is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from cytobench.evaluation.enumeration import overlapping_subset
from cytobench.io.images import write_image
from cytobench.simulate.chromosomes import (
    CLASSES,
    MAX_RELATIVE_LENGTH,
    band_profile,
    draw_debris,
    form_image,
    format_karyotype,
    render_body,
    sample_centreline,
    sample_karyotype,
)
from cytobench.simulate.common import check_out_dir, check_seed, check_val_fraction, save_simulated_coco
from cytobench.simulate.metaphase_layout import Body, Pose, Spread, draw_fragments, layout_spread, pose_points

__all__ = [
    "ChromosomeTruth",
    "MetaphaseImage",
    "SpreadPlan",
    "categories",
    "plan_spread",
    "render_metaphase",
    "simulate_metaphase",
]

LabelMode = Literal["chromosome", "karyotype"]
CountSpec = int | Mapping[int, float]
_TAU = 0.5
_MIN_SIDE = 64
_TRUTH_POINTS = 17


@dataclass(frozen=True)
class ChromosomeTruth:
    """One drawn chromosome.

    Attributes:
        class_index: 1-24 (``"X"`` = 23, ``"Y"`` = 24).
        x0: left column of ``mask`` in the image.
        y0: top row of ``mask`` in the image.
        mask: (h, w) bool full-body mask crop.
        centreline: (M, 2) float64 posed centreline (x, y) in px, p-ter first.
        half_width: px.
        centromere: (x, y) of the centromere in px.
    """

    class_index: int
    x0: int
    y0: int
    mask: np.ndarray
    centreline: np.ndarray
    half_width: float
    centromere: tuple[float, float]

    @property
    def bbox(self) -> list[int]:
        """Tight ``[x, y, w, h]`` box of the mask in pixels."""
        x, y, w, h = cv2.boundingRect(self.mask.view(np.uint8))
        return [self.x0 + x, self.y0 + y, w, h]


@dataclass(frozen=True)
class MetaphaseImage:
    """A simulated spread: ``image`` (H, W) uint8, its chromosomes, karyotype and S_o fraction."""

    image: np.ndarray
    chromosomes: list[ChromosomeTruth]
    karyotype: str
    overlap_fraction: float


def categories(label_mode: LabelMode) -> list[dict[str, Any]]:
    """COCO categories of ``label_mode`` (``"chromosome"``: 1 category; ``"karyotype"``: 24)."""
    if label_mode == "chromosome":
        return [{"id": 1, "name": "chromosome", "supercategory": "chromosome"}]
    return [{"id": c.index, "name": c.name, "supercategory": c.group} for c in CLASSES]


def simulate_metaphase(
    n_images: int,
    out_dir: str | Path,
    size: tuple[int, int] = (1600, 1200),
    seed: int = 0,
    n_chromosomes: CountSpec = 46,
    overlap_target: float = 0.10,
    n_fragments: tuple[int, int] = (0, 4),
    n_debris: tuple[int, int] = (0, 10),
    scale: float | None = None,
    val_fraction: float | None = None,
    label_mode: LabelMode = "chromosome",
) -> Path:
    """Simulate ``n_images`` labelled G-banded metaphase spreads (see the module docstring).

    Args:
        n_images: number of images (>= 1).
        out_dir: output folder; images go to ``out_dir/images/metaphase_00000.png`` ...
        size: image size ``(W, H)`` in px (as ``cytobench simulate metaphase --size W H``), each >= 64.
        seed: random seed (>= 0).
        n_chromosomes: chromosomes per cell, an int >= 1 or a ``{count: probability}`` mapping.
        overlap_target: wanted mean fraction of chromosomes in S_o (Eq. 14), in [0, 1).
        n_fragments: inclusive range ``(lo, hi)`` of unannotated chromosome fragments per image.
        n_debris: inclusive range ``(lo, hi)`` of unannotated debris items per image.
        scale: length of chromosome 1 in px, at most ``min(W, H) / 2``; None for ``0.13 * min(W, H)``.
        val_fraction: None writes ``annotations.json``; a fraction in (0, 1) writes ``train.json`` and
            ``val.json`` (the last ``round(n * val_fraction)`` images, at least one, form ``val``).
        label_mode: ``"chromosome"`` (one class) or ``"karyotype"`` (24 classes).

    Returns:
        Path of ``annotations.json``, or of ``train.json`` (``val.json`` lies beside it) when splitting.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """
    width, height, counts, probs = _check_args(
        n_images, size, n_chromosomes, overlap_target, n_fragments, n_debris, scale, val_fraction, label_mode
    )
    seed = check_seed(seed)
    scale = 0.13 * min(width, height) if scale is None else float(scale)
    out_dir = check_out_dir(out_dir)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    # a bar in terminals only (tqdm's disable=None): paper-scale sets take minutes, logs stay clean
    for index in tqdm(range(n_images), desc="simulate metaphase", unit="img", disable=None, leave=False):
        rng = np.random.default_rng([seed, index])
        n = int(counts[rng.choice(len(counts), p=probs)]) if len(counts) > 1 else int(counts[0])
        sample = render_metaphase(
            rng,
            (width, height),
            n,
            overlap_target=overlap_target,
            n_fragments=int(rng.integers(n_fragments[0], n_fragments[1] + 1)),
            n_debris=int(rng.integers(n_debris[0], n_debris[1] + 1)),
            scale=scale,
        )
        file_name = f"metaphase_{index:05d}.png"
        write_image(out_dir / "images" / file_name, sample.image)
        images.append(
            {
                "id": index + 1,
                "file_name": file_name,
                "height": height,
                "width": width,
                "n_chromosomes": len(sample.chromosomes),
                "karyotype": sample.karyotype,
                "overlap_fraction": round(sample.overlap_fraction, 6),
            }
        )
        for chrom in sample.chromosomes:
            ann = chromosome_annotation(chrom, height, width, label_mode)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})
    return save_simulated_coco(out_dir, _dataset(images, annotations, categories(label_mode)), val_fraction)


@dataclass(frozen=True)
class SpreadPlan:
    """Geometry of one spread before rendering: ``classes`` (1-24), their ``bodies`` and ``poses`` (same
    order) and the ``spread`` ellipse."""

    classes: list[int]
    bodies: list[Body]
    poses: list[Pose]
    spread: Spread


def plan_spread(
    rng: np.random.Generator, size: tuple[int, int], n_chromosomes: int, overlap_target: float, scale: float
) -> SpreadPlan:
    """Draw the karyotype, the chromosomes' shapes and their layout (see the module docstring).

    Args:
        rng: random generator.
        size: ``(W, H)`` in px.
        n_chromosomes: chromosomes in the cell (>= 1).
        overlap_target: wanted mean S_o fraction.
        scale: length of chromosome 1 in px.
    """
    classes = sample_karyotype(rng, n_chromosomes)
    classes = [classes[k] for k in rng.permutation(len(classes))]
    condensation = rng.uniform(0.85, 1.15)
    bodies: list[Body] = []
    for index in classes:
        rel = CLASSES[index - 1].relative_length / MAX_RELATIVE_LENGTH
        length = scale * rel * condensation * rng.uniform(0.93, 1.07)
        half_width = 0.06 * scale * (0.92 + 0.08 * rel) * rng.uniform(0.95, 1.05)
        bodies.append(Body(sample_centreline(rng, length, bend=0.6 + 0.6 * rel), half_width))
    poses, spread = layout_spread(rng, bodies, size[0], size[1], overlap_target)
    return SpreadPlan(classes, bodies, poses, spread)


def render_metaphase(
    rng: np.random.Generator,
    size: tuple[int, int],
    n_chromosomes: int,
    *,
    overlap_target: float = 0.10,
    n_fragments: int = 2,
    n_debris: int = 5,
    scale: float | None = None,
) -> MetaphaseImage:
    """Draw one spread in memory.

    Args:
        rng: random generator (the only source of randomness).
        size: ``(W, H)`` in px.
        n_chromosomes: chromosomes in the cell (>= 1).
        overlap_target: wanted mean S_o fraction.
        n_fragments: unannotated fragments to draw.
        n_debris: unannotated debris items to draw.
        scale: length of chromosome 1 in px; None for ``0.13 * min(W, H)``.

    Returns:
        The image and its truth.
    """
    width, height = size
    scale = 0.13 * min(width, height) if scale is None else scale
    plan = plan_spread(rng, size, n_chromosomes, overlap_target, scale)
    od = np.zeros((height, width), dtype=np.float32)
    truths: list[ChromosomeTruth] = []
    for index, body, pose in zip(plan.classes, plan.bodies, plan.poses):
        points = pose_points(body.local, pose)
        centromere_s = CLASSES[index - 1].centromere_index * body.length
        drawn = render_body(
            points,
            body.half_width,
            band_profile(index),
            size,
            centromere=centromere_s,
            density=rng.uniform(0.9, 1.2),
            split=rng.uniform(0.0, 0.35) if rng.random() < 0.5 else 0.0,
        )
        assert drawn is not None  # layout keeps every chromosome inside the image
        od[drawn.y0 : drawn.y0 + drawn.od.shape[0], drawn.x0 : drawn.x0 + drawn.od.shape[1]] += drawn.od
        c = points[min(round(centromere_s / body.length * (len(points) - 1)), len(points) - 1)]
        truths.append(
            ChromosomeTruth(index, drawn.x0, drawn.y0, drawn.mask, points, body.half_width, (c[0], c[1]))
        )
    obstacles = [(pose_points(b.local[b.coarse], p), b.half_width) for b, p in zip(plan.bodies, plan.poses)]
    draw_fragments(rng, od, n_fragments, scale, obstacles)
    draw_debris(rng, od, n_debris, scale, (plan.spread.centre, plan.spread.axes))
    image = form_image(rng, od, 0.06 * scale)
    boxes = np.array([t.bbox for t in truths], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    fraction = float(overlapping_subset(boxes, _TAU).mean())
    return MetaphaseImage(image, truths, format_karyotype(sorted(plan.classes)), fraction)


def chromosome_annotation(
    chrom: ChromosomeTruth, height: int, width: int, label_mode: LabelMode
) -> dict[str, Any]:
    """COCO body (no ids) of one chromosome."""
    cls = CLASSES[chrom.class_index - 1]
    pick = np.linspace(0, len(chrom.centreline) - 1, _TRUTH_POINTS).round().astype(np.int64)
    length = float(np.hypot(*(chrom.centreline[1] - chrom.centreline[0]))) * (len(chrom.centreline) - 1)
    return {
        "category_id": cls.index if label_mode == "karyotype" else 1,
        "bbox": chrom.bbox,
        "segmentation": _crop_rle(chrom.mask, chrom.x0, chrom.y0, height, width),
        "area": int(chrom.mask.sum()),
        "iscrowd": 0,
        "chromosome_class": cls.name,
        "denver_group": cls.group,
        "truth": {
            "length": round(length, 3),
            "half_width": round(chrom.half_width, 3),
            "centromere": [round(float(v), 3) for v in chrom.centromere],
            "centreline": np.round(chrom.centreline[pick], 3).tolist(),
        },
    }


def _crop_rle(mask: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict[str, Any]:
    """Compressed COCO RLE of a crop mask placed at ``(x0, y0)`` in an (H, W) image (never builds H x W)."""
    from pycocotools import mask as mask_utils

    cols, rows = np.nonzero(mask.T)  # column-major order, as COCO RLE
    linear = (cols + x0) * height + rows + y0
    breaks = np.flatnonzero(np.diff(linear) != 1)
    starts = np.concatenate([linear[:1], linear[breaks + 1]])
    ends = np.concatenate([linear[breaks] + 1, linear[-1:] + 1])
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1:-1:2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    rle = mask_utils.frPyObjects({"counts": counts.tolist(), "size": [height, width]}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _dataset(
    images: list[dict[str, Any]], annotations: list[dict[str, Any]], cats: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "info": {"description": "cytobench G-banded metaphase simulator", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }


def _check_args(
    n_images: int,
    size: tuple[int, int],
    n_chromosomes: CountSpec,
    overlap_target: float,
    n_fragments: tuple[int, int],
    n_debris: tuple[int, int],
    scale: float | None,
    val_fraction: float | None,
    label_mode: str,
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Validate the arguments; return ``(W, H, chromosome counts, their probabilities)``."""
    if not _is_int(n_images) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if not isinstance(size, tuple | list) or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
        raise ValueError(f"size must be two positive integers (W, H), got {size!r}")
    if min(size) < _MIN_SIDE:
        raise ValueError(f"size {tuple(size)} is too small: each side needs at least {_MIN_SIDE} px")
    spec = n_chromosomes if isinstance(n_chromosomes, Mapping) else {n_chromosomes: 1.0}
    if not spec:
        raise ValueError("n_chromosomes must be an int >= 1 or a non-empty {count: probability} mapping")
    for count, p in spec.items():
        if not _is_int(count) or count < 1:
            raise ValueError(f"n_chromosomes must be >= 1, got a count of {count!r}")
        if not (isinstance(p, int | float) and math.isfinite(p) and p >= 0):
            raise ValueError(f"n_chromosomes: probability of {count} must be a finite number >= 0, got {p!r}")
    total = float(sum(spec.values()))
    if total <= 0:
        raise ValueError("n_chromosomes: the probabilities must not all be zero")
    if not 0.0 <= overlap_target < 1.0:
        raise ValueError(f"overlap_target must be in [0, 1), got {overlap_target!r}")
    for name, rng_range in (("n_fragments", n_fragments), ("n_debris", n_debris)):
        if len(rng_range) != 2 or not 0 <= int(rng_range[0]) <= int(rng_range[1]):
            raise ValueError(f"{name} must be a range (lo, hi) with 0 <= lo <= hi, got {rng_range!r}")
    if scale is not None and not (math.isfinite(scale) and 0 < scale <= 0.5 * min(size)):
        raise ValueError(
            f"scale must be a length in px in (0, min(W, H) / 2], got {scale!r} for size {size!r}"
        )
    check_val_fraction(val_fraction, n_images)
    if label_mode not in ("chromosome", "karyotype"):
        raise ValueError(f"label_mode must be 'chromosome' or 'karyotype', got {label_mode!r}")
    counts = np.array(sorted(spec), dtype=np.int64)
    probs = np.array([spec[c] for c in sorted(spec)], dtype=np.float64) / total
    return int(size[0]), int(size[1]), counts, probs


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
