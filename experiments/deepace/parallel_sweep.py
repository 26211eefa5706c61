"""Run a Table 6 / 7 / 10 sweep as many `train.py` processes at once, inside a time budget.

Hydra's basic launcher runs a sweep's jobs one after another. Small DeepACEv2 runs leave a GPU (and a
many-core host) mostly idle, so this starts up to ``--jobs`` of them at once, one torch thread each, in
seed-major order (seed 0 of every variant first), so that whatever fits in ``--budget-s`` is a set of
complete seeds rather than all seeds of a few variants. A job is only started when the median duration
of the finished ones still fits; jobs running at the deadline are killed and, having no final
``metrics.json``, are left out by ``cytobench reproduce`` (which says so).

    python experiments/deepace/parallel_sweep.py --out runs/ablation_wcr_gpu --jobs 12 --budget-s 400 \\
        --ablations single1 hnas hnas_tnrl hnas_tnrl_tm hnas_v1 --seeds 0-9 -- \\
        experiment=deepace_ablation_wcr logger=csv
    cytobench reproduce deepace/table6 --runs runs/ablation_wcr_gpu --device cuda

Each job's folder is ``OUT/<ablation>_s<seed>`` with Hydra's usual contents plus ``job.log``
(stdout + stderr); ``OUT/sweep.json`` lists every job's state, return code and duration.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Job:
    name: str
    command: list[str]
    state: str = "pending"  # pending | running | done | failed | killed | skipped
    returncode: int | None = None
    seconds: float | None = None
    started: float | None = field(default=None, repr=False)


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` or ``"0,1,5"`` to a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def build_jobs(
    out: Path, ablations: list[str], seeds: list[int], common: list[str], reevaluate_device: str | None = None
) -> list[Job]:
    """One ``train.py`` job per (seed, ablation), seed-major: every ablation of seed 0, then of seed 1, ...

    With ``reevaluate_device`` each job then caches its NMS / SOFT / EG validation metrics (Template
    runs only), in parallel, instead of one run after another when the tables are built.
    """
    jobs = []
    for seed in seeds:
        for ablation in ablations:
            name = f"{ablation}_s{seed}"
            overrides = [*common, f"+ablation={ablation}", f"seed={seed}", f"hydra.run.dir={out / name}"]
            command = [sys.executable, str(REPO / "train.py"), *overrides]
            if reevaluate_device:
                reevaluate = reevaluate_command(out / name, reevaluate_device)
                command = ["bash", "-c", f"{shlex.join(command)} && {shlex.join(reevaluate)}"]
            jobs.append(Job(name, command))
    return jobs


def reevaluate_command(run_dir: Path, device: str) -> list[str]:
    code = (
        "import sys; from cytobench.reproduce.runs import collect_runs; "
        "from cytobench.reproduce.deepace_tables import expand_postprocess; "
        "expand_postprocess(collect_runs([sys.argv[1]]), device=sys.argv[2])"
    )
    return [sys.executable, "-c", code, str(run_dir), device]


def start(job: Job, out: Path, env: dict[str, str]) -> subprocess.Popen:
    (out / job.name).mkdir(parents=True, exist_ok=True)
    job.state, job.started = "running", time.monotonic()
    with open(out / job.name / "job.log", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(
            job.command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the deadline kills the job's whole process group
        )


def run_sweep(jobs: list[Job], out: Path, n_parallel: int, budget_s: float, first_guess_s: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    deadline = t0 + budget_s
    running: dict[str, tuple[Job, subprocess.Popen]] = {}
    pending = list(jobs)
    while pending or running:
        now = time.monotonic()
        for name, (job, proc) in list(running.items()):
            if proc.poll() is not None:
                job.returncode, job.seconds = proc.returncode, now - job.started
                job.state = "done" if proc.returncode == 0 else "failed"
                del running[name]
                print(f"[{now - t0:6.0f}s] {job.state:6s} {name} ({job.seconds:.0f}s)", flush=True)
                if job.state == "failed":
                    tail = (out / name / "job.log").read_text(errors="replace").splitlines()[-3:]
                    print("\n".join(f"    {line}" for line in tail), flush=True)
            elif now >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                job.state, job.seconds = "killed", now - job.started
                del running[name]
                print(f"[{now - t0:6.0f}s] killed {name} at the deadline", flush=True)
        finished = [j.seconds for j in jobs if j.state == "done"]
        expected = statistics.median(finished) if finished else first_guess_s
        while pending and len(running) < n_parallel:
            if time.monotonic() + expected > deadline:
                for job in pending:
                    job.state = "skipped"
                pending.clear()
                break
            job = pending.pop(0)
            running[job.name] = (job, start(job, out, env))
        write_summary(jobs, out)
        if running:
            time.sleep(1.0)
    write_summary(jobs, out)


def write_summary(jobs: list[Job], out: Path) -> None:
    rows = [{k: v for k, v in asdict(j).items() if k != "started"} for j in jobs]
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="sweep folder (one sub-folder per job)")
    parser.add_argument("--ablations", nargs="+", required=True, help="conf/ablation/ names")
    parser.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,1,2")
    parser.add_argument("--jobs", type=int, default=4, help="runs at once")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="wall-clock budget of the sweep")
    parser.add_argument(
        "--first-guess-s", type=float, default=60.0, help="assumed run time until one has finished"
    )
    parser.add_argument(
        "--reevaluate-device",
        help="after training, cache each Template run's NMS / SOFT / EG metrics on this device (cpu, cuda)",
    )
    parser.add_argument("overrides", nargs="*", help="train.py overrides shared by every job (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    jobs = build_jobs(out, args.ablations, parse_seeds(args.seeds), args.overrides, args.reevaluate_device)
    run_sweep(jobs, args.out.resolve(), args.jobs, args.budget_s, args.first_guess_s, args.reevaluate_device)
    counts = {s: sum(j.state == s for j in jobs) for s in ("done", "failed", "killed", "skipped")}
    print("sweep:", ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
