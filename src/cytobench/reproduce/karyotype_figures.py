"""Figures of the karyotyping tables (:mod:`cytobench.reproduce.karyotype_tables`): the first test image with
the truth and each model's boxes labelled with class and confidence (thesis Figs. 5.1-5.4), and each row's
24 x 24 confusion matrix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.reproduce.base import TestSet
from cytobench.reproduce.karyotype_models import KIND_TITLES, truth_class_map

__all__ = ["confusion_figures", "prediction_figures"]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def prediction_figures(
    out_dir: Path, details: Mapping[str, Any], test_sets: Mapping[str, Any], score_thr: float
) -> list[str]:
    """``fig5_1_4_<kind>.png``: the first test image, the truth and each row's first model (Figs. 5.1-5.4)."""
    from cytobench.io.images import read_image
    from cytobench.reporting.karyotype_plots import plot_class_detections
    from cytobench.reproduce.base import load_test_data

    written = []
    for kind, rows in details.items():
        targets, paths = load_test_data(
            test_sets[kind]["ann_file"], Path(test_sets[kind]["ann_file"]).parent / "images"
        )
        truth_map = truth_class_map(TestSet(Path(test_sets[kind]["ann_file"]), paths[0].parent, 0))
        truth = targets[0]
        panels = {
            "truth": {
                "boxes": np.asarray(truth["boxes"]),
                "labels": np.array([truth_map[int(v)] for v in truth["labels"]], np.int64),
            }
        }
        for row, ds in rows.items():  # panel titles: the row names alone (the table holds the notes)
            panels[row] = {k: np.asarray(v) for k, v in ds[0]["predictions"][0].items()}
        name = f"fig5_1_4_{kind}.png"
        plot_class_detections(
            read_image(paths[0]).array,
            panels,
            out_dir / name,
            score_thr=score_thr,
            title=f"{KIND_TITLES[kind]}, test image {paths[0].name}: boxes scored >= {score_thr:g} (class, confidence)",
        )
        written.append(name)
    return written


def confusion_figures(out_dir: Path, details: Mapping[str, Any]) -> list[str]:
    """``confusion_<kind>_<row>.png``: each row's first repeat."""
    from cytobench.reporting.karyotype_plots import plot_confusion_matrix

    written = []
    for kind, rows in details.items():
        for row, ds in rows.items():
            name = f"confusion_{kind}_{_slug(row)}.png"
            plot_confusion_matrix(
                np.asarray(ds[0]["confusion"]), out_dir / name, title=f"{row}, {KIND_TITLES[kind]}"
            )
            written.append(name)
    return written
