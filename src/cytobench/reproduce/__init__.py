"""``cytobench reproduce <paper>/<table>``: our numbers beside the paper's.

Each reproduction is a module with ``add_arguments(parser)`` and ``run(args) -> dict``; the
registry maps the name users type to that module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REPRODUCTIONS: dict[str, str] = {
    "qd/table1": "cytobench.reproduce.qd_table1",
}


def load_reproduction(name: str) -> ModuleType:
    """The module that reproduces ``name`` (e.g. ``qd/table1``)."""
    if name not in REPRODUCTIONS:
        known = ", ".join(sorted(REPRODUCTIONS))
        raise KeyError(f"unknown reproduction {name!r}; known: {known}")
    return importlib.import_module(REPRODUCTIONS[name])
