"""DeepACEv2 ablation tables (papers/002 Tables 6, 7, 10) from a sweep of training runs.

    python train.py -m experiment=deepace_ablation seed=0,1,2,3,4,5,6,7,8,9   # the sweep (see its file)
    cytobench reproduce deepace/table6 --runs runs/deepace_ablation_multirun/<date>

Each run is labelled by its model switches (HNAS, TNRL, TM, post-processing); repeats (seeds) are
summarised as mean +- std, printed beside the paper's means, with the Welch t-test p-value of
EG vs SOFT as the paper reports it. Values in percent like the paper.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from cytobench.evaluation.stats import compare_groups, mean_std
from cytobench.reporting.tables import format_table
from cytobench.reproduce.runs import Run, collect_runs, group_runs

PAPER_FILE = Path(__file__).resolve().parents[3] / "experiments" / "deepace" / "paper_tables.yaml"
TABLES = ("table6", "table7", "table10")


def ablation_label(run: Run) -> str:
    """Table 6 row name of a run, from its model switches."""
    model = run.config.get("model", {})
    name = "Single1"
    for flag, tag in (("hnas", "HNAS"), ("tnrl", "TNRL"), ("template", "TM")):
        if model.get(flag):
            name += f"+{tag}"
    post = model.get("postprocess", "nms")
    return name + {"soft": "[SOFT]", "eg": "[EG]"}.get(post, "")


def hnas_label(run: Run) -> str | None:
    """Table 7 row (full model with EG only): HNASv1 or HNASv2."""
    model = run.config.get("model", {})
    if not (
        model.get("hnas") and model.get("tnrl") and model.get("template") and model.get("postprocess") == "eg"
    ):
        return None
    return f"HNAS{model.get('hnas_criterion', 'v2')}"


def postprocess_label(run: Run) -> str | None:
    """Table 10 row (full model): w SOFT or w EG."""
    model = run.config.get("model", {})
    if not (model.get("hnas") and model.get("tnrl") and model.get("template")):
        return None
    if model.get("hnas_criterion", "v2") != "v2":
        return None
    return {"soft": "w SOFT", "eg": "w EG"}.get(model.get("postprocess"))


LABELS = {"table6": ablation_label, "table7": hnas_label, "table10": postprocess_label}


def build_table(name: str, runs: list[Run], paper: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Markdown table (paper means beside ours as mean +- std (n)) and the numbers behind it."""
    spec = paper[name]
    columns = spec["columns"]
    keys = [f"enum/{c}" for c in columns]
    groups = group_runs(runs, LABELS[name])
    rows: list[list[object]] = []
    result: dict[str, Any] = {"groups": {}, "p_values": {}}
    for label, values in spec["rows"].items():
        rows.append([f"{label} (paper)", *[f"{v:.2f}" for v in values]])
    for label, members in groups.items():
        stats = {k: mean_std([100 * r.metrics.get(k, float("nan")) for r in members]) for k in keys}
        result["groups"][label] = {k: {"mean": m, "std": s, "n": len(members)} for k, (m, s) in stats.items()}
        rows.append(
            [f"{label} (ours, n={len(members)})", *[f"{m:.2f} +- {s:.2f}" for m, s in stats.values()]]
        )
    if "w EG" in groups or "Single1+HNAS+TNRL+TM[EG]" in groups:
        eg = groups.get("w EG") or groups.get("Single1+HNAS+TNRL+TM[EG]") or []
        soft = groups.get("w SOFT") or groups.get("Single1+HNAS+TNRL+TM[SOFT]") or []
        if eg and soft:
            cmp = compare_groups([r.metrics for r in eg], [r.metrics for r in soft], keys)
            result["p_values"]["EG vs SOFT"] = {k: cmp[k]["p"] for k in keys}
            rows.append(["EG vs SOFT p (ours)", *[f"{cmp[k]['p']:.3g}" for k in keys]])
    for label, values in (spec.get("p_values") or {}).items():
        rows.append([f"{label} p (paper)", *[f"{v:g}" for v in values]])
    return format_table(["method", *columns], rows), result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, help="run or sweep folders to collect")
    parser.add_argument("--out", help="also write the markdown table here")


def run_table(name: str, args: argparse.Namespace) -> dict[str, Any]:
    paper = yaml.safe_load(PAPER_FILE.read_text())
    table, result = build_table(name, collect_runs(args.runs), paper)
    print(f"{paper[name]['caption']} (values in %)\n{table}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return result


def table6(args: argparse.Namespace) -> dict[str, Any]:
    return run_table("table6", args)


def table7(args: argparse.Namespace) -> dict[str, Any]:
    return run_table("table7", args)


def table10(args: argparse.Namespace) -> dict[str, Any]:
    return run_table("table10", args)
