"""DeepACEv2 test-set tables (papers/002 Tables 2 and 5) with Fig. 8 and Fig. 10.

    cytobench reproduce deepace/table2 --baseline runs/deepace_baseline/<date>/checkpoints/best.pt \\
        --deepace runs/deepace_cpu/<date>/checkpoints/best.pt --scale cpu --out runs/reproduce/deepace_test
    cytobench reproduce deepace/table5 ...   # same arguments: reuses the cached evaluation

A held-out test set is simulated with the DeepACEv2 checkpoint's own simulator settings (image
size, chromosome scale ...) and another seed: the paper's 275 images at ``--scale paper``, fewer at
``cpu`` / ``smoke`` (``--n-test`` overrides). Post-processing does not change training, so the
baseline checkpoint gives the NMS and SOFT rows and the DeepACEv2 checkpoint the NMS, SOFT and EG
rows (one backbone pass per checkpoint, :mod:`cytobench.reproduce.deepace_eval`). Both commands
write both tables (``table2.md/json``, ``table5.md/json``), the MR-FPPI curves of every row
(``fig8_mr_fppi.png``) and truth / baseline / DeepACEv2 overlays of the images where the two
differ most (``fig10_overlays.png``); the metrics are cached in ``eval_cache.json`` so the second
command only prints. Table 5 pairs the baseline with NMS ("Faster R-CNN") and DeepACEv2 with EG
("DeepACEv2") on the overlapping subset S_o (Eq. 14). Values in percent, like the paper.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cytobench.engine.checkpoint import load_checkpoint
from cytobench.reporting.tables import format_table
from cytobench.reproduce.deepace_eval import (
    evaluate_checkpoint_modes,
    load_test_data,
    simulate_test_set,
    simulator_settings,
)

PAPER_FILE = Path(__file__).resolve().parents[3] / "experiments" / "deepace" / "paper_tables.yaml"
TEST_IMAGES = {"paper": 275, "cpu": 75, "smoke": 4}
TEST_SEED_OFFSET = 10_000  # default test seed = training seed + this
ROWS: tuple[tuple[str, str, str], ...] = (  # (Table 2 row, checkpoint role, post-processing)
    ("Faster R-CNN (ResNet-101+FPN)", "baseline", "nms"),
    ("Faster R-CNN (ResNet-101+FPN+SOFT)", "baseline", "soft"),
    ("DeepACEv2 (HNAS+TNRL+TM)", "deepace", "nms"),
    ("DeepACEv2 (HNAS+TNRL+TM[SOFT])", "deepace", "soft"),
    ("DeepACEv2 (HNAS+TNRL+TM[EG])", "deepace", "eg"),
)
TABLE5_ROWS = {"Faster R-CNN": ROWS[0][0], "DeepACEv2": ROWS[4][0]}  # see table5_pairs for fallbacks
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
FIGURES = ("fig8_mr_fppi.png", "fig10_overlays.png")


def load_paper_tables(path: str | Path = PAPER_FILE) -> dict[str, Any]:
    """The paper's Tables 2 and 5 (``experiments/deepace/paper_tables.yaml``, percent)."""
    tables = yaml.safe_load(Path(path).read_text())
    return {"table2": tables["table2"], "table5": tables["table5"]}


def format_comparison(
    spec: Mapping[str, Any], ours: Mapping[str, Mapping[str, float]], pairs: Mapping[str, str]
) -> str:
    """Markdown table: each paper row followed by ours (percent, 2 decimals).

    Args:
        spec: a paper table (``columns`` and ``rows`` {name: values in percent}).
        ours: ``{our row name: {"enum/<column>": fraction}}``.
        pairs: ``{paper row name: our row name}``.
    """
    columns = spec["columns"]
    rows: list[list[object]] = []
    for name, values in spec["rows"].items():
        rows.append([f"{name} (paper)", *[f"{float(v):.2f}" for v in values]])
        mine = ours.get(pairs.get(name, ""))
        if mine is not None:
            rows.append(
                [f"{name} (ours)", *[f"{100 * mine.get(f'enum/{c}', float('nan')):.2f}" for c in columns]]
            )
    return format_table(["method", *[COLUMN_NAMES.get(c, c) for c in columns]], rows)


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


def mr_fppi_curve(
    targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]], iou_thr: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Miss rate against FPPI over all detections (the curve behind MR^-2, Fig. 8)."""
    from cytobench.evaluation.base import non_crowd, to_numpy
    from cytobench.evaluation.curves import miss_rate_fppi
    from cytobench.evaluation.enumeration import match_detections

    flags, scores, n_gt = [], [], 0
    for target, pred in zip(targets, predictions):
        gt = to_numpy(target["boxes"]).reshape(-1, 4)[non_crowd(target)]
        tp, _, _ = match_detections(gt, pred["boxes"], pred["scores"], iou_thr)
        flags.append(tp)
        scores.append(np.asarray(pred["scores"], dtype=np.float64).ravel())
        n_gt += len(gt)
    return miss_rate_fppi(np.concatenate(flags), np.concatenate(scores), max(n_gt, 1), max(len(targets), 1))


def pick_examples(
    targets: Sequence[Mapping[str, Any]],
    first: Sequence[Mapping[str, Any]],
    second: Sequence[Mapping[str, Any]],
    n: int = 2,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
) -> list[int]:
    """Indices of the ``n`` images where ``second`` makes the fewest errors (FP + FN) relative to ``first``.

    Ties go to the image where ``first`` errs most (the harder image), then to the lower index.
    """
    from cytobench.reporting.overlays import classify_predictions

    gains = []
    for k, (target, a, b) in enumerate(zip(targets, first, second)):
        errors = []
        for pred in (a, b):
            split = classify_predictions(target["boxes"], pred["boxes"], pred["scores"], score_thr, iou_thr)
            errors.append(int(split["fp"].sum() + split["missed"].sum()))
        gains.append((errors[1] - errors[0], -errors[0], k))
    return [k for _, _, k in sorted(gains)[:n]]


def reproduce(
    deepace: str | Path,
    baseline: str | Path | None,
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
    """Evaluate the rows of Tables 2 and 5, write tables and figures; returns what ``table2.json`` holds."""
    if scale not in TEST_IMAGES:
        raise ValueError(f"unknown scale {scale!r}: use one of {sorted(TEST_IMAGES)}")
    checkpoints = {"deepace": Path(deepace), **({"baseline": Path(baseline)} if baseline else {})}
    configs = {role: _model_and_data_config(path) for role, path in checkpoints.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_config = configs["deepace"][1]
    _, settings, train_seed = simulator_settings(data_config)
    notes = []
    if "baseline" in configs and simulator_settings(configs["baseline"][1])[1] != settings:
        notes.append("the baseline was trained on data simulated with other settings than DeepACEv2's")
    if scale == "paper" and settings["size"] != [1600, 1200]:
        notes.append(
            f"the paper's test images are 1600x1200; this checkpoint was trained on {settings['size']}"
        )
    n = int(n_test or TEST_IMAGES[scale])
    seed = train_seed + TEST_SEED_OFFSET if seed is None else int(seed)
    data_dir = Path(data_dir or os.environ.get("CYTOBENCH_DATA_DIR", "data"))
    progress(f"test set: {n} simulated images of {settings['size'][0]}x{settings['size'][1]} px, seed {seed}")
    ann_file, images_dir = simulate_test_set(data_config, data_dir / "deepace_test", n, seed)

    key = _cache_key(checkpoints, ann_file)
    cache_file = out_dir / "eval_cache.json"
    cached = json.loads(cache_file.read_text()) if use_cache and cache_file.is_file() else {}
    if cached.get("key") == key and all((out_dir / f).is_file() for f in FIGURES):
        progress(f"reusing the evaluation cached in {cache_file}")
        ours, skipped, seconds = cached["rows"], cached["skipped"], cached["seconds"]
    else:
        ours, skipped, seconds = _evaluate_rows(
            checkpoints, configs, ann_file, images_dir, device, out_dir, progress
        )
        cache_file.write_text(json.dumps({"key": key, "rows": ours, "skipped": skipped, "seconds": seconds}))

    paper = load_paper_tables()
    table2 = format_comparison(paper["table2"], ours, {r: r for r, _, _ in ROWS})
    pairs5 = table5_pairs(ours)
    table5 = format_comparison(paper["table5"], ours, pairs5)
    n_so = {r: int(ours[r].get("enum/overlap_n", 0)) for r in pairs5.values()}
    common = {
        "scale": scale,
        "test_set": {"ann_file": str(ann_file), "n_images": n, "seed": seed, "simulator_settings": settings},
        "checkpoints": {role: str(p) for role, p in checkpoints.items()},
        "backbones": {role: cfg[0].get("backbone") for role, cfg in configs.items()},
        "baseline_modules": {k: configs["baseline"][0].get(k) for k in ("hnas", "template", "tnrl")}
        if "baseline" in configs
        else None,
        "skipped_rows": skipped,
        "notes": notes,
        "evaluation_seconds": seconds,
    }
    result = {**common, "rows": ours, "table2": table2, "table5": table5, "overlap_n": n_so}
    (out_dir / "table2.md").write_text(table2 + "\n")
    (out_dir / "table5.md").write_text(table5 + "\n")
    (out_dir / "table2.json").write_text(json.dumps({**common, "rows": ours, "table": table2}, indent=2))
    t5_rows = {r: {k: v for k, v in ours[r].items() if "overlap" in k} for r in pairs5.values()}
    t5 = {**common, "paper_rows": pairs5, "rows": t5_rows, "table": table5}
    (out_dir / "table5.json").write_text(json.dumps(t5, indent=2))
    return result


def _evaluate_rows(
    checkpoints: Mapping[str, Path],
    configs: Mapping[str, tuple[dict[str, Any], dict[str, Any]]],
    ann_file: Path,
    images_dir: Path,
    device: str,
    out_dir: Path,
    progress: Callable[[str], None],
) -> tuple[dict[str, dict[str, float]], list[str], float]:
    """Every available row's metrics; writes Fig. 8 and Fig. 10. Returns (rows, skipped rows, seconds)."""
    from cytobench.reporting.overlays import save_overlay_grid
    from cytobench.reporting.plots import close, plot_mr_fppi

    start = time.perf_counter()
    wanted: dict[Path, list[str]] = {}  # one evaluation per distinct checkpoint file
    skipped = []
    for row, role, mode in ROWS:
        if role not in checkpoints:
            skipped.append(f"{row}: no {role} checkpoint")
        elif mode == "eg" and not configs[role][0].get("template", True):
            skipped.append(f"{row}: the {role} model has no Template branch")
        else:
            wanted.setdefault(checkpoints[role].resolve(), []).append(mode)
    results: dict[Path, dict[str, Any]] = {}
    for path, modes in wanted.items():
        progress(f"evaluating {path} with {', '.join(dict.fromkeys(modes))} ...")
        results[path] = evaluate_checkpoint_modes(
            path, ann_file, images_dir, list(dict.fromkeys(modes)), device
        )
    rows: dict[str, dict[str, float]] = {}
    predictions: dict[str, list[dict[str, Any]]] = {}
    for row, role, mode in ROWS:
        path = checkpoints[role].resolve() if role in checkpoints else None
        if path in results and mode in results[path]:
            rows[row], predictions[row] = results[path][mode]
    seconds = time.perf_counter() - start

    targets, paths = load_test_data(ann_file, images_dir)
    curves = {row: mr_fppi_curve(targets, preds) for row, preds in predictions.items()}
    close(plot_mr_fppi(curves, out_dir / FIGURES[0], mr2={r: m["enum/mr2"] for r, m in rows.items()}))
    shown = list(dict.fromkeys(table5_pairs(predictions).values()))
    picks = pick_examples(targets, predictions[shown[0]], predictions[shown[-1]]) if shown else []
    from cytobench.io.images import read_image_tensor

    save_overlay_grid(
        [read_image_tensor(paths[k]) for k in picks],
        [targets[k]["boxes"] for k in picks],
        {row: [predictions[row][k] for k in picks] for row in shown},
        out_dir / FIGURES[1],
        image_titles=[paths[k].name for k in picks],
    )
    return rows, skipped, seconds


def _model_and_data_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from cytobench.errors import BadInputError

    ckpt = load_checkpoint(path)
    if "model_config" not in ckpt or "data_config" not in ckpt:
        raise BadInputError(path, "not a cytobench training checkpoint (no model_config / data_config)")
    return dict(ckpt["model_config"]), dict(ckpt["data_config"])


def _cache_key(checkpoints: Mapping[str, Path], ann_file: Path) -> str:
    parts = {
        role: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for role, p in checkpoints.items()
    }
    parts["test"] = [str(Path(ann_file).resolve()), Path(ann_file).stat().st_mtime_ns]
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deepace", required=True, help="DeepACEv2 training checkpoint (gives NMS / SOFT / EG rows)"
    )
    parser.add_argument("--baseline", help="Faster R-CNN baseline checkpoint (experiment=deepace_baseline)")
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
    print(f"\nwritten to {args.out}: table2.md/json, table5.md/json, {', '.join(FIGURES)}")
    return result


def table5(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce deepace/table5``: baseline (NMS) and DeepACEv2 (EG) on the overlapping subset S_o."""
    result = _run(args)
    print(result["table5"])
    print(f"S_o chromosomes per row: {result['overlap_n']}")
    print(f"\nwritten to {args.out}: table5.md/json (and table2, {', '.join(FIGURES)})")
    return result
