"""Collect finished training runs (``metrics.json`` + resolved ``config.yaml``) for paper tables."""

from __future__ import annotations

import json
import sys
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


def is_finished(summary: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a run's ``metrics.json`` is its final summary rather than a mid-training snapshot.

    ``train.py`` adds ``best`` when training ends; a run stopped early or at ``trainer.max_epochs`` is
    finished too. Without ``trainer.max_epochs`` in the config there is nothing to tell, so it counts.
    """
    if "best" in summary or summary.get("stopped_early"):
        return True
    max_epochs = (config.get("trainer") or {}).get("max_epochs")
    return max_epochs is None or int(summary.get("epoch", 0)) >= int(max_epochs)


def collect_runs(roots: Iterable[str | Path]) -> list[Run]:
    """Every finished run below ``roots`` (single runs or ``-m`` sweep folders), sorted by path.

    Runs still training (or killed before their last epoch) are left out, and said so on stderr.
    """
    runs, unfinished = [], []
    for root in map(Path, roots):
        if not root.exists():
            raise BadInputError(root, "no such runs folder")
        for metrics_file in sorted(root.rglob("metrics.json")):
            config_file = metrics_file.with_name("config.yaml")
            if not config_file.is_file():
                continue
            summary = json.loads(metrics_file.read_text())
            config = yaml.safe_load(config_file.read_text())
            if not is_finished(summary, config):
                unfinished.append(metrics_file.parent)
                continue
            runs.append(Run(metrics_file.parent, config, best_metrics(summary)))
    if unfinished:
        print(
            f"left out {len(unfinished)} unfinished run(s) (still training or stopped before their last "
            f"epoch), e.g. {unfinished[0]}",
            file=sys.stderr,
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
