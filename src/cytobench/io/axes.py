"""Reduce an N-d microscopy array with named axes (tifffile / czifile style) to the planes to keep."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

import numpy as np


def select_planes(
    data: np.ndarray, axes: str, keep: Collection[str], z_project: Literal["first", "max"] = "first"
) -> tuple[np.ndarray, list[str]]:
    """Keep the axes in ``keep`` whole; take index 0 of every other axis, or the max over Z.

    Args:
        data: array whose dimensions are named by the letters of ``axes`` (e.g. ``"TCZYX"``).
        axes: one letter per dimension of ``data``.
        keep: the letters of the axes to keep (e.g. ``{"Y", "X", "C"}``).
        z_project: ``"first"`` plane or ``"max"`` intensity projection along ``Z``.

    Returns:
        The reduced array and the letters of its remaining axes, in their original order.
    """
    index: list[Any] = []
    for i, axis in enumerate(axes):
        if axis in keep:
            index.append(slice(None))
        elif axis == "Z" and z_project == "max":
            data = data.max(axis=i, keepdims=True)
            index.append(0)
        else:
            index.append(0)
    return data[tuple(index)], [a for a in axes if a in keep]
