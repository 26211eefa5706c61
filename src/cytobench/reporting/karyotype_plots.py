"""Karyotyping figures: the 24 x 24 chromosome-class confusion matrix (rows true class, columns predicted), and
predicted boxes labelled with class and confidence on a karyogram or a spread, one panel per model (KTH thesis
Figs. 5.1-5.4, :func:`plot_class_detections`).

Built with :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state to close), as in
:mod:`cytobench.reporting.qd_plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["DENVER_COLOURS", "plot_class_detections", "plot_confusion_matrix"]

#: box colour per Denver group (KTH thesis Table 3.1: A-G; the sex chromosomes have their own)
DENVER_COLOURS = {
    "A": "#1f77b4",
    "B": "#ff7f0e",
    "C": "#2ca02c",
    "D": "#d62728",
    "E": "#9467bd",
    "F": "#8c564b",
    "G": "#e377c2",
    "X": "#17becf",
    "Y": "#bcbd22",
}


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


def _class_colour(label: int) -> str:
    """Box colour of a class id 1-24: its Denver group's, X and Y their own (grey for an unknown id)."""
    from cytobench.simulate.chromosomes import CLASSES

    if not 1 <= label <= len(CLASSES):
        return "#7f7f7f"
    cls = CLASSES[label - 1]
    return DENVER_COLOURS.get(cls.name if cls.name in ("X", "Y") else cls.group, "#7f7f7f")


def plot_class_detections(
    image: np.ndarray,
    panels: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path | None = None,
    *,
    score_thr: float = 0.5,
    columns: int | None = None,
    title: str | None = None,
) -> Figure:
    """One image with each model's predicted boxes, labelled ``<class> <confidence>`` (thesis Figs. 5.1-5.4).

    Boxes are coloured by Denver group (:data:`DENVER_COLOURS`); a panel shows the detections scored
    >= ``score_thr`` (the most confident drawn last, on top) and its title says how many.

    Args:
        image: (H, W) or (H, W, C) image, floats in [0, 1] or uint8.
        panels: ``{panel title: {"boxes": (M, 4) xyxy, "labels": (M,) class ids 1-24, "scores": (M,)}}``,
            in display order; a panel without ``scores`` (the truth) is labelled with the class only.
        path: where to save the figure (PNG); not saved when None.
        score_thr: detections scored below are not drawn.
        columns: panels per row (default: all in one row up to 3, then 3).
        title: figure title.

    Returns:
        The figure.
    """
    from cytobench.simulate.chromosomes import CLASS_NAMES

    if not panels:
        raise ValueError("plot_class_detections needs at least one panel")
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    height, width = pixels.shape[:2]
    n = len(panels)
    cols = max(1, min(columns or 3, n))
    rows = -(-n // cols)
    scale = 5.0 / max(width, 1)
    fig = Figure(figsize=(cols * width * scale + 0.2, rows * (height * scale + 0.45) + (0.3 if title else 0)))
    font = max(3.5, min(5.5, 1600.0 / max(width, 1)))
    for k, (name, pred) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(
            pixels,
            cmap="gray" if pixels.ndim == 2 else None,
            vmin=0,
            vmax=1 if pixels.dtype.kind == "f" else 255,
        )
        boxes = np.asarray(pred.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(pred.get("labels", np.zeros(0)), dtype=np.int64).ravel()
        with_scores = "scores" in pred  # the truth: class only
        scores = np.asarray(pred["scores"] if with_scores else np.ones(len(boxes)), dtype=np.float64).ravel()
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(
                f"panel {name!r}: {len(boxes)} boxes, {len(labels)} labels, {len(scores)} scores"
            )
        shown = np.flatnonzero(scores >= score_thr)
        for i in shown[np.argsort(scores[shown], kind="stable")]:  # most confident drawn last (on top)
            x0, y0, x1, y1 = boxes[i]
            colour = _class_colour(int(labels[i]))
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=0.8))
            label = int(labels[i])
            name_i = CLASS_NAMES[label - 1] if 1 <= label <= len(CLASS_NAMES) else "?"
            ax.text(
                x0,
                y0 - 1,
                f"{name_i} {scores[i]:.2f}" if with_scores else name_i,
                fontsize=font,
                color="white",
                va="bottom",
                ha="left",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5, "alpha": 0.85},
                clip_on=True,
            )
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_title(f"{name}: {len(shown)} boxes", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
