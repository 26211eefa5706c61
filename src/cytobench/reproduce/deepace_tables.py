"""DeepACEv2 ablation tables (papers/002 Tables 6, 7, 10) from a sweep of training runs.

    python train.py -m experiment=deepace_ablation seed=0,1,2,3,4,5,6,7,8,9   # the sweep (see its file)
    cytobench reproduce deepace/table6 --runs runs/deepace_ablation_multirun/<date>

Each run is labelled by its model switches (HNAS, TNRL, TM, post-processing); repeats (seeds) are
summarised as mean +- std, printed beside the paper's means. Values in percent like the paper.

Post-processing does not change training, so a run with the Template branch is re-evaluated on its
own validation set under NMS, Soft-NMS and EG-NMS (cached in ``<run>/postprocess_metrics.json``): one
trained model per seed gives the TM, TM[SOFT] and TM[EG] rows. EG vs SOFT is then a paired
comparison (same seed, same weights), reported with the paired t-test beside Welch's.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cytobench.errors import BadInputError
from cytobench.evaluation.stats import compare_groups, mean_std, paired_ttest
from cytobench.io.files import read_json, write_json_atomic
from cytobench.reproduce.base import format_beside_paper, load_paper, write_text_atomic
from cytobench.reproduce.runs import Run, collect_runs, group_runs

TABLES = ("table6", "table7", "table10")


def ablation_label(run: Run) -> str | None:
    """Table 6 row name of a run, from its model switches (None for HNASv1 runs, which are Table 7's)."""
    model = run.config.get("model", {})
    if model.get("hnas") and model.get("hnas_criterion", "v2") != "v2":
        return None
    name = "Single1"
    for flag, tag in (("hnas", "HNAS"), ("tnrl", "TNRL"), ("template", "TM")):
        if model.get(flag):
            name += f"+{tag}"
    post = model.get("postprocess", "nms")
    return name + {"soft": "[SOFT]", "eg": "[EG]"}.get(post, "")


def _row_order(label: str) -> tuple[int, int, str]:
    """Rows in the paper's order: fewer modules first, then NMS, SOFT, EG."""
    post = 2 if label.endswith("[EG]") or label == "w EG" else 1 if "SOFT" in label else 0
    return (label.count("+"), post, label)


def run_scale(run: Run) -> str:
    """What a run was trained at (data, backbone, epochs): tables say it, and warn when runs mix scales."""
    data, model = run.config.get("data") or {}, run.config.get("model") or {}
    prepare = data.get("prepare") or {}
    size = "x".join(str(v) for v in data.get("size") or prepare.get("size") or ["?"])
    parts = [
        f"{size} px",
        f"{prepare.get('n_chromosomes', 46)} chromosomes/cell",
        f"{data.get('n_images', '?')} images",
        str(model.get("backbone", "?")),
        f"{(run.config.get('trainer') or {}).get('max_epochs', '?')} epochs",
    ]
    return ", ".join(parts)


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
POSTPROCESS_CACHE = "postprocess_metrics.json"


def postprocess_metrics(run: Run, modes: Sequence[str], device: str = "cpu") -> dict[str, dict[str, float]]:
    """Validation metrics of a run's ``best.pt`` under each post-processing (cached in the run folder)."""
    from cytobench.reproduce.deepace_eval import evaluate_checkpoint_modes

    checkpoint = run.path / "checkpoints" / "best.pt"
    if not checkpoint.is_file():
        raise BadInputError(run.path, "no checkpoints/best.pt to re-evaluate under other post-processings")
    cache_file = run.path / POSTPROCESS_CACHE
    cache = read_json(cache_file) if cache_file.is_file() else {}
    if cache.get("checkpoint_mtime") != checkpoint.stat().st_mtime:
        cache = {"checkpoint_mtime": checkpoint.stat().st_mtime, "metrics": {}}
    missing = [m for m in modes if m not in cache["metrics"]]
    if missing:
        data_dir = Path(run.config["data"]["dir"])
        evaluator = {k: v for k, v in (run.config.get("evaluator") or {}).items() if not k.startswith("_")}
        results = evaluate_checkpoint_modes(
            checkpoint, data_dir / "val.json", data_dir / "images", missing, device, evaluator
        )
        cache["metrics"].update({mode: metrics for mode, (metrics, _) in results.items()})
        write_json_atomic(cache_file, cache)
    return {mode: cache["metrics"][mode] for mode in modes}


def expand_postprocess(
    runs: Sequence[Run], modes: Sequence[str] = ("nms", "soft", "eg"), device: str = "cpu"
) -> list[Run]:
    """Each run with the Template branch becomes one run per post-processing; others (and runs whose
    checkpoint is gone) are kept as they are."""
    out: list[Run] = []
    for run in runs:
        if not (run.config.get("model") or {}).get("template"):
            out.append(run)
            continue
        if not (run.path / "checkpoints" / "best.pt").is_file():
            print(
                f"{run.path}: no checkpoints/best.pt, kept with its own post-processing only", file=sys.stderr
            )
            out.append(run)
            continue
        for mode, metrics in postprocess_metrics(run, modes, device).items():
            config = copy.deepcopy(run.config)
            config["model"]["postprocess"] = mode
            out.append(Run(run.path, config, metrics))
    return out


def paired_p_values(a: Sequence[Run], b: Sequence[Run], keys: Sequence[str]) -> dict[str, float] | None:
    """Paired t-test p-values when both groups hold the same trained runs (matched by folder), else None."""
    by_path = {run.path: run for run in b}
    if len(a) != len(b) or set(by_path) != {run.path for run in a}:
        return None
    pairs = [(run, by_path[run.path]) for run in a]
    return {
        k: paired_ttest(
            [x.metrics.get(k, float("nan")) for x, _ in pairs],
            [y.metrics.get(k, float("nan")) for _, y in pairs],
        )
        for k in keys
    }


def build_table(name: str, runs: list[Run], paper: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Markdown table (paper means beside ours as mean +- std (n)) and the numbers behind it."""
    spec = paper[name]
    columns = spec["columns"]
    keys = [f"enum/{c}" for c in columns]
    groups = dict(sorted(group_runs(runs, LABELS[name]).items(), key=lambda item: _row_order(item[0])))
    ours: dict[str, list[object]] = {}
    rows: list[list[object]] = []  # p-value rows after ours
    result: dict[str, Any] = {"groups": {}, "p_values": {}}
    for label, members in groups.items():
        stats = {k: mean_std([100 * r.metrics.get(k, float("nan")) for r in members]) for k in keys}
        result["groups"][label] = {k: {"mean": m, "std": s, "n": len(members)} for k, (m, s) in stats.items()}
        ours[label] = [f"{m:.2f} +- {s:.2f}" for m, s in stats.values()]
    if "w EG" in groups or "Single1+HNAS+TNRL+TM[EG]" in groups:
        eg = groups.get("w EG") or groups.get("Single1+HNAS+TNRL+TM[EG]") or []
        soft = groups.get("w SOFT") or groups.get("Single1+HNAS+TNRL+TM[SOFT]") or []
        if eg and soft:
            cmp = compare_groups([r.metrics for r in eg], [r.metrics for r in soft], keys)
            result["p_values"]["EG vs SOFT"] = {k: cmp[k]["p"] for k in keys}
            rows.append(["EG vs SOFT p (ours, Welch)", *[f"{cmp[k]['p']:.3g}" for k in keys]])
            paired = paired_p_values(eg, soft, keys)
            if paired is not None:
                result["p_values"]["EG vs SOFT (paired)"] = paired
                rows.append(["EG vs SOFT p (ours, paired)", *[f"{paired[k]:.3g}" for k in keys]])
    for label, values in (spec.get("p_values") or {}).items():
        rows.append([f"{label} p (paper)", *[f"{v:g}" for v in values]])
    paper_rows = {label: [f"{v:.2f}" for v in values] for label, values in spec["rows"].items()}
    repeats = {label: len(members) for label, members in groups.items()}
    table = format_beside_paper(["method", *columns], paper_rows, ours, repeats=repeats, extra=rows)
    return table, result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, help="run or sweep folders to collect")
    parser.add_argument(
        "--out", help="also write the markdown table here (and its numbers beside it, as <name>.json)"
    )
    parser.add_argument(
        "--no-reevaluate",
        action="store_true",
        help="use each run's own post-processing only (no NMS / SOFT / EG re-evaluation of Template runs)",
    )
    parser.add_argument("--device", default="cpu", help="device for the re-evaluation (cpu, cuda, auto)")


def run_table(name: str, args: argparse.Namespace) -> dict[str, Any]:
    paper = load_paper("deepace_tables")
    runs = collect_runs(args.runs)
    if not getattr(args, "no_reevaluate", False):
        runs = expand_postprocess(runs, device=getattr(args, "device", "cpu"))
    table, result = build_table(name, runs, paper)
    scales = sorted({run_scale(run) for run in runs})
    result["scales"] = scales
    if len(scales) > 1:
        print(
            f"warning: these runs were trained at {len(scales)} different scales: {scales}", file=sys.stderr
        )
    scale_line = "Scale (ours): " + " | ".join(scales)
    print(f"{paper[name]['caption']} (values in %)\n{table}\n{scale_line}")
    if args.out:
        out = Path(args.out)
        write_text_atomic(out, f"{table}\n\n{scale_line}\n")
        if out.suffix != ".json":
            write_json_atomic(out.with_suffix(".json"), {**result, "table": table}, indent=2)
    return result


def table6(args: argparse.Namespace) -> dict[str, Any]:
    return run_table("table6", args)


def table7(args: argparse.Namespace) -> dict[str, Any]:
    return run_table("table7", args)


def table10(args: argparse.Namespace) -> dict[str, Any]:
    return run_table("table10", args)
