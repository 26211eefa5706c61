"""Sample grid of the brightfield simulator (as thesis Figs. 4.3 / 4.6): per sample the lower and upper
brightfield planes, the phase-contrast image and the truth drawn over the lower plane.

The truth overlay colours every cell's visible outline (one colour per cell), tints nuclei blue and
overlap regions (two or more amodal masks) red. Figures are built with :class:`matplotlib.figure.Figure`
(Agg canvas, no pyplot state to close).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from cytobench.data.rasterize import inner_border
from cytobench.simulate.brightfield import BrightfieldSample, render_brightfield_sample

__all__ = ["plot_brightfield_samples", "save_brightfield_sample_figure", "truth_overlay"]

_NUCLEUS_TINT = np.array([0.2, 0.45, 1.0])
_OVERLAP_TINT = np.array([1.0, 0.15, 0.15])


def truth_overlay(sample: BrightfieldSample) -> np.ndarray:
    """(H, W, 3) float RGB: the lower plane in grey, nuclei blue, overlaps red, visible outlines coloured."""
    grey = sample.lower.astype(np.float64) / 255.0
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    nuclei = sample.truth.semantic == 2
    rgb[nuclei] = 0.55 * rgb[nuclei] + 0.45 * _NUCLEUS_TINT
    overlap = sample.truth.overlap.astype(bool)
    rgb[overlap] = 0.45 * rgb[overlap] + 0.55 * _OVERLAP_TINT
    palette = colormaps["tab10"].colors
    for k, (cell, seen) in enumerate(zip(sample.layout.cells, sample.truth.visible)):
        outline = inner_border(seen, 2)
        rgb[cell.window][outline] = palette[k % len(palette)]
    return rgb


def plot_brightfield_samples(samples: Sequence[BrightfieldSample], path: str | Path | None = None) -> Figure:
    """One row per sample: lower plane, upper plane, phase contrast, truth overlay.

    Args:
        samples: simulated samples (:func:`~cytobench.simulate.brightfield.render_brightfield_sample`).
        path: where to save the figure (PNG); not saved when None.

    Returns:
        The figure.

    Raises:
        ValueError: no samples.
    """
    if not samples:
        raise ValueError("plot_brightfield_samples needs at least one sample")
    titles = ("brightfield, lower plane", "brightfield, upper plane", "phase contrast", "truth")
    fig = Figure(figsize=(11.0, 2.9 * len(samples)))
    axes = fig.subplots(len(samples), 4, squeeze=False)
    for row, sample in zip(axes, samples):
        panels = (sample.lower, sample.upper, sample.phase, truth_overlay(sample))
        for ax, panel, title in zip(row, panels, titles):
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=9)
        n = len(sample.layout.cells)
        row[3].set_title(
            f"truth: {n} cells, {sample.layout.overlap_fraction:.0%} overlapping (red)", fontsize=9
        )
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
    return fig


def save_brightfield_sample_figure(
    path: str | Path, n: int = 2, size: int = 512, seed: int = 0, overlap_fraction: float = 0.3
) -> Figure:
    """Simulate ``n`` samples of ``size`` px (image ``i`` from ``default_rng([seed, i])``) and save their grid."""
    samples = [
        render_brightfield_sample(np.random.default_rng([seed, i]), size, size, overlap_fraction)
        for i in range(n)
    ]
    return plot_brightfield_samples(samples, path)
