"""One summary row per claim, in the format every bench shares (collected by ``make bench``).

:func:`row` prints a markdown row ``| measure | ours | baseline | ratio | goal | held |`` and, when the
environment variable ``CYTOBENCH_BENCH_SUMMARY`` names a file, appends the same row to it as one json
line (``{"bench", "measure", "ours", "baseline", "ratio", "goal", "held"}``), so a driver can run every
bench and print one table at the end. :data:`HEADER` is the table's header (two lines).

Usage from a bench script (``bench/`` is on ``sys.path`` when a bench runs as a script)::

    from summary import row
    row("EG-NMS, N = 1000 (CPU ms)", 1.9, 48.0, 25.3, ">= 20x the loop", True)
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

__all__ = ["ENV", "HEADER", "format_row", "row"]

ENV = "CYTOBENCH_BENCH_SUMMARY"
HEADER = "| measure | ours | baseline | ratio | goal | held |\n|---|---|---|---|---|---|"


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def format_row(measure: str, ours: object, baseline: object, ratio: float, goal: str, held: bool) -> str:
    """The markdown row (ratio printed as ``25.3x``)."""
    ratio_cell = f"{_cell(float(ratio))}x" if math.isfinite(ratio) else "-"
    cells = [measure, _cell(ours), _cell(baseline), ratio_cell, goal, _cell(bool(held))]
    return "| " + " | ".join(cells) + " |"


def row(measure: str, ours: object, baseline: object, ratio: float, goal: str, held: bool) -> str:
    """Print one summary row and append it to ``$CYTOBENCH_BENCH_SUMMARY`` (if set) as a json line.

    Args:
        measure: what is measured, with its unit, e.g. ``"QD simulator, images/s"``.
        ours: our number (a float, or a string with its unit).
        baseline: the named baseline's number, measured in the same run.
        ratio: ours against the baseline in the goal's terms: times faster (or more) for a speed-up goal,
            ours / baseline for a "within" goal; NaN if not applicable.
        goal: the claim, e.g. ``">= 50,000 images/s"``.
        held: whether the goal held in this run.

    Returns:
        The printed markdown row.
    """
    line = format_row(measure, ours, baseline, ratio, goal, held)
    print(line, flush=True)
    path = os.environ.get(ENV)
    if path:
        record = {
            "bench": Path(sys.argv[0]).name,
            "measure": measure,
            "ours": ours,
            "baseline": baseline,
            "ratio": ratio if math.isfinite(ratio) else None,
            "goal": goal,
            "held": bool(held),
        }
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    return line
