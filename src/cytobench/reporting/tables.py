"""Plain-text tables for metrics and paper comparisons."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def format_value(value: object, digits: int = 4) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> str:
    """Markdown-style table with aligned columns."""
    cells = [[format_value(v, digits) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"
        for r in cells
    ]
    return "\n".join([line, rule, *body])


def format_metrics(metrics: Mapping[str, float], digits: int = 4) -> str:
    """Two-column table of namespaced metrics, sorted by name."""
    return format_table(["metric", "value"], sorted(metrics.items()), digits)
