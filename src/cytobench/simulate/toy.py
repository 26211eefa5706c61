"""A tiny, fast two-class simulator for smoke tests and the demo.

Each image is an 8-bit RGB PNG (three channels so that ImageNet-style detectors take it unchanged) with
a dark, noisy background, blurred filled ellipses (category 1, ``"cell"``, tinted green) and small bright
squares (category 2, ``"debris"``, white). Every object lies fully inside its image.

COCO truth per object: ``bbox`` [x, y, w, h] (tight box of the exact shape), ``segmentation`` (one
polygon: 32 points on the ellipse outline, or the square's corners), ``area`` (polygon area),
``keypoints`` = the centre ``[x, y, 2]`` (continuous pixel coordinates, the frame of the boxes) and the
simulator's truth under ``truth`` (``center``, ``axes`` (a, b), ``angle`` in radians). Both categories
declare ``keypoints: ["center"]`` and an empty ``skeleton`` so that K = 1 everywhere.

Randomness comes only from ``numpy.random.default_rng([seed, image_index])``: image ``i`` is the same
for a seed whatever ``n_images`` is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cytobench.io.images import write_image
from cytobench.simulate.common import (
    check_n_images,
    check_out_dir,
    check_seed,
    check_size,
    check_val_fraction,
    save_simulated_coco,
)

__all__ = ["CATEGORIES", "simulate_toy"]

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "cell", "supercategory": "object", "keypoints": ["center"], "skeleton": []},
    {"id": 2, "name": "debris", "supercategory": "object", "keypoints": ["center"], "skeleton": []},
]
_POLYGON_POINTS = 32
_MIN_SIDE = 16  # room for a debris square (up to 5 px) with its 1 px margin, at every scale
_CELL_TINT = np.array([0.45, 1.0, 0.55], dtype=np.float32)


def simulate_toy(
    n_images: int,
    out_dir: str | Path,
    size: int | tuple[int, int] = (128, 128),
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 6,
    val_fraction: float | None = None,
) -> Path:
    """Simulate ``n_images`` labelled toy images.

    Args:
        n_images: number of images (>= 1).
        out_dir: output folder; images go to ``out_dir/images``.
        size: image size ``(W, H)`` in pixels (as ``cytobench simulate toy --size W H``), or one int for
            a square; each side >= 16.
        seed: random seed (>= 0).
        min_objects: fewest objects per image.
        max_objects: most objects per image (about one in four is debris).
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
    check_val_fraction(val_fraction, n_images)
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
    out_dir = check_out_dir(out_dir)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(n_images):
        rng = np.random.default_rng([seed, index])
        file_name = f"toy_{index:05d}.png"
        image, objects = _render(rng, height, width, int(rng.integers(min_objects, max_objects + 1)))
        write_image(out_dir / "images" / file_name, image)
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "iscrowd": 0, **obj})
    return save_simulated_coco(out_dir, _dataset(images, annotations), val_fraction)


def _dataset(images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "info": {"description": "cytobench toy simulator", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }


def _render(rng: np.random.Generator, height: int, width: int, n_objects: int) -> tuple[np.ndarray, list]:
    """Draw one image; return ``(uint8 (H, W, 3) image, COCO annotation bodies)``."""
    scale = min(height, width) / 128.0
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    placed: list[tuple[float, float, float]] = []  # (cx, cy, radius) to limit overlaps
    objects = []
    for _ in range(n_objects):
        is_debris = rng.random() < 0.25
        for _attempt in range(20):
            shape = (
                _sample_debris(rng, height, width, scale)
                if is_debris
                else _sample_cell(rng, height, width, scale)
            )
            cx, cy, radius = shape["cx"], shape["cy"], shape["radius"]
            if all(math.hypot(cx - px, cy - py) > 0.8 * (radius + pr) for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, radius))
        _paint(canvas, shape, rng)
        objects.append(_annotation(shape))
    sigma = 0.8 * max(scale, 0.5)
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=sigma, sigmaY=sigma)
    canvas += 0.08 + rng.normal(0.0, 0.03, size=(height, width, 1)).astype(np.float32)
    return np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8), objects


def _sample_cell(rng: np.random.Generator, height: int, width: int, scale: float) -> dict[str, Any]:
    a = float(rng.uniform(6.0, 14.0)) * scale
    b = a * float(rng.uniform(0.55, 1.0))
    angle = float(rng.uniform(0.0, math.pi))
    half_w = math.sqrt((a * math.cos(angle)) ** 2 + (b * math.sin(angle)) ** 2)
    half_h = math.sqrt((a * math.sin(angle)) ** 2 + (b * math.cos(angle)) ** 2)
    cx = float(rng.uniform(half_w + 1.0, width - half_w - 1.0))
    cy = float(rng.uniform(half_h + 1.0, height - half_h - 1.0))
    return {
        "kind": 1,
        "cx": cx,
        "cy": cy,
        "a": a,
        "b": b,
        "angle": angle,
        "half": (half_w, half_h),
        "radius": a,
    }


def _sample_debris(rng: np.random.Generator, height: int, width: int, scale: float) -> dict[str, Any]:
    half = float(rng.uniform(1.5, 2.5)) * max(scale, 1.0)
    cx = float(rng.uniform(half + 1.0, width - half - 1.0))
    cy = float(rng.uniform(half + 1.0, height - half - 1.0))
    return {
        "kind": 2,
        "cx": cx,
        "cy": cy,
        "a": half,
        "b": half,
        "angle": 0.0,
        "half": (half, half),
        "radius": half * math.sqrt(2.0),
    }


def _paint(canvas: np.ndarray, shape: dict[str, Any], rng: np.random.Generator) -> None:
    """Add the object's intensity to ``canvas`` (H, W, 3) inside its bounding box."""
    height, width = canvas.shape[:2]
    half_w, half_h = shape["half"]
    x0, x1 = max(int(shape["cx"] - half_w), 0), min(int(math.ceil(shape["cx"] + half_w)) + 1, width)
    y0, y1 = max(int(shape["cy"] - half_h), 0), min(int(math.ceil(shape["cy"] + half_h)) + 1, height)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5  # pixel centres, continuous coordinates
    dx, dy = xs - shape["cx"], ys - shape["cy"]
    if shape["kind"] == 2:
        inside = (np.abs(dx) <= shape["a"]) & (np.abs(dy) <= shape["a"])
        colour = np.full(3, float(rng.uniform(0.8, 1.0)), dtype=np.float32)
    else:
        cos, sin = math.cos(shape["angle"]), math.sin(shape["angle"])
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        inside = (u / shape["a"]) ** 2 + (v / shape["b"]) ** 2 <= 1.0
        colour = _CELL_TINT * float(rng.uniform(0.45, 0.8))
    canvas[y0:y1, x0:x1][inside] = np.maximum(canvas[y0:y1, x0:x1][inside], colour)


def _annotation(shape: dict[str, Any]) -> dict[str, Any]:
    """COCO body (no ids) of one object: bbox, polygon, area, centre keypoint, truth."""
    cx, cy = shape["cx"], shape["cy"]
    half_w, half_h = shape["half"]
    if shape["kind"] == 2:
        h = shape["a"]
        polygon = np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h]])
    else:
        t = np.linspace(0.0, 2.0 * math.pi, _POLYGON_POINTS, endpoint=False)
        cos, sin = math.cos(shape["angle"]), math.sin(shape["angle"])
        u, v = shape["a"] * np.cos(t), shape["b"] * np.sin(t)
        polygon = np.stack([cx + u * cos - v * sin, cy + u * sin + v * cos], axis=1)
    x, y = polygon[:, 0], polygon[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return {
        "category_id": shape["kind"],
        "bbox": [round(cx - half_w, 4), round(cy - half_h, 4), round(2 * half_w, 4), round(2 * half_h, 4)],
        "segmentation": [[round(float(c), 4) for c in polygon.reshape(-1)]],
        "area": round(area, 4),
        "keypoints": [round(cx, 4), round(cy, 4), 2],
        "num_keypoints": 1,
        "truth": {"center": [cx, cy], "axes": [shape["a"], shape["b"]], "angle": shape["angle"]},
    }
