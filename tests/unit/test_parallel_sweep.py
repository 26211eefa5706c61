"""experiments/deepace/parallel_sweep.py: job order, and the budget (done / failed / killed / skipped)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    "parallel_sweep", ROOT / "experiments/deepace/parallel_sweep.py"
)
ps = importlib.util.module_from_spec(_spec)
sys.modules["parallel_sweep"] = ps  # dataclasses look their module up there
_spec.loader.exec_module(ps)


def test_parse_seeds() -> None:
    assert ps.parse_seeds("0-3") == [0, 1, 2, 3]
    assert ps.parse_seeds("5") == [5]
    assert ps.parse_seeds("0,2,7-8") == [0, 2, 7, 8]


def test_jobs_are_seed_major_with_their_own_run_folder(tmp_path: Path) -> None:
    jobs = ps.build_jobs(tmp_path, ["single1", "hnas_tnrl_tm"], [0, 1], ["experiment=deepace_smoke"])
    assert [j.name for j in jobs] == ["single1_s0", "hnas_tnrl_tm_s0", "single1_s1", "hnas_tnrl_tm_s1"]
    assert jobs[1].command[-4:] == [
        "experiment=deepace_smoke",
        "+ablation=hnas_tnrl_tm",
        "seed=0",
        f"hydra.run.dir={tmp_path / 'hnas_tnrl_tm_s0'}",
    ]
    (reevaluated,) = ps.build_jobs(tmp_path, ["single1"], [0], [], reevaluate_device="cuda")[:1]
    assert reevaluated.command[:2] == ["bash", "-c"] and "expand_postprocess" in reevaluated.command[2]


def _job(name: str, code: str) -> ps.Job:
    return ps.Job(name, [sys.executable, "-c", code])


def test_budget_kills_running_jobs_and_skips_what_cannot_fit(tmp_path: Path) -> None:
    jobs = [
        _job("ok", "print('fine')"),
        _job("fails", "import sys; sys.exit(3)"),
        _job("sleeps", "import time; time.sleep(60)"),
    ]
    ps.run_sweep(jobs, tmp_path, n_parallel=1, budget_s=4.0, first_guess_s=0.1)
    assert [(j.state, j.returncode) for j in jobs] == [("done", 0), ("failed", 3), ("killed", None)]
    assert jobs[2].seconds < 10  # killed at the deadline, not after its 60 s
    assert (tmp_path / "ok" / "job.log").read_text().strip() == "fine"
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert [row["state"] for row in summary] == ["done", "failed", "killed"]

    later = [_job("a", "pass"), _job("b", "pass")]
    ps.run_sweep(later, tmp_path / "short", n_parallel=2, budget_s=1.0, first_guess_s=30.0)
    assert [j.state for j in later] == ["skipped", "skipped"]  # the assumed 30 s cannot fit in 1 s
