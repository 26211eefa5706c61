"""Collect finished training runs (``metrics.json`` + resolved ``config.yaml``) for paper tables."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cytobench.errors import BadInputError
from cytobench.io.files import read_json


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
    A run that failed or was interrupted (``status`` ``failed`` / ``killed``, written by ``train.py``) is not.
    """
    if summary.get("status") in ("failed", "killed"):
        return False
    if "best" in summary or summary.get("stopped_early"):
        return True
    max_epochs = (config.get("trainer") or {}).get("max_epochs")
    return max_epochs is None or int(summary.get("epoch", 0)) >= int(max_epochs)


def collect_runs(roots: Iterable[str | Path], unfinished_hint: str = "") -> list[Run]:
    """Every finished run below ``roots`` (single runs or ``-m`` sweep folders), sorted by path.

    Runs still training (or killed before their last epoch) and runs that failed (``status: failed``,
    e.g. a diverged sweep job) are left out, and said so on stderr (``unfinished_hint`` ends the line
    about unfinished runs: what else the caller could do with them).
    """
    runs, unfinished, failed = [], [], []
    for root in map(Path, roots):
        if not root.exists():
            raise BadInputError(root, "no such runs folder")
        for metrics_file in sorted(root.rglob("metrics.json")):
            config_file = metrics_file.with_name("config.yaml")
            if not config_file.is_file():
                continue
            summary = read_json(metrics_file)
            config = yaml.safe_load(config_file.read_text())
            if summary.get("status") in ("failed", "killed"):
                failed.append(f"{metrics_file.parent}: {summary.get('reason') or summary['status']}")
                continue
            if not is_finished(summary, config):
                unfinished.append(metrics_file.parent)
                continue
            runs.append(Run(metrics_file.parent, config, best_metrics(summary)))
        for status_file in sorted(root.rglob("status.json")):  # runs that ended before their first evaluation
            if status_file.with_name("metrics.json").is_file():
                continue
            status = read_json(status_file)
            if not isinstance(status, dict):
                continue
            if status.get("status") in ("failed", "killed"):
                failed.append(f"{status_file.parent}: {status.get('reason') or status['status']}")
            elif status.get("status") == "running":
                unfinished.append(status_file.parent)
    if unfinished:
        print(
            f"left out {len(unfinished)} unfinished run(s) (still training or stopped before their last "
            f"epoch), e.g. {unfinished[0]}{unfinished_hint}",
            file=sys.stderr,
        )
    if failed:
        print(f"left out {len(failed)} failed or interrupted run(s), e.g. {failed[0]}", file=sys.stderr)
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


def runs_with_checkpoint(roots: Iterable[str | Path], name: str = "best.pt") -> list[tuple[Path, Run]]:
    """``(checkpoints/<name>, run)`` of every finished run below ``roots`` that has one; the others are
    named on stderr (a run killed before its first checkpoint, or a sweep job still running)."""
    out, missing = [], []
    hint = f"; to score one as it is: --checkpoint RUN/checkpoints/{name}"
    for run in collect_runs(roots, unfinished_hint=hint):
        checkpoint = run.path / "checkpoints" / name
        if checkpoint.is_file():
            out.append((checkpoint, run))
        else:
            missing.append(str(run.path))
    if missing:
        print(
            f"left out {len(missing)} run(s) without checkpoints/{name}, e.g. {missing[0]}", file=sys.stderr
        )
    return out
