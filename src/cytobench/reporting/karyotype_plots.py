"""Karyotyping figure: the 24 x 24 chromosome-class confusion matrix (rows true class, columns predicted).

Built with :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state to close), as in
:mod:`cytobench.reporting.qd_plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrix"]


def plot_confusion_matrix(
    confusion: np.ndarray,
    path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Heat map of a class confusion matrix with the count written in every nonzero cell.

    Colours are the row-normalised fractions (each true class sums to 1), so a rare class's errors show as
    clearly as a frequent one's; the annotations are the raw counts.

    Args:
        confusion: (C, C) counts, ``[t, p]`` = truths of class t predicted as p (e.g.
            :attr:`cytobench.evaluation.karyotype.KaryotypeResult.confusion`).
        path: where to save the figure (PNG); not saved when None.
        class_names: C axis labels; by default ``"1"`` .. ``"22"``, ``"X"``, ``"Y"`` for C = 24, else 1..C.
        title: figure title.

    Returns:
        The figure.
    """
    counts = np.asarray(confusion)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {counts.shape}")
    n = counts.shape[0]
    if class_names is None:
        if n == 24:
            from cytobench.simulate.chromosomes import CLASS_NAMES

            class_names = CLASS_NAMES
        else:
            class_names = [str(i + 1) for i in range(n)]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n} x {n} matrix")
    rows = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)

    fig = Figure(figsize=(0.36 * n + 2.2, 0.36 * n + 1.6))
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="fraction of the true class")
    font = max(4.0, min(8.0, 160.0 / n))
    for t, p in zip(*np.nonzero(counts)):
        colour = "white" if fraction[t, p] > 0.5 else "black"
        ax.text(p, t, str(int(counts[t, p])), ha="center", va="center", fontsize=font, color=colour)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(class_names), fontsize=font + 1)
    ax.set_yticks(ticks, labels=list(class_names), fontsize=font + 1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
