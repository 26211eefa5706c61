"""DeepACEv2 test-set tables (papers/002 Tables 2 and 5) with Fig. 7, Fig. 8 and Fig. 10.

    cytobench reproduce deepace/table2 --baseline runs/deepace_baseline/<date>/checkpoints/best.pt \\
        --deepace runs/deepace_cpu/<date>/checkpoints/best.pt --scale cpu --out runs/reproduce/deepace_test
    cytobench reproduce deepace/table5 ...   # same arguments: reuses the cached evaluation
    # repeats, e.g. `python train.py -m experiment=deepace_cpu seed=0,1,2,3,4,5,6,7,8,9` and the baseline:
    cytobench reproduce deepace/table2 --deepace runs/deepace_cpu_multirun/<date>/*/checkpoints/best.pt \\
        --baseline runs/deepace_baseline_multirun/<date>/*/checkpoints/best.pt --scale cpu --out ...

A held-out test set is simulated with the (first) DeepACEv2 checkpoint's own simulator settings
(image size, chromosome scale ...) and another seed: the paper's 275 images at ``--scale paper``,
fewer at ``cpu`` / ``smoke`` (``--n-test`` overrides). Post-processing does not change training, so
each baseline checkpoint gives the NMS and SOFT rows and each DeepACEv2 checkpoint the NMS, SOFT and
EG rows (one backbone pass per checkpoint, :mod:`cytobench.reproduce.deepace_eval`).

Each checkpoint given to ``--deepace`` / ``--baseline`` is one repeat (the paper repeats the test ten
times, Fig. 7), all on the same test set: a row holds the mean over its repeats, printed as
``mean +- std`` with ``(ours, n=K)`` when K > 1. With two or more repeats, Table 2 gains the paired
t-test p-values of EG against SOFT (the same checkpoints post-processed both ways) and Table 5 the
Welch p-values of DeepACEv2 against Faster R-CNN, and ``fig7_repeats.png`` shows box plots of the
repeats per Table 2 metric.

Both commands write both tables (``table2.md/json``, ``table5.md/json``), the MR-FPPI curves of every
row (``fig8_mr_fppi.png``) and truth / baseline / DeepACEv2 overlays of the images where the two
differ most (``fig10_overlays.png``), both from the first checkpoint of each role; the metrics of
every repeat are cached in ``eval_cache.json`` so the second command only prints. Table 5 pairs the
baseline with NMS ("Faster R-CNN") and DeepACEv2 with EG ("DeepACEv2") on the overlapping subset
S_o (Eq. 14). Values in percent, like the paper.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cytobench.evaluation.stats import paired_ttest, summarize_runs, welch_ttest
from cytobench.io.files import read_json, write_json_atomic
from cytobench.reproduce.base import (
    TestSet,
    check_scale,
    checkpoint_configs,
    format_beside_paper,
    load_paper,
    simulator_settings,
    write_report,
)
from cytobench.reproduce.deepace_eval import (
    DEFAULT_SIMULATOR,
    TEST_SEED_OFFSET,
    evaluate_checkpoint_modes,
    held_out_test_set,
)
from cytobench.reproduce.deepace_figures import plot_repeats, plot_test_figures

TEST_IMAGES = {"paper": 275, "cpu": 75, "smoke": 4}
ROWS: tuple[tuple[str, str, str], ...] = (  # (Table 2 row, checkpoint role, post-processing)
    ("Faster R-CNN (ResNet-101+FPN)", "baseline", "nms"),
    ("Faster R-CNN (ResNet-101+FPN+SOFT)", "baseline", "soft"),
    ("DeepACEv2 (HNAS+TNRL+TM)", "deepace", "nms"),
    ("DeepACEv2 (HNAS+TNRL+TM[SOFT])", "deepace", "soft"),
    ("DeepACEv2 (HNAS+TNRL+TM[EG])", "deepace", "eg"),
)
TABLE5_ROWS = {"Faster R-CNN": ROWS[0][0], "DeepACEv2": ROWS[4][0]}  # see table5_pairs for fallbacks
SHORT_LABELS = dict(
    zip([r for r, _, _ in ROWS], ["FRCNN", "FRCNN SOFT", "DeepACEv2 NMS", "DeepACEv2 SOFT", "DeepACEv2 EG"])
)
ROLE_NAMES = {"deepace": "DeepACEv2", "baseline": "baseline"}
P_LABELS = {  # p-value rows, when both compared rows have at least two repeats
    "table2": "EG vs SOFT p (ours, paired)",
    "table5": "DeepACEv2 vs Faster R-CNN p (ours, Welch)",
}
COLUMN_NAMES = {
    "wcr": "WCR",
    "aer": "AER",
    "acc": "Acc",
    "f1": "F1",
    "map": "mAP",
    "mr2": "MR^-2",
    "overlap_f1": "F1",
    "overlap_precision": "Precision",
    "overlap_recall": "Recall",
    "overlap_acc": "Acc",
}
FIGURES = ("fig8_mr_fppi.png", "fig10_overlays.png")  # written by every evaluation
FIG7 = "fig7_repeats.png"  # written when a row has several repeats


def load_paper_tables() -> dict[str, Any]:
    """The paper's Tables 2 and 5 (package data ``papers/deepace_tables.yaml``, percent)."""
    tables = load_paper("deepace_tables")
    return {"table2": tables["table2"], "table5": tables["table5"]}


def format_comparison(
    spec: Mapping[str, Any],
    ours: Mapping[str, Mapping[str, float]],
    pairs: Mapping[str, str],
    *,
    std: Mapping[str, Mapping[str, float]] | None = None,
    n: Mapping[str, int] | None = None,
    p_rows: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """Markdown table: each paper row followed by ours (percent, 2 decimals).

    Args:
        spec: a paper table (``columns`` and ``rows`` {name: values in percent}).
        ours: ``{our row name: {"enum/<column>": fraction}}`` (the mean over repeats).
        pairs: ``{paper row name: our row name}``.
        std: ``{our row name: {"enum/<column>": std over repeats}}``.
        n: ``{our row name: repeats}``; rows with more than one print ``mean +- std`` as ``(ours, n=K)``.
        p_rows: ``{label: {"enum/<column>": p-value}}`` rows appended at the end.
    """
    keys = [f"enum/{c}" for c in spec["columns"]]
    repeats = {row: k for row, k in (n or {}).items() if k > 1}
    cells: dict[str, list[object]] = {}
    for row in set(pairs.values()) & set(ours):
        cells[row] = [f"{100 * ours[row].get(key, float('nan')):.2f}" for key in keys]
        if row in repeats:
            spread = (std or {}).get(row, {})
            cells[row] = [f"{c} +- {100 * spread.get(k, float('nan')):.2f}" for c, k in zip(cells[row], keys)]
    paper = {name: [f"{float(v):.2f}" for v in values] for name, values in spec["rows"].items()}
    extra = [[label, *[f"{p.get(k, float('nan')):.3g}" for k in keys]] for label, p in (p_rows or {}).items()]
    header = ["method", *[COLUMN_NAMES.get(c, c) for c in spec["columns"]]]
    return format_beside_paper(header, paper, cells, pairs=pairs, repeats=repeats, extra=extra)


def compare_rows(
    repeats: Mapping[str, Sequence[Mapping[str, float]]],
    a: str,
    b: str,
    columns: Sequence[str],
    test: Callable[[Sequence[float], Sequence[float]], float],
) -> dict[str, float] | None:
    """``{"enum/<column>": p-value of test(row a, row b) over their repeats}``; None unless both rows
    have at least two repeats. ``paired_ttest`` pairs the repeats by position."""
    if len(repeats.get(a, ())) < 2 or len(repeats.get(b, ())) < 2:
        return None

    def values(row: str, key: str) -> list[float]:
        return [m.get(key, float("nan")) for m in repeats[row]]

    keys = [f"enum/{c}" for c in columns]
    return {key: test(values(a, key), values(b, key)) for key in keys}


def table5_pairs(available: Mapping[str, Any]) -> dict[str, str]:
    """Table 5 (and Fig. 10) rows: the baseline with NMS and DeepACEv2 with EG, else its best available
    post-processing (SOFT, then NMS) when its model lacks the Template branch."""
    pairs = {}
    if ROWS[0][0] in available:
        pairs["Faster R-CNN"] = ROWS[0][0]
    deepace = [r for r in (ROWS[4][0], ROWS[3][0], ROWS[2][0]) if r in available]
    if deepace:
        pairs["DeepACEv2"] = deepace[0]
    return pairs


def reproduce(
    deepace: str | Path | Sequence[str | Path],
    baseline: str | Path | Sequence[str | Path] | None,
    out_dir: str | Path,
    *,
    scale: str = "cpu",
    n_test: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate the rows of Tables 2 and 5, write tables and figures; returns what ``table2.json`` holds.

    ``deepace`` and ``baseline`` are one checkpoint or several (one per repeat, e.g. per training
    seed); the test set is simulated from the first DeepACEv2 checkpoint's data config.
    """
    n = int(n_test or 0) or check_scale(scale, TEST_IMAGES)
    checkpoints = {role: _paths(v) for role, v in (("deepace", deepace), ("baseline", baseline)) if _paths(v)}
    if "deepace" not in checkpoints:
        raise ValueError("no DeepACEv2 checkpoint given")
    configs = {role: [checkpoint_configs(p) for p in paths] for role, paths in checkpoints.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_config = configs["deepace"][0][1]
    settings = simulator_settings(data_config, DEFAULT_SIMULATOR)[1]
    notes = []
    for role, role_configs in configs.items():
        other = sum(simulator_settings(data, DEFAULT_SIMULATOR)[1] != settings for _, data in role_configs)
        if other:
            notes.append(
                f"{other} of {len(role_configs)} {ROLE_NAMES[role]} checkpoint(s) were trained on data simulated"
                " with other settings than the test set's (those of the first DeepACEv2 checkpoint)"
            )
    if scale == "paper" and settings["size"] != [1600, 1200]:
        notes.append(
            f"the paper's test images are 1600x1200; this checkpoint was trained on {settings['size']}"
        )
    test_set = held_out_test_set(data_config, n, seed, data_dir)
    ann_file, seed = test_set.ann_file, test_set.seed
    progress(f"test set: {n} simulated images of {settings['size'][0]}x{settings['size'][1]} px, seed {seed}")

    key = _cache_key(checkpoints, ann_file)
    cache_file = out_dir / "eval_cache.json"
    cached = read_json(cache_file) if use_cache and cache_file.is_file() else {}
    if cached.get("key") == key and all((out_dir / f).is_file() for f in FIGURES):
        progress(f"reusing the evaluation cached in {cache_file}")
        evaluation = cached
    else:
        repeats, skipped, seconds = _evaluate_rows(checkpoints, configs, test_set, device, out_dir, progress)
        summary = {row: summarize_runs(runs) for row, runs in repeats.items()}
        evaluation = {
            "key": key,
            "rows": {row: {k: mean for k, (mean, _, _) in s.items()} for row, s in summary.items()},
            "std": {row: {k: std for k, (_, std, _) in s.items()} for row, s in summary.items()},
            "repeats": repeats,
            "skipped": skipped,
            "seconds": seconds,
        }
        write_json_atomic(cache_file, evaluation)
    ours, std, repeats = evaluation["rows"], evaluation["std"], evaluation["repeats"]
    n_repeats = {row: len(runs) for row, runs in repeats.items()}

    paper = load_paper_tables()
    pairs5 = table5_pairs(ours)
    pairs = {"table2": {r: r for r, _, _ in ROWS}, "table5": pairs5}
    compared = {  # table: (row a, row b, test) of its p-value row
        "table2": (ROWS[4][0], ROWS[3][0], paired_ttest),  # the same checkpoints post-processed both ways
        "table5": (pairs5.get("DeepACEv2", ""), pairs5.get("Faster R-CNN", ""), welch_ttest),
    }
    p_values: dict[str, dict[str, dict[str, float]]] = {}
    tables = {}
    for t, (a, b, test) in compared.items():
        p = compare_rows(repeats, a, b, paper[t]["columns"], test)
        p_values[t] = {P_LABELS[t]: p} if p is not None else {}
        tables[t] = format_comparison(paper[t], ours, pairs[t], std=std, n=n_repeats, p_rows=p_values[t])
    table2, table5 = tables["table2"], tables["table5"]
    figures = list(FIGURES)
    if any(k > 1 for k in n_repeats.values()):
        paired = p_values["table2"].get(P_LABELS["table2"], {})
        titles = {c: f"{COLUMN_NAMES[c]} (%)" for c in paper["table2"]["columns"]}
        plot_repeats(repeats, titles, SHORT_LABELS, paired, out_dir / FIG7)
        figures.append(FIG7)
    else:
        (out_dir / FIG7).unlink(missing_ok=True)  # a figure of earlier repeats would mislead
    n_so = {r: int(ours[r].get("enum/overlap_n", 0)) for r in pairs5.values()}
    common = {
        "scale": scale,
        "test_set": {"ann_file": str(ann_file), "n_images": n, "seed": seed, "simulator_settings": settings},
        "checkpoints": {role: [str(path) for path in paths] for role, paths in checkpoints.items()},
        "backbones": {role: cfgs[0][0].get("backbone") for role, cfgs in configs.items()},
        "baseline_modules": {k: configs["baseline"][0][0].get(k) for k in ("hnas", "template", "tnrl")}
        if "baseline" in configs
        else None,
        "skipped_rows": evaluation["skipped"],
        "notes": notes,
        "evaluation_seconds": evaluation["seconds"],
        "figures": figures,
    }
    t2 = {**common, "rows": ours, "std": std, "repeats": repeats, "p_values": p_values["table2"]}
    result = {**t2, "p_values": p_values, "table2": table2, "table5": table5, "overlap_n": n_so}
    write_report(out_dir, "table2", table2, {**t2, "table": table2})
    t5 = {
        **common,
        "paper_rows": pairs5,
        "rows": {r: _overlap_only(ours[r]) for r in pairs5.values()},
        "std": {r: _overlap_only(std[r]) for r in pairs5.values()},
        "repeats": {r: [_overlap_only(m) for m in repeats[r]] for r in pairs5.values()},
        "p_values": p_values["table5"],
        "table": table5,
    }
    write_report(out_dir, "table5", table5, t5)
    return result


def _overlap_only(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if "overlap" in k}


def _evaluate_rows(
    checkpoints: Mapping[str, Sequence[Path]],
    configs: Mapping[str, Sequence[tuple[dict[str, Any], dict[str, Any]]]],
    test_set: TestSet,
    device: str,
    out_dir: Path,
    progress: Callable[[str], None],
) -> tuple[dict[str, list[dict[str, float]]], list[str], float]:
    """Every available row's metrics, one dict per checkpoint of its role; writes Fig. 8 and Fig. 10
    from the first checkpoint of each role. Returns (repeats per row, skipped rows, seconds)."""
    start = time.perf_counter()
    wanted: dict[Path, list[str]] = {}  # one evaluation per distinct checkpoint file
    skipped = []
    for row, role, mode in ROWS:
        if role not in checkpoints:
            skipped.append(f"{row}: no {role} checkpoint")
        elif mode == "eg" and not all(model.get("template", True) for model, _ in configs[role]):
            skipped.append(f"{row}: a {role} model has no Template branch")
        else:
            for path in checkpoints[role]:
                wanted.setdefault(path.resolve(), []).append(mode)
    firsts = {paths[0].resolve() for paths in checkpoints.values()}  # the figures show these
    metrics: dict[tuple[Path, str], dict[str, float]] = {}
    first_predictions: dict[tuple[Path, str], list[dict[str, Any]]] = {}
    for k, (path, modes) in enumerate(wanted.items(), start=1):
        modes = list(dict.fromkeys(modes))
        progress(f"evaluating checkpoint {k}/{len(wanted)} {path} with {', '.join(modes)} ...")
        for mode, (scores, predictions) in evaluate_checkpoint_modes(
            path, test_set.ann_file, test_set.images_dir, modes, device
        ).items():
            metrics[path, mode] = scores
            if path in firsts:
                first_predictions[path, mode] = predictions
    repeats: dict[str, list[dict[str, float]]] = {}
    shown: dict[str, list[dict[str, Any]]] = {}  # row: predictions of its role's first checkpoint
    for row, role, mode in ROWS:
        if role in checkpoints and (checkpoints[role][0].resolve(), mode) in metrics:
            repeats[row] = [metrics[path.resolve(), mode] for path in checkpoints[role]]
            shown[row] = first_predictions[checkpoints[role][0].resolve(), mode]
    seconds = time.perf_counter() - start

    mr2 = {row: runs[0]["enum/mr2"] for row, runs in repeats.items()}
    compared = list(dict.fromkeys(table5_pairs(shown).values()))
    plot_test_figures(test_set, shown, mr2, compared, out_dir / FIGURES[0], out_dir / FIGURES[1])
    return repeats, skipped, seconds


def _paths(value: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """One checkpoint or several as a list of paths (none for None or "")."""
    if not value:
        return []
    return [Path(value)] if isinstance(value, (str, Path)) else [Path(v) for v in value]


def _cache_key(checkpoints: Mapping[str, Sequence[Path]], ann_file: Path) -> str:
    parts: dict[str, list[Any]] = {
        role: [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
        for role, paths in checkpoints.items()
    }
    parts["test"] = [str(Path(ann_file).resolve()), Path(ann_file).stat().st_mtime_ns]
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deepace",
        nargs="+",
        required=True,
        metavar="CKPT",
        help="DeepACEv2 training checkpoint(s), one per repeat, e.g. per seed (give NMS / SOFT / EG rows;"
        " the test set follows the first one's data config)",
    )
    parser.add_argument(
        "--baseline",
        nargs="+",
        metavar="CKPT",
        help="Faster R-CNN baseline checkpoint(s) (experiment=deepace_baseline), one per repeat",
    )
    parser.add_argument(
        "--scale", choices=sorted(TEST_IMAGES), default="cpu", help="test-set size (paper: 275 images)"
    )
    parser.add_argument("--n-test", type=int, help="test images (overrides --scale)")
    parser.add_argument(
        "--seed", type=int, help=f"test-set seed (default: training seed + {TEST_SEED_OFFSET})"
    )
    parser.add_argument(
        "--out", default="runs/reproduce/deepace_test", help="folder for tables, json, figures"
    )
    parser.add_argument(
        "--data-dir", help="cache of simulated test sets (default $CYTOBENCH_DATA_DIR or data/)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cache", action="store_true", help="re-evaluate even if eval_cache.json matches")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return reproduce(
        args.deepace,
        args.baseline,
        args.out,
        scale=args.scale,
        n_test=args.n_test,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        use_cache=not args.no_cache,
    )


def table2(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce deepace/table2``: all rows on the test set."""
    result = _run(args)
    print(result["table2"])
    for line in result["skipped_rows"] + result["notes"]:
        print(f"note: {line}")
    print(f"\nwritten to {args.out}: table2.md/json, table5.md/json, {', '.join(result['figures'])}")
    return result


def table5(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce deepace/table5``: baseline (NMS) and DeepACEv2 (EG) on the overlapping subset S_o."""
    result = _run(args)
    print(result["table5"])
    print(f"S_o chromosomes per row: {result['overlap_n']}")
    print(f"\nwritten to {args.out}: table5.md/json (and table2, {', '.join(result['figures'])})")
    return result
