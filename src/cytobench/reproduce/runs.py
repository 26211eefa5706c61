"""Collect finished training runs (``metrics.json`` + resolved ``config.yaml``) for paper tables."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cytobench.errors import BadInputError


@dataclass
class Run:
    """One training run: its folder, resolved config and the metrics of its best evaluation."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, float]


def best_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The evaluation at the best epoch (the one ``best.pt`` holds), else the latest."""
    best_epoch = (summary.get("best") or {}).get("epoch")
    for entry in summary.get("history", []):
        if entry.get("epoch") == best_epoch:
            return {k: v for k, v in entry.items() if k not in ("epoch", "step")}
    return dict(summary.get("latest") or {})


def collect_runs(roots: Iterable[str | Path]) -> list[Run]:
    """Every run below ``roots`` (single runs or ``-m`` sweep folders), sorted by path."""
    runs = []
    for root in map(Path, roots):
        if not root.exists():
            raise BadInputError(root, "no such runs folder")
        for metrics_file in sorted(root.rglob("metrics.json")):
            config_file = metrics_file.with_name("config.yaml")
            if not config_file.is_file():
                continue
            summary = json.loads(metrics_file.read_text())
            runs.append(
                Run(metrics_file.parent, yaml.safe_load(config_file.read_text()), best_metrics(summary))
            )
    if not runs:
        raise BadInputError(", ".join(map(str, roots)), "no finished runs (metrics.json + config.yaml) found")
    return runs


def group_runs(runs: Sequence[Run], label: Callable[[Run], str | None]) -> dict[str, list[Run]]:
    """Runs grouped by ``label(run)`` (runs labelled None are left out), in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        name = label(run)
        if name is not None:
            groups.setdefault(name, []).append(run)
    return groups
