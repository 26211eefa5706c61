"""Figures of the brightfield tables, like thesis Figs. 5.1, 5.3 and 5.5: predictions beside the truth.

One row per test image, one column per model (the first model of each table row), the truth last. Panels
are the lower brightfield plane in grey with the thresholded heads tinted:

* cell heads (:func:`segmentation_panel`, Figs. 5.1 / 5.5): cytoplasm (the whole cell) green, nuclei blue,
  overlap red; the truth panel shows the same classes from the targets
  (:func:`cytobench.models.seunet.head_target`);
* overlap head (:func:`overlap_panel`, Fig. 5.3): the truth overlap white and the prediction above the
  overlap threshold (0.3) red over it, as the thesis draws it.

Panels are tiled by :func:`cytobench.reporting.overlays.compose_grid` into one PNG (OpenCV, no pyplot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COLORS",
    "instance_colors",
    "instance_panel",
    "overlap_panel",
    "save_instance_grid",
    "save_prediction_grid",
    "segmentation_panel",
    "truth_masks",
]

COLORS: dict[str, tuple[float, float, float]] = {
    "cytoplasm": (0.1, 0.85, 0.2),
    "nuclei": (0.2, 0.45, 1.0),
    "overlap": (1.0, 0.15, 0.15),
    "truth_overlap": (1.0, 1.0, 1.0),
}
TINT = 0.45  # opacity of a tinted class
MIN_PANEL = 256  # smaller panels are enlarged (nearest neighbour, integer factor) so titles fit above them
SHOWN_HEADS = ("cytoplasm", "nuclei", "overlap")  # painted in this order, the last on top


def _grey(plane: np.ndarray) -> np.ndarray:
    """(H, W) float plane -> (H, W, 3) float RGB, contrast-stretched to its 1st-99th percentiles."""
    low, high = np.percentile(plane, [1, 99])
    grey = np.clip((plane - low) / max(high - low, 1e-6), 0.0, 1.0)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _tint(rgb: np.ndarray, mask: np.ndarray, color: Sequence[float], alpha: float = TINT) -> None:
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(color)


def _uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _enlarged(panel: np.ndarray) -> np.ndarray:
    """``panel`` repeated ``k`` times along both axes: the smallest ``k`` giving a side >= MIN_PANEL."""
    factor = -(-MIN_PANEL // max(1, min(panel.shape[:2])))
    return panel if factor <= 1 else np.repeat(np.repeat(panel, factor, axis=0), factor, axis=1)


def truth_masks(target: Mapping[str, Any], heads: Sequence[str] = SHOWN_HEADS) -> dict[str, np.ndarray]:
    """``{head: (H, W) bool}`` of the target for each head whose map (``semantic`` / ``overlap``) it has."""
    from cytobench.models.seunet.heads import head_target

    out = {}
    for head in heads:
        if target.get("semantic" if head != "overlap" else "overlap") is not None:
            out[head] = head_target(head, target).numpy() == 1
    return out


def segmentation_panel(plane: np.ndarray, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8: the plane in grey, ``masks`` (head -> bool) tinted with :data:`COLORS`."""
    rgb = _grey(plane)
    for head in SHOWN_HEADS:
        if head in masks:
            _tint(rgb, np.asarray(masks[head], dtype=bool), COLORS[head])
    return _uint8(rgb)


def overlap_panel(plane: np.ndarray, truth: np.ndarray | None, predicted: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) uint8: truth overlap white, predicted overlap red on top (either may be None)."""
    rgb = 0.6 * _grey(plane)  # a darker plane keeps the white truth visible on bright background
    if truth is not None:
        _tint(rgb, np.asarray(truth, dtype=bool), COLORS["truth_overlap"], 0.6)
    if predicted is not None:
        _tint(rgb, np.asarray(predicted, dtype=bool), COLORS["overlap"], 0.6)
    return _uint8(rgb)


def save_prediction_grid(
    path: str | Path,
    columns: Mapping[str, Sequence[tuple[np.ndarray, Mapping[str, np.ndarray], Mapping[str, Any]]]],
    thresholds: Mapping[str, float],
    *,
    overlap_only: bool = False,
    footer: str | None = None,
) -> Path:
    """Write the grid: per image a row, per model a column of its predictions, then the truth.

    Args:
        path: output PNG (its folder is created).
        columns: ``{model name: per image (plane, {head: probability}, target)}`` (every model the same
            images,
            :func:`cytobench.reproduce.brightfield_eval.predict_images`).
        thresholds: head -> threshold (a map ``> threshold`` is drawn).
        overlap_only: draw the overlap head against the truth overlap (Fig. 5.3) instead of every head.
        footer: a line under the grid (default: the colour legend).

    Returns:
        The written path.
    """
    import cv2

    from cytobench.reporting.overlays import compose_grid

    names = list(columns)
    if not names:
        raise ValueError("save_prediction_grid needs at least one model")
    n_images = len(columns[names[0]])
    rows = []
    for i in range(n_images):
        plane, _, target = columns[names[0]][i]
        truth = truth_masks(target)
        row = []
        for name in names:
            _, maps, _ = columns[name][i]
            predicted = {h: np.asarray(p) > thresholds[h] for h, p in maps.items() if h in SHOWN_HEADS}
            if overlap_only:
                row.append(overlap_panel(plane, truth.get("overlap"), predicted.get("overlap")))
            else:
                row.append(segmentation_panel(plane, predicted))
        if overlap_only:
            row.append(overlap_panel(plane, truth.get("overlap"), None))
        else:
            row.append(segmentation_panel(plane, truth))
        rows.append([_enlarged(panel) for panel in row])
    legend = (
        f"white: true overlap, red: predicted overlap (> {thresholds['overlap']:g})"
        if overlap_only
        else "green: cell (cytoplasm head), blue: nuclei, red: overlap"
    )
    grid = compose_grid(
        rows, [f"test image {i + 1}" for i in range(n_images)], [*names, "truth"], footer=footer or legend
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


# ------------------------------------------------------------------------------------------ instances
def instance_colors(n: int) -> np.ndarray:
    """(n, 3) float RGB in [0, 1], hues spaced by the golden angle: neighbours in index order differ."""
    import colorsys

    return np.array([colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0) for i in range(n)]).reshape(-1, 3)


def instance_panel(plane: np.ndarray, masks: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """(H, W, 3) uint8: the plane in grey, each instance tinted in its own colour with its outline drawn.

    Tints compose one after the other, so a pixel of two instances shows both colours mixed: overlaps stay
    visible (thesis Figs. 5.6-5.8).
    """
    import cv2

    rgb = _grey(plane)
    masks = np.asarray(masks, dtype=bool).reshape(-1, *plane.shape[-2:])
    colors = instance_colors(len(masks))
    for mask, color in zip(masks, colors):
        _tint(rgb, mask, color, alpha)
    for mask, color in zip(masks, colors):
        edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        rgb[edge] = color
    return _uint8(rgb)


def save_instance_grid(
    path: str | Path,
    columns: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    truth: Sequence[np.ndarray],
    footer: str | None = None,
) -> Path:
    """Per test image a row: each model's instances (one colour each), then the truth's.

    Args:
        path: output PNG (its folder is created).
        columns: ``{model name: per image (plane (H, W), masks (M, H, W) bool)}``.
        truth: per image the true (N, H, W) masks.
        footer: a line under the grid.
    """
    import cv2

    from cytobench.reporting.overlays import compose_grid

    names = list(columns)
    if not names:
        raise ValueError("save_instance_grid needs at least one model")
    rows = []
    for i, true_masks in enumerate(truth):
        plane = columns[names[0]][i][0]
        row = [instance_panel(columns[name][i][0], columns[name][i][1]) for name in names]
        row.append(instance_panel(plane, true_masks))
        rows.append([_enlarged(panel) for panel in row])
    counts = "one colour per instance; mixed colours where instances overlap"
    grid = compose_grid(
        rows, [f"test image {i + 1}" for i in range(len(truth))], [*names, "truth"], footer=footer or counts
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
