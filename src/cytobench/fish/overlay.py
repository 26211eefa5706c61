"""Overlays like the paper's Fig. 3: nucleus outlines by class, detected signals per channel, counts.

Colours follow the paper's Fig. 3: whole nuclei outlined in green, destroyed ones in red; a red-probe
(chr21) signal is marked by a red circle, a green-probe (X) signal by a green circle; each whole nucleus is
labelled ``<id>: <n_red>R<n_green>G`` in white. The background is the image's RGB (red probe, green probe,
DAPI) with each channel stretched (:func:`stretch_rgb`; "brightness/contrast boost", as in Fig. 1).
Point convention: spot ``(x, y)`` in COCO pixel coordinates (pixel centres at +0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cytobench.fish.channels import FishImage
from cytobench.fish.segmenters import WHOLE, Nuclei
from cytobench.io.images import write_image

__all__ = ["OVERLAY_COLORS", "draw_overlay", "stretch_rgb"]

OVERLAY_COLORS: dict[str, tuple[int, int, int]] = {
    "whole": (0, 255, 0),
    "destroyed": (255, 40, 40),
    "red": (255, 60, 60),
    "green": (60, 255, 60),
    "text": (255, 255, 255),
}


def stretch_rgb(image: FishImage) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB display: each channel from its 1st percentile (background) to a high percentile.

    The probe channels use their 99.95th percentile (at least 0.3 above background, so that an image with few
    signals does not blow up its haze), DAPI its 99.5th; absent probe channels (nuclei-only images) are black.
    """
    planes = []
    rgb = ((image.plane("red"), 99.95, 0.3), (image.plane("green"), 99.95, 0.3), (image.dapi, 99.5, 0.05))
    for plane, q, floor in rgb:
        lo, top = np.percentile(plane, [1.0, q]) if plane.size else (0.0, 1.0)
        span = max(float(top) - float(lo), floor)
        planes.append(np.clip((plane - lo) / span, 0.0, 1.0))
    return np.round(np.stack(planes, axis=-1) * 255.0).astype(np.uint8)


def draw_overlay(
    image: FishImage,
    nuclei: Nuclei,
    spots: dict[str, np.ndarray],
    counts: Sequence[tuple[int, int] | None],
    path: str | Path | None = None,
) -> np.ndarray:
    """Draw outlines, signals and counts over the stretched image.

    Args:
        image: the FISH image.
        nuclei: its nuclei (``(N, H, W)`` masks, labels 1 whole / 2 destroyed).
        spots: ``{"red": (M, 2), "green": (K, 2)}`` detected signal centres ``(x, y)``.
        counts: per nucleus ``(n_red, n_green)``, None for destroyed nuclei.
        path: when given, the overlay is also written there as PNG.

    Returns:
        ``(H, W, 3)`` uint8 RGB overlay.
    """
    canvas = np.ascontiguousarray(stretch_rgb(image))
    h, w = image.shape
    scale = max(h, w) / 512.0
    thick = max(1, int(round(scale)))
    radius = max(4, int(round(5 * scale)))
    for mask, label in zip(nuclei.masks, nuclei.labels):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        color = OVERLAY_COLORS["whole" if label == WHOLE else "destroyed"]
        cv2.drawContours(canvas, contours, -1, color, thick)
    for channel in ("red", "green"):
        for x, y in np.asarray(spots.get(channel, np.zeros((0, 2)))).reshape(-1, 2):
            centre = (int(round(x - 0.5)), int(round(y - 0.5)))
            cv2.circle(canvas, centre, radius, OVERLAY_COLORS[channel], thick, lineType=cv2.LINE_AA)
    for k, (mask, count) in enumerate(zip(nuclei.masks, counts)):
        if count is None or not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        org = (int(xs.min()), max(int(ys.min()) - 3, 10))
        text = f"{k}: {count[0]}R{count[1]}G"
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, OVERLAY_COLORS["text"], thick)
    if path is not None:
        write_image(path, canvas)
    return canvas
