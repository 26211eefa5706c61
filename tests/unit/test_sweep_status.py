"""Run outcomes (status.json), the sweep summary and how reproduce/runs.py treats failed runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cytobench.engine.sweep import (
    annotate_metrics,
    job_outcome,
    read_status,
    summarize_sweep,
    sweep_failure_line,
    write_status,
    write_sweep_summary,
)
from cytobench.errors import BadInputError
from cytobench.reproduce.runs import collect_runs, is_finished


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_file_records_start_then_outcome(tmp_path: Path) -> None:
    write_status(tmp_path, "running", job=3, overrides=["seed=1"])
    started = read_status(tmp_path)
    assert started is not None and started["status"] == "running" and started["pid"] == os.getpid()
    write_status(tmp_path, "failed", reason="TrainingDiverged: loss became non-finite")
    ended = read_status(tmp_path)
    assert ended is not None
    assert ended["status"] == "failed" and ended["job"] == 3 and ended["overrides"] == ["seed=1"]
    assert ended["reason"].startswith("TrainingDiverged") and ended["started"] == started["started"]
    with pytest.raises(ValueError):
        write_status(tmp_path, "exploded")


def test_running_is_killed_once_the_sweep_is_over_or_its_process_is_gone() -> None:
    alive = {"status": "running", "host": socket.gethostname(), "pid": os.getpid()}
    assert job_outcome(alive) == "running"
    assert job_outcome(alive, sweep_over=True) == "killed"
    assert job_outcome({**alive, "pid": _dead_pid()}) == "killed"
    assert job_outcome({**alive, "host": "another-node", "pid": _dead_pid()}) == "running"  # cannot tell
    assert job_outcome({"status": "done"}, sweep_over=True) == "done"


def test_sweep_summary_lists_jobs_status_and_monitored_metric(tmp_path: Path) -> None:
    done, failed, killed = tmp_path / "0_seed=0", tmp_path / "1_seed=1", tmp_path / "2_seed=2"
    write_status(done, "running", job=0, overrides=["seed=0"])
    write_status(done, "done", monitor="coco/bbox_AP", value=0.5, best=0.6, best_epoch=1, epoch=2)
    write_status(failed, "running", job=1, overrides=["seed=1"])
    write_status(failed, "failed", reason="TrainingDiverged: loss became non-finite at epoch 1, step 3")
    write_status(killed, "running", job=2, overrides=["seed=2"])

    during = summarize_sweep(tmp_path)
    assert [j["status"] for j in during["jobs"]] == ["done", "failed", "running"] and not during["complete"]
    summary = write_sweep_summary(tmp_path, sweep_over=True)
    assert json.loads((tmp_path / "sweep.json").read_text()) == summary
    assert summary["counts"] == {"done": 1, "failed": 1, "killed": 1} and summary["failed"] == 2
    first = summary["jobs"][0]
    assert (first["num"], first["dir"], first["monitor"], first["value"], first["best"]) == (
        0,
        "0_seed=0",
        "coco/bbox_AP",
        0.5,
        0.6,
    )
    assert summary["jobs"][2]["status"] == "killed" and "killed" in summary["jobs"][2]["reason"]
    table = (tmp_path / "sweep.md").read_text()
    assert "| 1 | seed=1 | failed |" in table and "TrainingDiverged" in table
    line = sweep_failure_line(summary)
    assert line is not None and line.startswith("sweep: 2 of 3 jobs failed or were killed, e.g. 1_seed=1: ")
    assert "\n" not in line and str(tmp_path / "sweep.md") in line


def test_failed_runs_are_neither_finished_nor_unfinished(tmp_path: Path, capsys) -> None:
    def write_run(folder: Path, summary: dict | None) -> None:
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 2}, "seed": 0}))
        if summary is not None:
            (folder / "metrics.json").write_text(json.dumps(summary))

    history = [{"epoch": 1, "step": 3, "coco/bbox_AP": 0.1}]
    write_run(tmp_path / "done", {"epoch": 2, "history": history, "latest": history[0], "best": {"epoch": 1}})
    write_run(tmp_path / "diverged", {"epoch": 1, "history": history, "latest": history[0]})
    annotate_metrics(tmp_path / "diverged", status="failed", reason="TrainingDiverged: at epoch 2")
    write_run(tmp_path / "early", None)  # failed before its first evaluation: status.json only
    write_status(tmp_path / "early", "failed", reason="TrainingDiverged: at epoch 1")
    write_run(tmp_path / "cut", None)  # killed during its first epoch
    write_status(tmp_path / "cut", "running")

    assert not is_finished(json.loads((tmp_path / "diverged" / "metrics.json").read_text()), {})
    runs = collect_runs([tmp_path])
    assert [r.path.name for r in runs] == ["done"]
    err = capsys.readouterr().err
    assert "left out 2 failed or interrupted run(s), e.g. " in err and "TrainingDiverged: at epoch" in err
    assert "left out 1 unfinished run(s)" in err and "cut" in err
    with pytest.raises(BadInputError, match="no finished runs"):
        collect_runs([tmp_path / "diverged"])
