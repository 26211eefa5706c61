"""Figures of the DeepACEv2 test-set tables: Fig. 7 (repeats), Fig. 8 (MR-FPPI) and Fig. 10 (overlays).

The MR-FPPI curve itself is metric maths: :func:`cytobench.evaluation.mr_fppi.mr_fppi_curve`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cytobench.reproduce.base import TestSet


def pick_examples(
    targets: Sequence[Mapping[str, Any]],
    first: Sequence[Mapping[str, Any]],
    second: Sequence[Mapping[str, Any]],
    n: int = 2,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
) -> list[int]:
    """Indices of the ``n`` images where ``second`` makes the fewest errors (FP + FN) relative to ``first``.

    Ties go to the image where ``first`` errs most (the harder image), then to the lower index.
    """
    from cytobench.reporting.overlays import classify_predictions

    gains = []
    for k, (target, a, b) in enumerate(zip(targets, first, second)):
        errors = []
        for pred in (a, b):
            split = classify_predictions(target["boxes"], pred["boxes"], pred["scores"], score_thr, iou_thr)
            errors.append(int(split["fp"].sum() + split["missed"].sum()))
        gains.append((errors[1] - errors[0], -errors[0], k))
    return [k for _, _, k in sorted(gains)[:n]]


def plot_test_figures(
    test_set: TestSet,
    shown: Mapping[str, Sequence[Mapping[str, Any]]],
    mr2: Mapping[str, float],
    compared: Sequence[str],
    fig8: Path,
    fig10: Path,
) -> None:
    """Fig. 8 (MR-FPPI curve of every row) and Fig. 10 (truth and the ``compared`` rows on the two images
    where the last of them gains most over the first).

    Args:
        test_set: the test set the rows were evaluated on.
        shown: ``{row: predictions per image}`` (of each role's first checkpoint).
        mr2: ``{row: MR^-2}`` for the legend.
        compared: the rows of Fig. 10 (e.g. Faster R-CNN and DeepACEv2 EG).
        fig8 / fig10: output files.
    """
    from cytobench.evaluation.mr_fppi import mr_fppi_curve
    from cytobench.io.images import read_image_tensor
    from cytobench.reporting.overlays import save_overlay_grid
    from cytobench.reporting.plots import close, plot_mr_fppi

    targets, paths = test_set.load_targets()
    curves = {row: mr_fppi_curve(targets, preds) for row, preds in shown.items()}
    close(plot_mr_fppi(curves, fig8, mr2=dict(mr2)))
    picks = pick_examples(targets, shown[compared[0]], shown[compared[-1]]) if compared else []
    save_overlay_grid(
        [read_image_tensor(paths[k]) for k in picks],
        [targets[k]["boxes"] for k in picks],
        {row: [shown[row][k] for k in picks] for row in compared},
        fig10,
        image_titles=[paths[k].name for k in picks],
    )


def plot_repeats(
    repeats: Mapping[str, Sequence[Mapping[str, float]]],
    titles: Mapping[str, str],
    labels: Mapping[str, str],
    paired: Mapping[str, float],
    path: Path,
) -> None:
    """Fig. 7: a box per row and Table 2 metric (percent), titled with the EG vs SOFT p-value if any.

    Args:
        repeats: ``{row: [metrics of each repeat]}`` (``enum/<column>`` fractions).
        titles: ``{column: panel title}``, in panel order.
        labels: ``{row: short label}``.
        paired: ``{"enum/<column>": EG vs SOFT paired p-value}``.
        path: output file.
    """
    from cytobench.reporting.plots import close, plot_repeat_boxes

    values = {
        title: {
            labels[row]: [100 * m.get(f"enum/{c}", float("nan")) for m in runs]
            for row, runs in repeats.items()
        }
        for c, title in titles.items()
    }
    p_values = {title: paired[f"enum/{c}"] for c, title in titles.items() if f"enum/{c}" in paired}
    close(plot_repeat_boxes(values, path, p_values=p_values, p_label="EG vs SOFT p (paired)"))
