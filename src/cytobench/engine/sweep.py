"""Each run's outcome in its own folder, and a sweep's summary written as its jobs end.

Every ``python train.py`` job writes ``<run folder>/status.json``: ``running`` when it starts, then
``done`` (with the monitored metric) or ``failed`` (with the one-line reason); a job stopped by Ctrl-C
says ``killed``. A job killed from outside (``kill -9``, a SLURM time limit) cannot write anything, so
its file still says ``running``: :func:`job_outcome` reads that as ``killed`` once the sweep is over, or
when the process it names is gone.

:class:`SweepStatus`, a Hydra callback (``conf/hydra/default.yaml``), rewrites ``sweep.json`` and
``sweep.md`` in the sweep folder after every job (jobs, status, reason, monitored metric) and once more
when the sweep ends; ``python train.py -m ...`` then exits 1 when any job failed or was killed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cytobench.io.files import write_json_atomic

__all__ = [
    "STATUS_FILE",
    "SweepStatus",
    "annotate_metrics",
    "job_outcome",
    "read_status",
    "summarize_sweep",
    "write_status",
    "write_sweep_summary",
]

STATUS_FILE = "status.json"
SUMMARY_JSON = "sweep.json"
SUMMARY_MD = "sweep.md"
STATUSES = ("running", "done", "failed", "killed")
# Filled by SweepStatus.on_multirun_end in the process that ran the sweep; read by the entry point.
LAST_SWEEP: dict[str, Any] = {}


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``status.json``, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("status") in STATUSES else None


def write_status(run_dir: str | Path, status: str, **fields: Any) -> dict[str, Any]:
    """Record the run's outcome in ``run_dir/status.json`` (atomically), keeping what it said before.

    Args:
        run_dir: the run's folder.
        status: ``running``, ``done``, ``failed`` or ``killed``.
        fields: more to record, e.g. ``reason`` (one line), ``monitor`` / ``value`` / ``best``.

    Returns:
        What the file now holds.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    data = read_status(run_dir) or {}
    if status == "running":
        data = {"started": _now(), "host": socket.gethostname(), "pid": os.getpid()}
    data.update(fields)
    data["status"] = status
    if status != "running":
        data["ended"] = _now()
    write_json_atomic(Path(run_dir) / STATUS_FILE, data, indent=2)
    return data


def annotate_metrics(run_dir: str | Path, **fields: Any) -> None:
    """Add ``fields`` (e.g. ``status="failed", reason=...``) to the run's ``metrics.json`` if it has one.

    So a reader of ``metrics.json`` alone never takes a failed run's last snapshot for an unfinished run.
    """
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        data.update(fields)
        write_json_atomic(path, data, indent=2)


def _process_gone(status: Mapping[str, Any]) -> bool:
    """Whether the process a ``running`` status names is known to be gone (same host only)."""
    if status.get("host") != socket.gethostname() or not isinstance(status.get("pid"), int):
        return False
    try:
        os.kill(status["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def job_outcome(status: Mapping[str, Any] | None, sweep_over: bool = False) -> str:
    """``done`` / ``failed`` / ``killed`` / ``running`` of a run from its status (None: never started).

    A status still ``running`` is ``killed`` when the sweep is over (``sweep_over``) or when the process
    it names is gone; otherwise it may really be running.
    """
    if status is None:
        return "killed" if sweep_over else "running"
    state = str(status.get("status"))
    if state == "running" and (sweep_over or _process_gone(status)):
        return "killed"
    return state


def summarize_sweep(sweep_dir: str | Path, sweep_over: bool = False) -> dict[str, Any]:
    """The jobs of a sweep folder (every ``*/status.json`` below it), their outcome and monitored metric."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for status_file in sorted(sweep_dir.rglob(STATUS_FILE)):
        run_dir = status_file.parent
        status = read_status(run_dir)
        if status is None:
            continue
        outcome = job_outcome(status, sweep_over)
        reason = status.get("reason")
        if outcome == "killed" and not reason:
            reason = "stopped without recording an outcome (killed, out of memory or out of time)"
        jobs.append(
            {
                "num": status.get("job"),
                "dir": str(run_dir.relative_to(sweep_dir)),
                "overrides": status.get("overrides", []),
                "status": outcome,
                "reason": reason,
                "monitor": status.get("monitor"),
                "value": status.get("value"),
                "best": status.get("best"),
                "best_epoch": status.get("best_epoch"),
                "epoch": status.get("epoch"),
            }
        )
    jobs.sort(key=lambda j: (j["num"] is None, j["num"] if isinstance(j["num"], int) else 0, j["dir"]))
    counts = {s: sum(j["status"] == s for j in jobs) for s in STATUSES if any(j["status"] == s for j in jobs)}
    return {
        "sweep_dir": str(sweep_dir),
        "updated": _now(),
        "complete": sweep_over,
        "counts": counts,
        "failed": sum(j["status"] in ("failed", "killed") for j in jobs),
        "jobs": jobs,
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_sweep_markdown(summary: Mapping[str, Any]) -> str:
    """A markdown table of :func:`summarize_sweep`'s jobs."""
    head = "complete" if summary["complete"] else "in progress"
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items()) or "no jobs yet"
    lines = [
        f"# sweep {summary['sweep_dir']}",
        "",
        f"{head}: {counts} (updated {summary['updated']})",
        "",
        "| job | overrides | status | monitor | value | best | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for job in summary["jobs"]:
        cells = [
            job["num"],
            " ".join(map(str, job["overrides"])),
            job["status"],
            job["monitor"],
            job["value"],
            job["best"],
            job["reason"],
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (jobs of a parallel launcher end at the same time); none on Windows."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_sweep_summary(sweep_dir: str | Path, sweep_over: bool = False) -> dict[str, Any]:
    """Rewrite ``sweep.json`` and ``sweep.md`` in ``sweep_dir`` from its jobs' status files."""
    sweep_dir = Path(sweep_dir)
    with _locked(sweep_dir / ".sweep.lock"):
        summary = summarize_sweep(sweep_dir, sweep_over)
        write_json_atomic(sweep_dir / SUMMARY_JSON, summary, indent=2)
        (sweep_dir / SUMMARY_MD).write_text(format_sweep_markdown(summary), encoding="utf-8")
    return summary


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class SweepStatus(Callback):
    """Hydra callback keeping a sweep's summary current (configured in ``conf/hydra/default.yaml``).

    ``on_job_end`` runs where the job ran (the local process, or a SLURM node): it records a job that
    Hydra saw fail without a status of its own, then rewrites the summary. ``on_multirun_end`` runs in
    the process that launched the sweep: the final summary, with jobs still ``running`` as ``killed``.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.runtime.output_dir)
        status = read_status(run_dir)
        if job_return.status == JobStatus.FAILED and (status is None or status["status"] == "running"):
            error = job_return._return_value
            reason = _one_line(error) if isinstance(error, BaseException) else "failed"
            write_status(run_dir, "failed", reason=reason)
        if config.hydra.mode == RunMode.MULTIRUN:
            write_sweep_summary(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        summary = write_sweep_summary(sweep_dir, sweep_over=True)
        (sweep_dir / ".sweep.lock").unlink(missing_ok=True)  # every job has ended
        LAST_SWEEP.clear()
        LAST_SWEEP.update(summary)


def sweep_failure_line(summary: Mapping[str, Any]) -> str | None:
    """One line naming a finished sweep's failed / killed jobs and its summary file, None if all were done."""
    bad = [j for j in summary.get("jobs", []) if j["status"] in ("failed", "killed")]
    if not bad:
        return None
    first = bad[0]
    where = Path(summary["sweep_dir"]) / SUMMARY_MD
    return (
        f"sweep: {len(bad)} of {len(summary['jobs'])} jobs failed or were killed, e.g. {first['dir']}: "
        f"{first['reason']} (all jobs: {where})"
    )


def exit_code_of_last_sweep() -> int:
    """1 when the sweep this process just ran had a failed or killed job (said on stderr), else 0."""
    line = sweep_failure_line(LAST_SWEEP) if LAST_SWEEP else None
    LAST_SWEEP.clear()
    if line is None:
        return 0
    print(line, file=sys.stderr)
    return 1
