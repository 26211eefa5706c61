"""Run every ``bench/bench_*.py`` one after the other and print one summary table at the end (``make bench``).

Each bench runs as its own process (sequentially: they measure time) with the arguments in :data:`ARGS`,
its output streamed to the terminal, and ``$CYTOBENCH_BENCH_SUMMARY`` pointing at a temporary file where
:func:`summary.row` appends its rows. A bench that exits non-zero, runs past ``--timeout`` or writes no
row gets a row with held = NO, and the driver exits 1 after printing the table. At the end: the table
(``| measure | ours | baseline | ratio | goal | held |``), each bench's wall time and the total.

Usage: ``python bench/run_all.py [--only NAME ...] [--out FILE.md] [--timeout S]``
(``NAME``: ``coco_eval``, ``bench_coco_eval`` or ``bench_coco_eval.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from summary import ENV, HEADER, format_row  # bench/ is on sys.path when this runs as a script

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

# Arguments per bench, chosen so that the whole run stays under ~13 minutes on 2 shared, loaded cores while
# every claim is still measured at the size it is made for; [] = the bench's defaults, which already fit.
# A bench missing here runs with its defaults. Wall times: one run on 2 loaded cores (README, Contributing).
ARGS: dict[str, list[str]] = {
    "bench_brightfield_simulator": [],  # 1080 px (the claim's size) and 512 px, 3 repeats
    "bench_coco_eval": [],  # the claim is about 5,000 images (COCO val's size): kept
    # 200 dense images at LIVECell's maxDets (the claim's size); pycocotools scores 40 of them, scaled (~1 min)
    "bench_dense_segm_eval": [],
    "bench_deepace_step": [],  # 10 alternating steps per model: the median CPU s/step is stable
    "bench_eg_nms": [],  # N = 300, 1000, 2000, 5 repeats; the literal-loop baseline dominates
    "bench_enumeration": [],  # 275 images x 46 boxes (the paper's test set), 20 repeats
    "bench_eval_cli": [],  # 200 dense images, 3 repeats, each a fresh CLI process
    "bench_eval_memory": [],  # 200 images x 300 masks (the size) vs 50; fresh processes
    # the run of experiments/fish/README.md plus the interval-coverage check it reports (12 samples x 12
    # images, 100 calibration images: with fewer the corrected coverage is unstable)
    "bench_fish_analyze": ["--images", "16", "--repeats", "3", "--coverage-samples", "12"],
    # one 1600 x 1200 spread (the paper's size), the karyotype_two_stage experiment's model (random weights),
    # median of 3 repeats: the stages of `cytobench karyotype` and batched crops vs one at a time
    "bench_karyotype": [],
    "bench_metaphase_simulator": [],  # paper size 1600 x 1200 and 512 x 384; S_o over 100 spreads
    "bench_overlap_maps": [],  # 512 px, 50 cells, 5 repeats
    "bench_qd_simulator": [],  # chunks of 4,096 images, 7 repeats, 8,192 images on disk
    "bench_seunet_memory": [],  # 512 px, batch 4: the claim's size
    # 512 px, N = 100, batch 2 (the claims' sizes); 2 inference calls per model, one training step (a second
    # raised the peak RSS by 4%, 4.54 -> 4.74 GiB, far below the 24 GiB goal)
    "bench_sparse_seunet": ["--repeats", "2", "--steps", "1"],
    # the default single repeat is one sample of a CPU measurement that load moves by 2x: median of 3
    "bench_seunet_sliding": ["--repeats", "3"],
    # 3 epochs x 3 alternating rounds (the default): training must last well over the adapter's fixed
    # ~0.5 s for a 5% ratio to mean anything, and fewer rounds make the median a coin toss
    "bench_yolo_adapter": [],
}


def bench_scripts(only: list[str] | None) -> list[Path]:
    """The bench scripts to run, in name order; ``only`` selects by name (with or without prefix/suffix)."""
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if not only:
        return scripts
    by_name = {p.stem: p for p in scripts}
    chosen = []
    for name in only:
        stem = Path(name).name.removesuffix(".py")
        stem = stem if stem.startswith("bench_") else f"bench_{stem}"
        if stem not in by_name:
            raise SystemExit(f"no bench named {name!r}; benches: {', '.join(sorted(by_name))}")
        chosen.append(by_name[stem])
    return chosen


def read_rows(path: Path, offset: int) -> tuple[list[dict], int]:
    """The json rows appended to ``path`` after byte ``offset``, and the new offset."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    return rows, offset + len(data)


def failure_row(name: str, why: str) -> dict:
    return {
        "bench": f"{name}.py",
        "measure": f"{name}: {why}",
        "ours": "-",
        "baseline": "-",
        "ratio": None,
        "goal": "runs to the end and writes its rows",
        "held": False,
    }


def run_one(script: Path, args: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, float]:
    """Run one bench with its output on the terminal; (exit status or None on timeout, wall seconds)."""
    cmd = [sys.executable, str(script), *args]
    print(f"\n== {script.relative_to(ROOT)} {' '.join(args)}".rstrip(), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        rc: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    return rc, time.perf_counter() - start


def table_lines(rows: list[dict]) -> list[str]:
    lines = [HEADER]
    for r in rows:
        ratio = math.nan if r["ratio"] is None else float(r["ratio"])
        lines.append(format_row(r["measure"], r["ours"], r["baseline"], ratio, r["goal"], r["held"]))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benches")
    parser.add_argument("--out", type=Path, help="also write the table as markdown to this file")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one bench may run")
    args = parser.parse_args()
    scripts = bench_scripts(args.only)
    load_start = os.getloadavg()[0]
    started = datetime.datetime.now().astimezone()

    rows: list[dict] = []
    walls: dict[str, float] = {}
    failed: list[str] = []
    total_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cytobench_bench_") as tmp:
        summary_file = Path(tmp) / "summary.jsonl"
        summary_file.touch()
        env = {**os.environ, ENV: str(summary_file), "PYTHONUNBUFFERED": "1"}
        offset = 0
        for script in scripts:
            name = script.stem
            try:
                rc, wall = run_one(script, ARGS.get(name, []), env, args.timeout)
            except KeyboardInterrupt:
                rows.append(failure_row(name, "interrupted"))
                failed.append(name)
                print(f"\n{name} interrupted; the benches after it were not run", flush=True)
                break
            walls[name] = wall
            new, offset = read_rows(summary_file, offset)
            rows.extend(new)
            why = None
            if rc is None:
                why = f"killed after the {args.timeout:.0f} s timeout"
            elif rc != 0:
                why = f"exit status {rc}"
            elif not new:
                why = "wrote no summary row"
            if why:
                rows.append(failure_row(name, why))
                failed.append(name)
            print(f"== {name}: {wall:.1f} s{f' ({why})' if why else ''}", flush=True)
    total = time.perf_counter() - total_start

    lines = table_lines(rows)
    missed = sum(not r["held"] for r in rows) - len(failed)
    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, load (1 min) "
        f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; {started:%Y-%m-%d %H:%M %Z}"
    )
    times = ", ".join(f"{name.removeprefix('bench_')} {wall:.0f} s" for name, wall in walls.items())
    footer = [
        f"wall time per bench: {times}",
        f"total wall time: {total:.0f} s ({total / 60:.1f} min), {len(walls)} benches",
        machine,
        f"{len(rows)} rows: {missed} goal(s) not held; {len(failed)} bench(es) failed"
        + (f" ({', '.join(failed)})" if failed else ""),
    ]
    print("\n== summary\n" + "\n".join(lines) + "\n\n" + "\n".join(footer), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n\n" + "\n".join(f"{f}  " for f in footer) + "\n")
        print(f"table written to {args.out}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
