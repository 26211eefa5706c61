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


def plot_mr_fppi(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path | None = None,
    mr2: Mapping[str, float] | None = None,
) -> plt.Figure:
    """Miss rate against false positives per image on log-log axes (DeepACEv2 Fig. 8).

    Args:
        curves: ``{method: (fppi, miss_rate)}`` as returned by
            :func:`cytobench.evaluation.curves.miss_rate_fppi`.
        path: where to save the figure (PNG); not saved when None.
        mr2: optional ``{method: MR^-2}`` shown in the legend.
    """
    fig, ax = plt.subplots(figsize=(4.5, 4.0))
    for method, (fppi, miss_rate) in curves.items():
        label = f"{method} (MR$^{{-2}}$ {100 * mr2[method]:.2f}%)" if mr2 and method in mr2 else method
        keep = np.asarray(fppi) > 0  # log axes: the operating points before the first false positive sit at 0
        ax.step(np.asarray(fppi)[keep], np.asarray(miss_rate)[keep], where="post", label=label)
    for ref in np.logspace(-2, 0, 9):  # the nine reference points MR^-2 averages over
        ax.axvline(ref, color="0.85", lw=0.6, zorder=0)
    ax.set(
        xscale="log", yscale="log", xlim=(1e-3, 1e1), xlabel="false positives per image", ylabel="miss rate"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_repeat_boxes(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path | None = None,
    p_values: Mapping[str, float] | None = None,
    p_label: str = "p",
    ncols: int = 3,
) -> plt.Figure:
    """Box plots of metrics over repeated runs, one subplot per metric (DeepACEv2 Fig. 7).

    Args:
        values: ``{metric: {method: one value per repeat}}``; NaN values are left out.
        path: where to save the figure (PNG); not saved when None.
        p_values: optional ``{metric: p-value}`` shown in the subplot titles as ``{p_label} = p``.
        p_label: what the p-values compare, e.g. ``"EG vs SOFT p"``.
        ncols: subplots per row.
    """
    metrics = list(values)
    ncols = max(1, min(ncols, len(metrics)))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.4 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        methods = list(values[metric])
        data = [np.asarray(values[metric][m], dtype=np.float64) for m in methods]
        data = [d[~np.isnan(d)] for d in data]
        ax.boxplot(data)
        ax.set_xticks(
            range(1, len(methods) + 1), methods
        )  # (boxplot's own labels argument was renamed in 3.9)
        for x, d in enumerate(data, start=1):  # the repeats themselves: with few of them a box says little
            ax.plot(np.full(d.size, x), d, ".", color="0.3", ms=4)
        title = metric
        if p_values and metric in p_values:
            title += f"\n{p_label} = {p_values[metric]:.3g}"
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=35, labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes.flat[len(metrics) :]:
        ax.set_axis_off()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
