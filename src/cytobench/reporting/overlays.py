"""Prediction overlays (DeepACEv2 Fig. 10 and the like): truth and predictions drawn over images.

Everything is rasterised with OpenCV into ``(H, W, 3)`` uint8 RGB arrays, so a pixel of a drawn box
has exactly the colour of its category (no anti-aliasing) and panels tile into one PNG without
matplotlib. Predicted boxes are classified with the enumeration matching rule
(:func:`cytobench.evaluation.enumeration.match_detections`, IoU >= ``iou_thr``) after keeping the
detections with ``score >= score_thr``:

- true positive (``COLORS["tp"]``, green), false positive (``COLORS["fp"]``, red),
- missed ground truth, drawn as its true box (``COLORS["missed"]``, orange),
- ground truth in a truth panel (``COLORS["truth"]``, blue, as in the paper's Fig. 10).

Box convention: xyxy in absolute pixels with exclusive right / bottom edges (a COCO box
``[x, y, w, h]`` is ``[x, y, x + w, y + h]``); its outline covers the pixel columns
``round(x1) .. round(x2) - 1`` and rows ``round(y1) .. round(y2) - 1`` (the outermost pixels
of the box) and grows inwards with ``thickness``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cytobench.evaluation.enumeration import match_detections

COLORS: dict[str, tuple[int, int, int]] = {
    "truth": (30, 90, 255),
    "tp": (0, 200, 0),
    "fp": (230, 0, 0),
    "missed": (255, 150, 0),
    "mask": (0, 200, 200),
    "point": (255, 0, 255),
}
TEXT_COLOR = (0, 0, 0)
BACKGROUND = (255, 255, 255)


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Any image as a contiguous ``(H, W, 3)`` uint8 RGB copy.

    Args:
        image: numpy array or torch tensor; ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in
            {1, 3}; float in [0, 1], uint8, or uint16 (scaled by its maximum).
    """
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W), (H, W, C) or (C, H, W) image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8))
    top = max(int(arr.max()), 1)
    return np.ascontiguousarray(np.round(arr.astype(np.float64) * (255.0 / top)).astype(np.uint8))


def default_thickness(shape: Sequence[int]) -> int:
    """Line width that stays visible when the panel is shown small: 1 px per 400 px of the short side."""
    return max(1, round(min(shape[0], shape[1]) / 400))


def draw_boxes(
    canvas: np.ndarray,
    boxes: np.ndarray,
    color: tuple[int, int, int],
    thickness: int = 1,
    texts: Sequence[str] | None = None,
) -> np.ndarray:
    """Draw box outlines (in place) and optional texts above their top-left corners.

    Args:
        canvas: (H, W, 3) uint8 RGB, modified in place.
        boxes: (N, 4) xyxy pixels (exclusive right / bottom edges).
        color: RGB colour.
        thickness: line width in px, growing inwards from the box's outermost pixels.
        texts: optional one string per box (e.g. its score).

    Returns:
        ``canvas``.
    """
    h, w = canvas.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        c1, r1 = int(np.clip(round(x1), 0, w - 1)), int(np.clip(round(y1), 0, h - 1))
        c2, r2 = int(np.clip(round(x2) - 1, c1, w - 1)), int(np.clip(round(y2) - 1, r1, h - 1))
        for t in range(thickness):
            if c1 + t > c2 - t or r1 + t > r2 - t:
                break
            cv2.rectangle(canvas, (c1 + t, r1 + t), (c2 - t, r2 - t), color, 1, lineType=cv2.LINE_4)
        if texts is not None:
            cv2.putText(
                canvas, texts[i], (c1, max(r1 - 2, 8)), cv2.FONT_HERSHEY_PLAIN, 0.7, color, 1, cv2.LINE_8
            )
    return canvas


def draw_masks(
    canvas: np.ndarray, masks: np.ndarray, color: tuple[int, int, int], alpha: float = 0.35
) -> np.ndarray:
    """Blend instance masks (in place) into the canvas.

    Args:
        canvas: (H, W, 3) uint8 RGB.
        masks: (N, H, W) or (N, 1, H, W); binary or probabilities (> 0.5 is inside).
        color: RGB colour of every mask.
        alpha: opacity of the colour.
    """
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.size == 0:
        return canvas
    inside = (masks > 0.5).any(axis=0)
    blend = (1 - alpha) * canvas[inside] + alpha * np.asarray(color, dtype=np.float64)
    canvas[inside] = np.round(blend).astype(np.uint8)
    return canvas


def draw_points(
    canvas: np.ndarray, points: np.ndarray, color: tuple[int, int, int], radius: int = 2
) -> np.ndarray:
    """Draw filled dots (in place) at ``points``.

    Args:
        canvas: (H, W, 3) uint8 RGB.
        points: (N, 2) x, y pixels, or keypoints (N, K, 3) with visibility > 0 drawn.
        color: RGB colour.
        radius: dot radius in px.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 3:
        pts = pts[pts[..., 2] > 0][:, :2]
    for x, y in pts.reshape(-1, 2):
        cv2.circle(canvas, (round(x), round(y)), radius, color, -1, lineType=cv2.LINE_8)
    return canvas


def classify_predictions(
    gt_boxes: np.ndarray,
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
) -> dict[str, np.ndarray]:
    """Split the kept predictions into TP / FP and find the missed ground truths.

    Args:
        gt_boxes: (N, 4) xyxy.
        pred_boxes: (M, 4) xyxy.
        pred_scores: (M,) scores.
        score_thr: predictions with ``score >= score_thr`` are kept.
        iou_thr: IoU (inclusive) of the enumeration matching rule.

    Returns:
        ``kept`` (M,) bool, ``tp`` (M,) bool (kept true positives), ``fp`` (M,) bool (kept false
        positives) and ``missed`` (N,) bool (ground truths without a kept true positive).
    """
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    det = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(pred_scores, dtype=np.float64).ravel()
    tp, assigned, _ = match_detections(gt, det, scores, iou_thr)
    kept = scores >= score_thr
    missed = np.ones(len(gt), dtype=bool)
    missed[assigned[tp & kept]] = False
    return {"kept": kept, "tp": tp & kept, "fp": kept & ~tp, "missed": missed}


def render_truth(
    image: Any,
    gt_boxes: np.ndarray,
    *,
    masks: np.ndarray | None = None,
    points: np.ndarray | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """The image with its ground truth: boxes in ``COLORS["truth"]``, optional masks and points.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    canvas = to_rgb_uint8(image)
    t = thickness or default_thickness(canvas.shape)
    if masks is not None:
        draw_masks(canvas, masks, COLORS["mask"])
    draw_boxes(canvas, gt_boxes, COLORS["truth"], t)
    if points is not None:
        draw_points(canvas, points, COLORS["point"], radius=t + 1)
    return canvas


def render_predictions(
    image: Any,
    gt_boxes: np.ndarray,
    prediction: Mapping[str, Any],
    *,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
    show_scores: bool = False,
    thickness: int | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """The image with one model's predictions coloured by their match to the ground truth.

    Args:
        image: see :func:`to_rgb_uint8`.
        gt_boxes: (N, 4) xyxy ground truth.
        prediction: ``boxes`` (M, 4) xyxy, ``scores`` (M,), optional ``masks`` (M, [1,] H, W) and
            ``keypoints`` (M, K, 3) (drawn for kept predictions only).
        score_thr / iou_thr: see :func:`classify_predictions`.
        show_scores: write each kept prediction's score above its box.
        thickness: line width (default from the image size).

    Returns:
        ``(canvas (H, W, 3) uint8 RGB, {"tp": ..., "fp": ..., "missed": ...} counts)``.
    """
    canvas = to_rgb_uint8(image)
    t = thickness or default_thickness(canvas.shape)
    boxes = _np(prediction["boxes"]).reshape(-1, 4)
    scores = _np(prediction["scores"]).ravel()
    split = classify_predictions(gt_boxes, boxes, scores, score_thr, iou_thr)
    if "masks" in prediction and len(boxes):
        draw_masks(canvas, _np(prediction["masks"])[split["kept"]], COLORS["mask"])
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    draw_boxes(canvas, gt[split["missed"]], COLORS["missed"], t)
    for kind in ("fp", "tp"):  # true positives drawn last, on top
        sel = split[kind]
        texts = [f"{s:.2f}" for s in scores[sel]] if show_scores else None
        draw_boxes(canvas, boxes[sel], COLORS[kind], t, texts)
    if "keypoints" in prediction and len(boxes):
        draw_points(canvas, _np(prediction["keypoints"])[split["kept"]], COLORS["point"], radius=t + 1)
    return canvas, {k: int(split[k].sum()) for k in ("tp", "fp", "missed")}


def compose_grid(
    panels: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    *,
    pad: int = 6,
    footer: str | None = None,
) -> np.ndarray:
    """Tile RGB panels into one image: ``panels[row][col]``, titles above each panel.

    Panels of one grid may differ in size; each cell is as large as the largest panel and the
    panel sits at its top-left. Titles are ``"{row_title} | {col_title}"`` strips of 16 px.

    Returns:
        (H_grid, W_grid, 3) uint8 RGB on a white background.
    """
    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    cell_h = max(p.shape[0] for r in panels for p in r)
    cell_w = max(p.shape[1] for r in panels for p in r)
    title_h = 16 if (row_titles or col_titles) else 0
    footer_h = 18 if footer else 0
    height = n_rows * (cell_h + title_h + pad) + pad + footer_h
    width = n_cols * (cell_w + pad) + pad
    grid = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            y = pad + r * (cell_h + title_h + pad) + title_h
            x = pad + c * (cell_w + pad)
            grid[y : y + panel.shape[0], x : x + panel.shape[1]] = panel
            parts = [t[i] for t, i in ((row_titles, r), (col_titles, c)) if t and i < len(t) and t[i]]
            if parts:
                _put_text(grid, " | ".join(parts), (x, y - 4), cell_w)
    if footer:
        _put_text(grid, footer, (pad, height - 5), width - 2 * pad)
    return grid


def save_overlay_grid(
    images: Sequence[Any],
    gt_boxes: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    image_titles: Sequence[str] | None = None,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
    show_scores: bool = False,
    thickness: int | None = None,
) -> Path:
    """Write a Fig. 10-like PNG: one column per image, the truth in row 1, one row per model.

    Args:
        images: per column an image (see :func:`to_rgb_uint8`).
        gt_boxes: per column (N, 4) xyxy ground truth.
        predictions: ``{model name: per column prediction}`` (``boxes``, ``scores``, ...).
        path: output PNG (its folder is created).
        image_titles: per column titles (e.g. file names).
        score_thr / iou_thr / show_scores / thickness: see :func:`render_predictions`.

    Returns:
        The written path.
    """
    if len(images) != len(gt_boxes):
        raise ValueError(f"got {len(images)} images but {len(gt_boxes)} ground-truth box sets")
    rows: list[list[np.ndarray]] = [
        [render_truth(img, gt, thickness=thickness) for img, gt in zip(images, gt_boxes)]
    ]
    row_titles = ["truth"]
    for name, preds in predictions.items():
        if len(preds) != len(images):
            raise ValueError(f"model {name!r}: got {len(preds)} predictions for {len(images)} images")
        row, counts = [], {"tp": 0, "fp": 0, "missed": 0}
        for img, gt, pred in zip(images, gt_boxes, preds):
            canvas, n = render_predictions(
                img,
                gt,
                pred,
                score_thr=score_thr,
                iou_thr=iou_thr,
                show_scores=show_scores,
                thickness=thickness,
            )
            row.append(canvas)
            counts = {k: counts[k] + n[k] for k in counts}
        rows.append(row)
        row_titles.append(f"{name} (TP {counts['tp']}, FP {counts['fp']}, missed {counts['missed']})")
    footer = f"blue: truth  green: TP  red: FP  orange: missed  (score >= {score_thr:g}, IoU >= {iou_thr:g})"
    grid = compose_grid(rows, row_titles, image_titles, footer=footer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], max_width: int) -> None:
    """Black text at ``origin`` (x, baseline y), shortened to fit ``max_width`` px."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    while len(text) > 4 and cv2.getTextSize(text, font, scale, 1)[0][0] > max_width:
        text = text[: len(text) - 4] + "..."
    cv2.putText(canvas, text, origin, font, scale, TEXT_COLOR, 1, cv2.LINE_AA)


def _np(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


__all__ = [
    "COLORS",
    "classify_predictions",
    "compose_grid",
    "default_thickness",
    "draw_boxes",
    "draw_masks",
    "draw_points",
    "render_predictions",
    "render_truth",
    "save_overlay_grid",
    "to_rgb_uint8",
]
