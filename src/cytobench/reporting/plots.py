"""Figures people would rather look at than read: precision/recall curves and the like."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_pr_grid(
    curves: Mapping[str, Mapping[str, Mapping[float, tuple[np.ndarray, np.ndarray]]]],
    path: str | Path | None = None,
    col_title: str = "eps = {:g} px",
) -> plt.Figure:
    """A grid of precision/recall curves: one row per group (e.g. D), one column per tolerance.

    Args:
        curves: ``{row_name: {method: {eps: (recall, precision)}}}``.
        path: where to save the figure (PNG); not saved when None.
        col_title: format of the column titles, given the tolerance.
    """
    rows = list(curves)
    cols = sorted({e for per_method in curves.values() for c in per_method.values() for e in c})
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.2 * len(cols), 2.9 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, eps in enumerate(cols):
            ax = axes[r][c]
            for method, by_eps in curves[row].items():
                if eps in by_eps:
                    recall, precision = by_eps[eps]
                    ax.step(recall, precision, where="post", label=method)
            ax.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
            ax.set_title(f"{row}, {col_title.format(eps)}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def close(figures: Sequence[plt.Figure] | plt.Figure) -> None:
    """Release figures once saved (long scripts otherwise accumulate them)."""
    for fig in figures if isinstance(figures, Sequence) else [figures]:
        plt.close(fig)
