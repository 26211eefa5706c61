"""Karyogram images from detections: cut each chromosome out, stand it upright, arrange, label.

**Upright crops** (:func:`upright_crop`). A detection's box is cut from the image at its integer pixel edges
(``floor`` of the top-left, ``ceil`` of the bottom-right corner, clipped to the image).

* *Box only*: the crop is turned a quarter turn (counterclockwise) when it is wider than tall, so its longer
  side is vertical; nothing else is changed (the crop keeps whatever background and neighbours the box holds).
* *With a mask* (a model that predicts masks): the mask's principal axis (the eigenvector of the larger
  eigenvalue of its pixel coordinates' covariance) is turned vertical by the smallest rotation (at most 90
  degrees either way; bilinear for the pixels, the mask resampled and thresholded at one half), pixels off the
  mask become the background (white), and the result is cut to the rotated mask's extent. A mask with no pixel
  in the box falls back to the box-only rule.

Which end of a chromosome ends up on top is not decided (no p-arm / q-arm analysis): a crop keeps the
orientation the smallest rotation gives it.

**Karyogram** (:func:`render_karyogram`): the upright crops are arranged by
:func:`cytobench.simulate.karyogram.karyogram_layout` (their classes and crop sizes; rows 1-5, 6-12, 13-18,
19-22 + X, Y; a missing chromosome leaves its place empty, an extra one stands beside its pair) on a white
canvas with a title band on top. Under each slot a line and its class number (red where an autosome's count
is not two); above each chromosome its confidence in percent; a chromosome whose score is below the
low-confidence threshold gets a red frame and a red ``?`` after its confidence. Gaps between chromosomes
grow with the text size, so that neighbouring confidence labels never overlap.

Text uses Pillow's built-in font (nothing is fetched); everything here is pure NumPy / OpenCV / Pillow and
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from cytobench.simulate.chromosomes import CLASS_NAMES
from cytobench.simulate.karyogram import KaryogramLayout, karyogram_layout

__all__ = [
    "BACKGROUND",
    "KaryogramFigure",
    "UprightCrop",
    "crop_box",
    "principal_angle",
    "render_karyogram",
    "to_display_rgb",
    "upright_crop",
]

#: canvas and off-mask grey level (white, as a karyogram's paper)
BACKGROUND = 255
LOW_CONFIDENCE_COLOR = (220, 0, 0)
TEXT_COLOR = (30, 30, 30)
LINE_COLOR = (90, 90, 90)
_MIN_ROTATION_DEG = 0.5  # a mask's axis closer to vertical than this is left as it is (no resampling)


# ------------------------------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class UprightCrop:
    """One chromosome stood upright.

    Attributes:
        pixels: ``(h, w, 3)`` uint8 RGB crop, ``h >= w`` for a box-only crop.
        mask: ``(h, w)`` bool chromosome pixels (with a mask), or None (box only).
        angle: counterclockwise rotation applied, in degrees (90 for a quarter-turned box crop).
    """

    pixels: np.ndarray
    mask: np.ndarray | None
    angle: float


def to_display_rgb(array: np.ndarray) -> np.ndarray:
    """An image as read by :func:`cytobench.io.images.read_image` (float ``(H, W, C)`` in [0, 1]) as uint8 RGB.

    One channel (or two) becomes grey from the first channel; three or more keep the first three.
    """
    data = np.asarray(array)
    if data.ndim == 2:
        data = data[:, :, None]
    if np.issubdtype(data.dtype, np.floating):
        data = np.round(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        data = data.astype(np.uint8)
    if data.shape[2] >= 3:
        return np.ascontiguousarray(data[:, :, :3])
    return np.ascontiguousarray(np.repeat(data[:, :, :1], 3, axis=2))


def crop_box(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel-edge ``(x0, y0, x1, y1)`` of an xyxy box inside an ``height x width`` image, >= 1 px each way."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ix0 = min(max(math.floor(x0), 0), width - 1)
    iy0 = min(max(math.floor(y0), 0), height - 1)
    ix1 = min(max(math.ceil(x1), ix0 + 1), width)
    iy1 = min(max(math.ceil(y1), iy0 + 1), height)
    return ix0, iy0, ix1, iy1


def principal_angle(mask: np.ndarray) -> float:
    """Counterclockwise rotation in degrees, in (-90, 90], that turns the mask's principal axis vertical.

    The axis is the eigenvector of the larger eigenvalue of the covariance of the mask pixels' ``(x, y)``
    (image coordinates, y down); rotations follow OpenCV's :func:`cv2.getRotationMatrix2D` (positive =
    counterclockwise as displayed). A mask of fewer than two pixels, or a round one, gives 0.
    """
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) < 2:
        return 0.0
    coords = np.stack([xs, ys]).astype(np.float64)
    cov = np.cov(coords)
    values, vectors = np.linalg.eigh(cov)
    if values[1] - values[0] <= 1e-9 * max(values[1], 1e-12):
        return 0.0  # no preferred direction
    vx, vy = vectors[:, 1]
    theta = math.degrees(math.atan2(-vy, vx))  # the axis' direction as displayed (y up), mod 180
    angle = 90.0 - theta
    angle = (angle + 90.0) % 180.0 - 90.0  # in [-90, 90)
    return 90.0 if angle == -90.0 else angle


def upright_crop(
    image: np.ndarray,
    box: Sequence[float],
    mask: np.ndarray | None = None,
    *,
    background: int = BACKGROUND,
    pad: int = 2,
) -> UprightCrop:
    """Cut one chromosome out of ``image`` and stand it upright (see the module docstring).

    Args:
        image: ``(H, W, 3)`` uint8 RGB (:func:`to_display_rgb`).
        box: xyxy box in the image's pixels.
        mask: ``(H, W)`` bool instance mask of the chromosome, or None.
        background: grey level put where the mask is not (and around a rotated crop).
        pad: px around the box searched for mask pixels (a mask may reach slightly past its box).

    Returns:
        The :class:`UprightCrop`.
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = crop_box(box, height, width)
    if mask is not None:
        mx0, my0 = max(x0 - pad, 0), max(y0 - pad, 0)
        mx1, my1 = min(x1 + pad, width), min(y1 + pad, height)
        region = np.asarray(mask[my0:my1, mx0:mx1], dtype=bool)
        if region.any():
            return _upright_from_mask(image[my0:my1, mx0:mx1], region, background)
    pixels = image[y0:y1, x0:x1]
    if pixels.shape[1] > pixels.shape[0]:
        return UprightCrop(np.ascontiguousarray(np.rot90(pixels, k=1)), None, 90.0)
    return UprightCrop(np.ascontiguousarray(pixels), None, 0.0)


def _upright_from_mask(pixels: np.ndarray, mask: np.ndarray, background: int) -> UprightCrop:
    """Rotate a masked crop so that the mask's principal axis is vertical; cut to the mask."""
    angle = principal_angle(mask)
    fill = np.full_like(pixels, background)
    pixels = np.where(mask[:, :, None], pixels, fill)
    if angle == 90.0:  # a quarter turn is exact without resampling
        pixels, mask = np.rot90(pixels, k=1), np.rot90(mask, k=1)
    elif abs(angle) >= _MIN_ROTATION_DEG:
        h, w = mask.shape
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
        cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
        new_w = int(math.ceil(h * sin + w * cos - 1e-6))
        new_h = int(math.ceil(h * cos + w * sin - 1e-6))
        matrix[0, 2] += (new_w - 1) / 2.0 - (w - 1) / 2.0
        matrix[1, 2] += (new_h - 1) / 2.0 - (h - 1) / 2.0
        rotated = cv2.warpAffine(
            np.ascontiguousarray(pixels),
            matrix,
            (new_w, new_h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(background,) * 3,
        )
        turned = cv2.warpAffine(
            mask.astype(np.uint8) * 255,
            matrix,
            (new_w, new_h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        rotated_mask = turned >= 128
        if rotated_mask.any():
            pixels = np.where(rotated_mask[:, :, None], rotated, np.full_like(rotated, background))
            mask = rotated_mask
        else:  # a sliver thinner than a pixel vanished: keep it unrotated
            angle = 0.0
    else:
        angle = 0.0
    ys, xs = np.nonzero(mask)
    ty0, ty1, tx0, tx1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return UprightCrop(
        np.ascontiguousarray(pixels[ty0:ty1, tx0:tx1]), np.ascontiguousarray(mask[ty0:ty1, tx0:tx1]), angle
    )


# ------------------------------------------------------------------------------------------- karyogram
@dataclass(frozen=True)
class KaryogramFigure:
    """A rendered karyogram.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        layout: the arrangement (:class:`~cytobench.simulate.karyogram.KaryogramLayout`), in the coordinates
            of the area below the title band.
        boxes: ``(N, 4)`` int64 ``[x0, y0, x1, y1]`` of each chromosome in ``image`` (input order).
        low_confidence: ``(N,)`` bool, the chromosomes marked as low-confidence.
        title_height: px of the title band above the layout.
        spacing: the keyword arguments ``layout`` was made with:
            ``karyogram_layout(classes, crop sizes, **spacing)`` gives it again.
    """

    image: np.ndarray
    layout: KaryogramLayout
    boxes: np.ndarray
    low_confidence: np.ndarray
    title_height: int
    spacing: dict[str, Any]


def _font(size: int) -> Any:
    """Pillow's bundled font at ``size`` px (its fixed bitmap font where FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(math.ceil(right - left)), int(math.ceil(bottom - top))


def _draw_centred(
    draw: Any, centre: tuple[float, float], text: str, font: Any, fill: tuple[int, ...]
) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = centre[0] - 0.5 * (left + right)
    y = centre[1] - 0.5 * (top + bottom)
    draw.text((x, y), text, fill=fill, font=font)


def confidence_text(score: float, low: bool) -> str:
    """A chromosome's label: its confidence in percent, ``?`` appended when it is low."""
    return f"{round(100.0 * float(score))}" + ("?" if low else "")


def render_karyogram(
    crops: Sequence[np.ndarray],
    classes: Sequence[int],
    scores: Sequence[float],
    *,
    low_confidence: float = 0.7,
    title: str = "",
    font_size: int | None = None,
) -> KaryogramFigure:
    """Arrange upright chromosome crops as a labelled karyogram (see the module docstring).

    Args:
        crops: ``(h, w, 3)`` uint8 RGB upright crops (:attr:`UprightCrop.pixels`), one per chromosome.
        classes: class index of each (1-24; X = 23, Y = 24).
        scores: confidence of each, in [0, 1].
        low_confidence: chromosomes scored below this are marked (red frame, ``?``).
        title: text of the title band (e.g. the ISCN karyotype); may be empty.
        font_size: text height in px; None: from the median crop height (10-32 px).

    Returns:
        The :class:`KaryogramFigure`.

    Raises:
        ValueError: crops, classes and scores differ in length, or a class is outside 1-24.
    """
    from PIL import Image, ImageDraw

    if not (len(crops) == len(classes) == len(scores)):
        raise ValueError(
            f"{len(crops)} crops, {len(classes)} classes and {len(scores)} scores differ in number"
        )
    sizes = np.array([c.shape[:2] for c in crops], dtype=np.int64).reshape(-1, 2)
    cls = np.asarray(classes, dtype=np.int64).reshape(-1)
    conf = np.asarray(scores, dtype=np.float64).reshape(-1)
    low = conf < float(low_confidence)
    if font_size is None:
        median_h = float(np.median(sizes[:, 0])) if len(sizes) else 40.0
        font_size = int(min(max(round(0.16 * median_h), 10), 32))
    font = _font(int(font_size))
    title_font = _font(int(round(1.25 * font_size)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w, text_h = _text_size(scratch, "100?", font)
    title_w, title_h = _text_size(scratch, title, title_font) if title else (0, 0)
    min_w = int(sizes[:, 1].min()) if len(sizes) else label_w
    frame = max(1, round(font_size / 10))  # low-confidence frame, drawn just outside the crop
    copy_gap = max(4, 2 * frame + 2, label_w + 2 - min_w)
    slot_gap = max(copy_gap + 4, round(0.3 * float(np.median(sizes[:, 1]))) if len(sizes) else 0)
    spacing: dict[str, Any] = {
        "copy_gap": copy_gap,
        "slot_gap": slot_gap,
        "group_gap": 2 * slot_gap,
        "row_gap": text_h + 8,  # room for the next row's confidence labels
        "label_height": text_h + 8,
        "margin": text_h + 8,
    }
    layout = karyogram_layout(cls, sizes, **spacing)
    width = max(layout.size[0], title_w + 2 * spacing["margin"])
    if width > layout.size[0]:  # a title wider than the chromosomes: rows spread to its width
        spacing["canvas_size"] = (width, layout.size[1])
        layout = karyogram_layout(cls, sizes, **spacing)
    band = title_h + spacing["margin"] if title else 0
    height = layout.size[1] + band
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    boxes = layout.boxes + np.array([0, band, 0, band], dtype=np.int64)
    for crop, (x0, y0, x1, y1) in zip(crops, boxes):
        canvas[y0:y1, x0:x1] = crop
    figure = Image.fromarray(canvas)
    draw = ImageDraw.Draw(figure)
    if title:
        draw.text((spacing["margin"], spacing["margin"] // 2), title, fill=TEXT_COLOR, font=title_font)
    counts = np.bincount(cls, minlength=25)
    line = max(1, round(font_size / 12))
    for k, (slot, (cx, cy)) in enumerate(zip(layout.slots, layout.labels)):
        x0, _y0, x1, baseline = (int(v) for v in slot)
        draw.rectangle([x0, baseline + band + 1, x1 - 1, baseline + band + line], fill=LINE_COLOR)
        odd = k < 22 and counts[k + 1] != 2
        _draw_centred(
            draw,
            (cx, cy + band + 0.5 * line),
            CLASS_NAMES[k],
            font,
            LOW_CONFIDENCE_COLOR if odd else TEXT_COLOR,
        )
    for (x0, y0, x1, y1), score, is_low in zip(boxes, conf, low):
        colour = LOW_CONFIDENCE_COLOR if is_low else TEXT_COLOR
        if is_low:
            draw.rectangle(
                [x0 - frame, y0 - frame, x1 - 1 + frame, y1 - 1 + frame], outline=colour, width=frame
            )
        centre = (0.5 * (x0 + x1), y0 - frame - 2 - 0.5 * text_h)
        _draw_centred(draw, centre, confidence_text(score, bool(is_low)), font, colour)
    return KaryogramFigure(np.asarray(figure), layout, boxes, low, band, spacing)
