"""NumPy box overlap measures used by the evaluators.

All boxes are ``xyxy`` in absolute pixels (``x1 <= x2``, ``y1 <= y2``). A box with
``x2 < x1`` or ``y2 < y1`` is treated as empty (zero width / height), and every ratio
whose denominator is zero is defined as 0, so degenerate boxes never produce NaN.
"""

from __future__ import annotations

import numpy as np


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    """Return ``boxes`` as a float64 (N, 4) array (an empty input becomes (0, 4))."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box.

    Args:
        boxes: (N, 4) xyxy.

    Returns:
        (N,) float64 areas; inverted boxes have area 0.
    """
    b = _as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas.

    Args:
        a: (N, 4) xyxy.
        b: (M, 4) xyxy.

    Returns:
        (N, M) float64, ``out[i, j] = |a_i ∩ b_j|``.
    """
    a = _as_boxes(a)
    b = _as_boxes(b)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0.0, None) * np.clip(h, 0.0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union.

    Args:
        a: (N, 4) xyxy.
        b: (M, 4) xyxy.

    Returns:
        (N, M) float64 in [0, 1], ``out[i, j] = |a_i ∩ b_j| / |a_i ∪ b_j|`` (0 where the union is 0).
    """
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iog(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over the area of the second argument ("ground truth").

    ``IoG(A, G) = |A ∩ G| / |G|`` as in DeepACEv2 (Sec. 2.5 and Eq. 14). The denominator
    is always the box of ``b``; e.g. ``box_iog(gt, gt)[j, i] = IoG(G_j, G_i)``, the fraction
    of ``G_i`` covered by ``G_j``.

    Args:
        a: (N, 4) xyxy, the overlapping boxes.
        b: (M, 4) xyxy, the boxes whose area is the denominator.

    Returns:
        (N, M) float64 in [0, 1], ``out[i, j] = |a_i ∩ b_j| / |b_j|`` (0 where ``|b_j| = 0``).
    """
    inter = box_intersection(a, b)
    area_b = np.broadcast_to(box_area(b)[None, :], inter.shape)
    return np.divide(inter, area_b, out=np.zeros_like(inter), where=area_b > 0)
