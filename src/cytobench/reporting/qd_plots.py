"""Figures of the QD simulator: a sample grid (paper Fig. 1) and a localisation overlay (paper Fig. 3).

All coordinates are COCO pixels (pixel (row i, col j) covers ``[j, j+1) x [i, i+1)``); images are drawn
with ``extent=(0, W, H, 0)`` so that markers and trajectories land where the truth says. Figures are
built with :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state to close).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cytobench.simulate.qd import QDBatch

__all__ = ["plot_overlay", "plot_overlay_grid", "plot_sample_grid", "save_axes_figure", "top_location"]

_PREDICTION_STYLES = [("tab:blue", "x"), ("tab:purple", "+"), ("tab:orange", "1"), ("tab:red", "2")]


def plot_sample_grid(batch: QDBatch, n: int = 9, path: str | Path | None = None, ncols: int = 3) -> Figure:
    """Grid of simulated images with their trajectory, start (green), end (cyan) and centroid (green x).

    Args:
        batch: a batch from ``simulate_qd_batch(..., return_trajectories=True)``.
        n: number of images shown (the first ``n``).
        path: where to save the figure (PNG); not saved when None.
        ncols: images per row.

    Returns:
        The figure.

    Raises:
        ValueError: the batch has no trajectories or ``n`` is not positive.
    """
    if batch.positions_um is None or batch.params is None:
        raise ValueError("batch has no trajectories: simulate with return_trajectories=True")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    n = min(n, len(batch))
    rows = -(-n // ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.5 * rows))
    axes = fig.subplots(rows, ncols, squeeze=False)
    trajectories = batch.positions_um[:n, :, :2] / batch.params.pixel_size_um
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_axis_off()
            continue
        plot_overlay(batch.counts[k], trajectories[k], batch.centroids_px[k], {}, ax=ax, legend=False)
        ax.set_title(f"D = {batch.diffusion[k]:.2f} um$^2$/s", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_overlay(
    image: np.ndarray,
    trajectory_px: np.ndarray | None,
    centroid: tuple[float, float] | np.ndarray,
    predictions: Mapping[str, tuple[float, float]] | None = None,
    ax: Axes | None = None,
    legend: bool = True,
    cmap: str = "gray",
) -> Axes:
    """One image with the true trajectory, its centroid and the predicted locations of several methods.

    Args:
        image: (H, W) counts or intensities.
        trajectory_px: (T, 2) particle xy in pixels, or None to skip the trajectory.
        centroid: true centroid ``(x, y)`` in pixels.
        predictions: ``{method name: (x, y)}`` predicted locations in pixels.
        ax: axes to draw into; a new figure's axes when None.
        legend: draw a legend.
        cmap: colormap of the image.

    Returns:
        The axes (``ax.figure`` is the figure).
    """
    if ax is None:
        ax = Figure(figsize=(3.4, 3.3)).subplots()
    image = np.asarray(image)
    height, width = image.shape[:2]
    ax.imshow(image, cmap=cmap, extent=(0, width, height, 0), interpolation="nearest")
    if trajectory_px is not None:
        traj = np.asarray(trajectory_px, dtype=float)
        ax.plot(traj[:, 0], traj[:, 1], color="lime", lw=0.7, alpha=0.8, label="trajectory")
        ax.plot(*traj[0], "o", mfc="none", mec="lime", ms=7, label="start")
        ax.plot(*traj[-1], "o", mfc="none", mec="cyan", ms=7, label="end")
    ax.plot(float(centroid[0]), float(centroid[1]), "x", color="lime", ms=8, mew=2, label="centroid")
    for k, (name, (x, y)) in enumerate((predictions or {}).items()):
        color, marker = _PREDICTION_STYLES[k % len(_PREDICTION_STYLES)]
        ax.plot(float(x), float(y), marker, color=color, ms=9, mew=2, label=name)
    ax.set(xlim=(0, width), ylim=(height, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    if legend:
        ax.legend(fontsize=6, loc="upper right", framealpha=0.6)
    return ax


def top_location(prediction: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(x, y)`` of the highest-scoring detection of a prediction dict (keypoint 0, else box centre).

    Args:
        prediction: ``scores`` (M,) and ``keypoints`` (M, K, 3) or ``boxes`` (M, 4) xyxy (numpy or torch).

    Returns:
        The location, or None when the prediction is empty.
    """
    scores = np.asarray(prediction.get("scores", []), dtype=float).reshape(-1)
    if scores.size == 0:
        return None
    best = int(np.argmax(scores))
    if prediction.get("keypoints") is not None and len(prediction["keypoints"]):
        x, y = np.asarray(prediction["keypoints"], dtype=float)[best, 0, :2]
    else:
        x0, y0, x1, y1 = np.asarray(prediction["boxes"], dtype=float)[best]
        x, y = (x0 + x1) / 2, (y0 + y1) / 2
    return float(x), float(y)


def plot_overlay_grid(
    overlays: Sequence[tuple[float, QDBatch, Mapping[str, Sequence[Mapping[str, Any]]]]],
    path: str | Path | None = None,
    per_row: int = 4,
) -> Figure:
    """Paper Fig. 3 for several test sets: one row per D, the top prediction of each method per image.

    Args:
        overlays: ``(D, batch with trajectories, {method: per-image prediction dicts})`` per row.
        path: where to save the figure (PNG); not saved when None.
        per_row: images per row (the first ones of each batch).

    Returns:
        The figure.
    """
    if not overlays:
        raise ValueError("overlays is empty")
    fig = Figure(figsize=(2.6 * per_row, 2.6 * len(overlays)))
    axes = fig.subplots(len(overlays), per_row, squeeze=False)
    for r, (diffusion, batch, predictions) in enumerate(overlays):
        scale = batch.params.pixel_size_um if batch.params is not None else 1.0
        for c in range(per_row):
            ax = axes[r][c]
            if c >= len(batch):
                ax.set_axis_off()
                continue
            traj = None if batch.positions_um is None else batch.positions_um[c, :, :2] / scale
            tops = {name: top_location(preds[c]) for name, preds in predictions.items()}
            found = {name: xy for name, xy in tops.items() if xy is not None}
            plot_overlay(batch.counts[c], traj, batch.centroids_px[c], found, ax=ax, legend=(r, c) == (0, 0))
            ax.set_title(f"D = {diffusion:g} um$^2$/s", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def save_axes_figure(ax: Axes, path: str | Path, **kwargs: Any) -> Path:
    """Save the figure holding ``ax`` (PNG by suffix) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=kwargs.pop("dpi", 120), **kwargs)
    return path
