"""``cytobench reproduce <paper>/<table>``: our numbers beside the paper's.

Each reproduction lives in a module with ``add_arguments(parser)`` and a function taking the parsed
arguments; the registry maps the name users type to ``module:function``. Every module stands on
:mod:`cytobench.reproduce.base`: the paper's numbers as package data (``papers/*.yaml``), a held-out
test set rebuilt from a checkpoint's data config, the streaming evaluation loop, and ours beside the
paper's as markdown + json. Table maths lives in :mod:`cytobench.evaluation`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

REPRODUCTIONS: dict[str, str] = {
    "qd/table1": "cytobench.reproduce.qd_table1:run",
    "deepace/table2": "cytobench.reproduce.deepace_test:table2",
    "deepace/table5": "cytobench.reproduce.deepace_test:table5",
    "deepace/table6": "cytobench.reproduce.deepace_tables:table6",
    "deepace/table7": "cytobench.reproduce.deepace_tables:table7",
    "deepace/table10": "cytobench.reproduce.deepace_tables:table10",
    "fish/table1": "cytobench.reproduce.fish_table1:run",
    **{f"brightfield/table5_{k}": f"cytobench.reproduce.brightfield_tables:table5_{k}" for k in range(1, 7)},
    **{
        f"brightfield/table5_{k}": f"cytobench.reproduce.brightfield_instances:table5_{k}"
        for k in (7, 9, 10, 11)
    },
    "karyotype/table5_1": "cytobench.reproduce.karyotype_tables:table5_1",
    "karyotype/accuracy": "cytobench.reproduce.karyotype_tables:accuracy",
}


def load_reproduction(name: str) -> tuple[ModuleType, Callable[[Any], Any]]:
    """The module (for its ``add_arguments``) and the function that reproduces ``name``."""
    if name not in REPRODUCTIONS:
        known = ", ".join(sorted(REPRODUCTIONS))
        raise KeyError(f"unknown reproduction {name!r}; known: {known}")
    module_name, function = REPRODUCTIONS[name].split(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, function)
