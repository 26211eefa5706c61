"""Figures are written and show what they are given."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cytobench.evaluation.curves import miss_rate_fppi
from cytobench.reporting.plots import close, plot_mr_fppi, plot_pr_grid, plot_repeat_boxes


def test_mr_fppi_plot_from_detections(tmp_path: Path) -> None:
    tp = np.array([True, True, False, True, False, False])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    fppi, mr = miss_rate_fppi(tp, scores, n_gt=4, n_images=2)
    fig = plot_mr_fppi({"model": (fppi, mr)}, tmp_path / "mr.png", mr2={"model": 0.25})
    (line,) = fig.axes[0].get_lines()[:1]
    # ranked: TP TP FP TP FP FP over 2 images and 4 objects -> fppi 0, 0, .5, .5, 1, 1.5 and
    # miss rate .75, .5, .5, .25, .25, .25; points without a false positive are left off the log axis
    assert np.allclose(line.get_xdata(), [0.5, 0.5, 1.0, 1.5])
    assert np.allclose(line.get_ydata(), [0.5, 0.25, 0.25, 0.25])
    assert "25.00%" in fig.axes[0].get_legend().get_texts()[0].get_text()
    assert (tmp_path / "mr.png").stat().st_size > 0
    close(fig)


def test_pr_grid_layout(tmp_path: Path) -> None:
    curve = (np.array([0.0, 0.5, 1.0]), np.array([1.0, 1.0, 0.5]))
    fig = plot_pr_grid(
        {"D=1": {"a": {1.0: curve, 2.0: curve}}, "D=2": {"a": {1.0: curve}}}, tmp_path / "pr.png"
    )
    assert len(fig.axes) == 4 and (tmp_path / "pr.png").is_file()
    close(fig)


def test_repeat_boxes_one_subplot_per_metric(tmp_path: Path) -> None:
    values = {
        "WCR": {"SOFT": [60.0, 62.0, 61.0], "EG": [63.0, 64.0, float("nan")]},
        "AER": {"SOFT": [1.2, 1.3, 1.1], "EG": [1.1, 1.0, 1.2]},
    }
    fig = plot_repeat_boxes(values, tmp_path / "boxes.png", p_values={"WCR": 0.0123}, p_label="EG vs SOFT p")
    wcr, aer = fig.axes
    assert wcr.get_title() == "WCR\nEG vs SOFT p = 0.0123" and aer.get_title() == "AER"
    assert [t.get_text() for t in wcr.get_xticklabels()] == ["SOFT", "EG"]
    # the repeats are drawn over the boxes; the NaN repeat is left out
    points = [line for line in wcr.get_lines() if line.get_marker() == "."]
    assert [list(line.get_ydata()) for line in points] == [[60.0, 62.0, 61.0], [63.0, 64.0]]
    assert (tmp_path / "boxes.png").stat().st_size > 0
    close(fig)
