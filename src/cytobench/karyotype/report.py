"""What ``cytobench karyotype`` reports: per-image counts and ISCN karyotype, a summary over the cells, json + markdown.

**Per image** (:func:`image_entry`): the detections kept (score >= the threshold) are the cell's chromosomes;
``counts`` gives the number of each of the 24 classes, ``karyotype`` the ISCN-style string of
:func:`cytobench.simulate.chromosomes.format_karyotype` (``46,XY``, ``47,XY,+21``, ``45,X``, ``47,XXY``),
``normal`` is :func:`cytobench.evaluation.karyotype.is_normal_karyotype` (46,XX or 46,XY: two of every
autosome), ``n_low_confidence`` the chromosomes scored below the low-confidence threshold. An image with no
chromosome kept is an entry of status ``no_chromosomes`` (no karyotype, no karyogram).

**Summary** (:func:`summarize`), over the images with chromosomes (the *cells*): how many cells have each
karyotype, most frequent first (a mosaic case reads ``46,XY x 18, 47,XY,+21 x 2``), and the fraction of
abnormal cells with its Wilson score interval (:func:`cytobench.fish.intervals.wilson_interval`, 95 %);
images without chromosomes are counted and named apart, not as cells. Undefined values (no cell at all)
are ``null`` in the json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.evaluation.karyotype import is_normal_karyotype
from cytobench.fish.intervals import wilson_interval
from cytobench.reporting.tables import format_table
from cytobench.simulate.chromosomes import CLASS_NAMES, format_karyotype

__all__ = [
    "OK",
    "NO_CHROMOSOMES",
    "class_counts",
    "image_entry",
    "no_chromosomes_entry",
    "render_markdown",
    "summarize",
    "tally_text",
]

OK = "ok"
NO_CHROMOSOMES = "no_chromosomes"


def class_counts(classes: Sequence[int]) -> dict[str, int]:
    """Chromosomes of each class, ``{"1": n1, ..., "22": n22, "X": nX, "Y": nY}`` (all 24 keys)."""
    counts = np.bincount(np.asarray(classes, dtype=np.int64).reshape(-1), minlength=25)
    return {name: int(counts[k + 1]) for k, name in enumerate(CLASS_NAMES)}


def image_entry(
    image: str,
    path: str,
    classes: Sequence[int],
    scores: Sequence[float],
    boxes: np.ndarray,
    *,
    low_confidence: float,
    karyogram: str | None,
    n_below_threshold: int = 0,
) -> dict[str, Any]:
    """The json entry of one image whose chromosomes were found.

    Args:
        image: the image's name as reported (its file name).
        path: its path as given.
        classes: class index of each kept chromosome (1-24; X = 23, Y = 24).
        scores: their scores.
        boxes: ``(N, 4)`` xyxy boxes in the image's pixels.
        low_confidence: scores below this count as low-confidence.
        karyogram: file name of the karyogram image written for it.
        n_below_threshold: detections left out for a score below ``--score-thr``.
    """
    cls = [int(c) for c in classes]
    conf = [float(s) for s in scores]
    low = [s < low_confidence for s in conf]
    chromosomes = [
        {
            "class": CLASS_NAMES[c - 1],
            "score": round(s, 4),
            "box": [round(float(v), 2) for v in box],
            "low_confidence": is_low,
        }
        for c, s, box, is_low in zip(cls, conf, np.asarray(boxes).reshape(-1, 4), low)
    ]
    return {
        "image": image,
        "path": path,
        "status": OK,
        "n_chromosomes": len(cls),
        "karyotype": format_karyotype(cls),
        "normal": bool(is_normal_karyotype(np.asarray(cls, dtype=np.int64))),
        "n_low_confidence": int(sum(low)),
        "n_below_threshold": int(n_below_threshold),
        "counts": class_counts(cls),
        "karyogram": karyogram,
        "chromosomes": chromosomes,
    }


def no_chromosomes_entry(image: str, path: str, n_below_threshold: int = 0) -> dict[str, Any]:
    """The json entry of an image in which no chromosome was found (none scored >= the threshold)."""
    return {
        "image": image,
        "path": path,
        "status": NO_CHROMOSOMES,
        "n_chromosomes": 0,
        "karyotype": None,
        "normal": None,
        "n_low_confidence": 0,
        "n_below_threshold": int(n_below_threshold),
        "counts": class_counts([]),
        "karyogram": None,
        "chromosomes": [],
    }


def summarize(entries: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """Karyotype tally and abnormal fraction over the cells (see the module docstring).

    Returns:
        ``n_images``, ``n_cells``, ``n_no_chromosomes``, ``no_chromosomes`` (image names), ``karyotypes``
        (``[{"karyotype", "cells", "fraction", "normal"}]``, most frequent first, then by name), ``tally``
        (the one-line text), ``n_normal``, ``n_abnormal``, ``fraction_abnormal`` and ``abnormal_interval``
        (``method``, ``confidence``, ``lower``, ``upper``; NaN without cells), ``n_low_confidence`` (all
        chromosomes) and ``cells_with_low_confidence``.
    """
    cells = [e for e in entries if e["status"] == OK]
    tally = Counter(str(e["karyotype"]) for e in cells)
    normal_of = {str(e["karyotype"]): bool(e["normal"]) for e in cells}
    n = len(cells)
    karyotypes = [
        {"karyotype": k, "cells": c, "fraction": c / n, "normal": normal_of[k]}
        for k, c in sorted(tally.items(), key=lambda item: (-item[1], item[0]))
    ]
    n_abnormal = sum(1 for e in cells if not e["normal"])
    lower, upper = wilson_interval(n_abnormal, n, confidence)
    return {
        "n_images": len(entries),
        "n_cells": n,
        "n_no_chromosomes": len(entries) - n,
        "no_chromosomes": [e["image"] for e in entries if e["status"] == NO_CHROMOSOMES],
        "karyotypes": karyotypes,
        "tally": tally_text(karyotypes),
        "n_normal": n - n_abnormal,
        "n_abnormal": n_abnormal,
        "fraction_abnormal": n_abnormal / n if n else float("nan"),
        "abnormal_interval": {
            "method": "wilson",
            "confidence": confidence,
            "lower": float(lower),
            "upper": float(upper),
        },
        "n_low_confidence": int(sum(e["n_low_confidence"] for e in cells)),
        "cells_with_low_confidence": int(sum(1 for e in cells if e["n_low_confidence"])),
    }


def tally_text(karyotypes: Sequence[Mapping[str, Any]]) -> str:
    """``"46,XY x 18, 47,XY,+21 x 2"`` (``summarize()["karyotypes"]`` order); ``"no cells"`` when empty."""
    return ", ".join(f"{k['karyotype']} x {k['cells']}" for k in karyotypes) or "no cells"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100.0 * value:.1f}%"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _cell(text: Any) -> str:
    """A markdown table cell: ``|`` escaped (file names may hold one)."""
    return str(text).replace("|", "\\|")


def abnormal_text(summary: Mapping[str, Any]) -> str:
    """One line: abnormal cells, their fraction and its interval (or that there were no cells)."""
    n = summary["n_cells"]
    if not n:
        return "No cells: no image had chromosomes, so no abnormal fraction can be estimated."
    ci = summary["abnormal_interval"]
    return (
        f"Abnormal: {summary['n_abnormal']} of {n} cells, {_pct(summary['fraction_abnormal'])} "
        f"({100 * ci['confidence']:.0f}% Wilson interval {_pct(ci['lower'])} - {_pct(ci['upper'])})."
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    """``karyotypes.md``: one row per image, then the summary over the cells and the settings."""
    lines = ["# Karyotypes", ""]
    rows = []
    for e in report["images"]:
        if e["status"] == OK:
            rows.append(
                (
                    _cell(e["image"]),
                    e["n_chromosomes"],
                    e["karyotype"],
                    "yes" if e["normal"] else "no",
                    e["n_low_confidence"],
                    _cell(e["karyogram"]),
                )
            )
        else:
            rows.append((_cell(e["image"]), 0, "no chromosomes found", "-", 0, "-"))
    header = ["image", "chromosomes", "karyotype (ISCN)", "normal", "low-confidence", "karyogram"]
    lines += [format_table(header, rows), ""]
    summary = report["summary"]
    lines += ["## Summary", ""]
    lines.append(
        f"{summary['n_cells']} cells (images with chromosomes) of {summary['n_images']} images."
        + (
            f" No chromosomes found in {summary['n_no_chromosomes']}: "
            + ", ".join(f"`{name}`" for name in summary["no_chromosomes"])
            + "."
            if summary["n_no_chromosomes"]
            else ""
        )
    )
    lines.append("")
    if summary["karyotypes"]:
        table = [
            (k["karyotype"], k["cells"], _pct(k["fraction"]), "yes" if k["normal"] else "no")
            for k in summary["karyotypes"]
        ]
        lines += [format_table(["karyotype", "cells", "fraction", "normal"], table), ""]
        lines += [f"Karyotypes: {summary['tally']}.", ""]
    lines += [abnormal_text(summary), ""]
    if summary["n_low_confidence"]:
        n_low, n_cells = summary["n_low_confidence"], summary["cells_with_low_confidence"]
        lines += [
            f"{_count(n_low, 'chromosome')} in {_count(n_cells, 'cell')} scored below "
            f"{report['settings']['low_confidence']:g} (marked with a red frame and `?` in the karyograms).",
            "",
        ]
    settings = report.get("settings") or {}
    if settings:
        lines += ["## Settings", ""] + [f"- {k}: `{v}`" for k, v in settings.items()]
    return "\n".join(lines) + "\n"
