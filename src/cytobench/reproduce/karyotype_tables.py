"""KTH karyotyping thesis (papers/004) Table 5.1 and a karyotype-accuracy table, with Figs. 5.1-5.4 style figures.

    python train.py experiment=karyotype_yolo            # and karyotype_faster_rcnn, _rfcn, _ssd, _two_stage
    python train.py experiment=karyotype_two_stage data=karyotype_spreads     # the same on metaphase spreads
    cytobench reproduce karyotype/table5_1 --runs runs/karyotype_* --scale cpu --out runs/reproduce/karyotype
    cytobench reproduce karyotype/accuracy --runs runs/karyotype_* --scale cpu --out runs/reproduce/karyotype

``--runs`` collects finished runs (their ``checkpoints/best.pt``), ``--checkpoint`` takes checkpoint files;
any mix of the five karyotype models (YOLOv8, Faster R-CNN, SSD, R-FCN, the two-stage karyotyper) trained on
either data kind (``data=karyogram``: karyogram-layout images, the thesis' kind; ``data=karyotype_spreads``:
metaphase spreads). A model's row comes from its ``model._target_``, its data kind from the simulator its data
config names; several checkpoints of one row and kind are repeats (cells ``mean +- std``, ``(ours, n=K)``),
so they must be one model (seeds): checkpoints of one row and kind that differ in backbone, architecture,
R-FCN stride or two-stage detector are refused (score each in its own command).

Every model of a data kind is scored on the same held-out test set: simulated once (cached under
``<out>/test_data`` or ``--data-dir``) with the first such model's simulator settings (size, aneuploid mix)
and another seed (:func:`cytobench.reproduce.base.held_out_test_set`); ``--scale`` sets its size (smoke 4,
cpu 50, paper 200 cells; ``--n-test`` overrides). The one streaming loop feeds it to
:class:`~cytobench.evaluation.karyotype.KaryotypeEvaluator` (IoU 0.5, detections scored >= ``--score-thr``,
the training evaluator's 0.5 by default), on the model's labels mapped to the classes 1-22, X, Y by the
checkpoint's category names (:func:`cytobench.karyotype.command.karyotype_label_map`, which refuses a
checkpoint of other classes). YOLO, SSD and R-FCN are scored twice: raw (the thesis' kind of row) and with the
pair prior as cell post-processing (``<model> + pair prior``: one box per chromosome, the cell's boxes labelled
jointly, :mod:`cytobench.models.karyotype_cell`); Faster R-CNN's torchvision head gives no per-box class scores.

* ``karyotype/table5_1`` writes ``table5_1.md`` / ``.json``: recall, precision and F1 (means over the 24
  classes, :mod:`cytobench.evaluation.karyotype`) of every model on karyograms, each thesis row
  (``papers/karyotype.yaml``) followed by ours, and the same on metaphase spreads, which the thesis did not
  report (its cells there: '-'). The thesis trained YOLOv5; ours is YOLOv8 (the row says so). Under it, ours
  at the confidence of the best class-mean F1 (how YOLOv5 reports P / R: the thesis' YOLO row). Beside them
  ``fig5_1_4_<kind>.png`` per data kind: the first test image with the truth and each model's boxes labelled
  with class and confidence (thesis Figs. 5.1-5.4, one panel per model).
* ``karyotype/accuracy`` writes ``karyotype_accuracy.md`` / ``.json``: per data kind (spreads first) and model,
  the whole-cell measures: exact-match rate (every chromosome found and classed right), count match (the same
  ISCN karyotype), class and Denver-group accuracy of the matched chromosomes, and aneuploidy sensitivity /
  specificity ("this cell is not 46,XX / 46,XY") with 95% Wilson intervals; then the issue's claim, the
  two-stage model against each single-stage detector on spreads (F1 and exact match: ours, theirs, holds or
  not), and ``confusion_<kind>_<model>.png`` per row (the first repeat's 24 x 24 confusion matrix).

A command refuses to replace its own files already in ``--out`` unless ``--overwrite`` (the two commands
write different files, so both can share one ``--out``); the scoring is redone by each.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cytobench.errors import BadInputError
from cytobench.evaluation.stats import mean_std
from cytobench.reporting.tables import format_table
from cytobench.reproduce.base import (
    check_scale,
    held_out_test_set,
    load_paper,
    simulator_settings,
    write_report,
)
from cytobench.reproduce.karyotype_figures import confusion_figures, prediction_figures
from cytobench.reproduce.karyotype_models import (
    DATA_KINDS,
    KIND_TITLES,
    MODEL_ROWS,
    KaryotypeModel,
    check_one_variant_per_row,
    data_kind,
    model_row,
    models_from_checkpoints,
    models_from_runs,
    score_model,
)

__all__ = [
    "DATA_KINDS",
    "MODEL_ROWS",
    "TEST_IMAGES",
    "KaryotypeModel",
    "accuracy",
    "build_accuracy_table",
    "build_table5_1",
    "data_kind",
    "model_row",
    "models_from_checkpoints",
    "models_from_runs",
    "reproduce",
    "score_model",
    "table5_1",
]

TEST_IMAGES = {"smoke": 4, "cpu": 50, "paper": 200}  # held-out cells per data kind
#: models scored a second time with the pair prior as cell post-processing (YOLO's own ``pair_prior``; SSD's
#: and R-FCN's per-class scores through :class:`~cytobench.models.karyotype_cell.PairPriorCells`)
PRIOR_ROWS = {row: f"{row} + pair prior" for row in ("YOLOv8", "R-FCN", "SSD")}
ROW_ORDER = tuple(r for row in MODEL_ROWS.values() for r in (row, PRIOR_ROWS.get(row)) if r)
TWO_STAGE = "Two-stage"
#: said in our rows: the thesis' model was another YOLO; what a prior row is
ROW_NOTES = {
    "YOLOv8": "the thesis used YOLOv5",
    **{
        row: "the same weights; one box per chromosome, classes by the pair prior"
        for row in PRIOR_ROWS.values()
    },
}
OUTPUTS = {  # command -> (its fixed files, its globbed files)
    "table5_1": (("table5_1.md", "table5_1.json"), "fig5_1_4_*.png"),
    "accuracy": (("karyotype_accuracy.md", "karyotype_accuracy.json"), "confusion_*.png"),
}


# ------------------------------------------------------------------------------------------------ tables
def _cell(values: Sequence[float], digits: int = 3) -> str:
    """``mean`` (one value) or ``mean +- std``; '-' without a finite value."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return "-"
    mean, std = mean_std(finite)
    return f"{mean:.{digits}f}" + (f" +- {std:.{digits}f}" if len(finite) > 1 else "")


def _thesis_cell(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _ours_label(row: str, n: int) -> str:
    """``YOLOv8 (ours, n=3; the thesis used YOLOv5)``."""
    note = f"; {ROW_NOTES[row]}" if row in ROW_NOTES else ""
    return f"{row} (ours{f', n={n}' if n > 1 else ''}{note})"


Scores = Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]]  # kind -> row -> summary per repeat


#: ours at the confidence of the best class-mean F1 (:mod:`cytobench.evaluation.karyotype`)
BEST_F1 = ("best_f1_recall", "best_f1_precision", "best_f1", "best_f1_conf")
BEST_F1_TITLE = (
    "Ours at the confidence of the best class-mean F1, chosen on the test cells themselves (how YOLOv5's "
    "validation reports P and R, so the thesis' YOLO row; optimistic beside the fixed score threshold above):"
)


def build_table5_1(spec: Mapping[str, Any], scores: Scores) -> tuple[str, dict[str, Any]]:
    """Table 5.1: each thesis row (karyograms; '-' on spreads) followed by ours, then our rows without one.

    Args:
        spec: ``table5_1`` of ``papers/karyotype.yaml``.
        scores: ``{kind: {row: [metrics of each repeat]}}`` (unprefixed karyotype summary keys).

    Returns:
        ``(markdown, {"paper", "ours", "pairs"})``; ``ours[kind][row]`` holds each column's mean, std, n.
    """
    columns = list(spec["columns"])
    kinds = list(DATA_KINDS)
    header = ["model"] + [
        f"{c.capitalize() if c != 'f1' else 'F1'} ({KIND_TITLES[k]})" for k in kinds for c in columns
    ]
    ours_rows = [row for row in ROW_ORDER if any(row in scores.get(k, {}) for k in kinds)]

    def ours(row: str) -> list[str]:
        cells = []
        n = max(len(scores.get(k, {}).get(row, [])) for k in kinds)
        for kind in kinds:
            runs = scores.get(kind, {}).get(row, [])
            cells += [_cell([r.get(c, float("nan")) for r in runs]) for c in columns]
        return [_ours_label(row, n), *cells]

    rows: list[list[str]] = []
    pairs: dict[str, str] = {}
    for paper_row in spec["rows"]:
        name = str(paper_row["name"])
        thesis = [_thesis_cell(paper_row.get(c)) for c in columns] + ["-"] * len(columns)
        rows.append(
            [f"{name} (thesis; batch {paper_row['batch_size']}, {paper_row['epochs']} epochs)", *thesis]
        )
        if paper_row.get("ours") in ours_rows:
            pairs[name] = str(paper_row["ours"])
            rows.append(ours(pairs[name]))
    rows += [ours(row) for row in ours_rows if row not in pairs.values()]
    result = {
        "caption": spec["caption"],
        "paper": {str(r["name"]): {c: r.get(c) for c in columns} for r in spec["rows"]},
        "pairs": pairs,
        "ours": {
            kind: {
                row: {
                    c: dict(
                        zip(("mean", "std"), mean_std([r.get(c, float("nan")) for r in runs])), n=len(runs)
                    )
                    for c in [*columns, "micro_recall", "micro_precision", "micro_f1", "mAP50", *BEST_F1]
                }
                for row, runs in scores.get(kind, {}).items()
            }
            for kind in kinds
        },
    }
    best_rows = [
        [
            _ours_label(row, len(runs)),
            KIND_TITLES[kind],
            *(_cell([r.get(c, float("nan")) for r in runs]) for c in BEST_F1),
        ]
        for kind in kinds
        for row, runs in scores.get(kind, {}).items()
    ]
    best = format_table(["model", "images", "recall", "precision", "F1", "confidence"], best_rows)
    return f"{format_table(header, rows)}\n\n{BEST_F1_TITLE}\n\n{best}", result


ACCURACY_COLUMNS = (  # (summary key, column title)
    ("exact_match", "exact match"),
    ("count_match", "count match"),
    ("class_accuracy", "class acc."),
    ("denver_accuracy", "Denver acc."),
)


def _rate_cell(runs: Sequence[Mapping[str, float]], name: str) -> str:
    """One repeat: ``rate [lo, hi]`` (Wilson); several: ``mean +- std`` of the rates (intervals in the json)."""
    if len(runs) == 1:
        r = runs[0]
        if math.isnan(r.get(name, float("nan"))):
            return "-"
        return f"{r[name]:.3f} [{r[f'{name}_lo']:.3f}, {r[f'{name}_hi']:.3f}]"
    return _cell([r.get(name, float("nan")) for r in runs])


def claims(scores: Scores, kind: str = "spread") -> list[dict[str, Any]]:
    """The issue's target on ``kind``: the two-stage model beats every single-stage detector in (macro) F1 and
    exact-match rate. Per detector and metric: both means and whether the two-stage one is higher."""
    rows = scores.get(kind, {})
    if TWO_STAGE not in rows:
        return []
    out = []
    for other in ROW_ORDER:
        if other == TWO_STAGE or other not in rows:
            continue
        for metric in ("f1", "exact_match"):
            ours = mean_std([r.get(metric, float("nan")) for r in rows[TWO_STAGE]])[0]
            theirs = mean_std([r.get(metric, float("nan")) for r in rows[other]])[0]
            holds = bool(ours > theirs) if not (math.isnan(ours) or math.isnan(theirs)) else None
            out.append(
                {
                    "kind": kind,
                    "than": other,
                    "metric": metric,
                    "two_stage": ours,
                    "other": theirs,
                    "holds": holds,
                }
            )
    return out


def build_accuracy_table(scores: Scores) -> tuple[str, dict[str, Any]]:
    """Whole-cell measures per data kind (spreads first) and model, the two-stage model first; then the
    two-stage vs single-stage comparison on spreads.

    Args:
        scores: ``{kind: {row: [metrics of each repeat]}}`` (unprefixed karyotype summary keys).
    """
    header = [
        "model",
        "data",
        "cells (abnormal)",
        *[title for _, title in ACCURACY_COLUMNS],
        "aneuploidy sensitivity [95% CI]",
        "aneuploidy specificity [95% CI]",
    ]
    rows: list[list[str]] = []
    ours: dict[str, dict[str, Any]] = {}
    for kind in ("spread", "karyogram"):
        by_row = scores.get(kind, {})
        order = [TWO_STAGE, *[r for r in ROW_ORDER if r != TWO_STAGE]]
        for row in [r for r in order if r in by_row]:
            runs = by_row[row]
            first = runs[0]
            cells = f"{int(first.get('n_images', 0))} ({int(first.get('aneuploidy_n_abnormal', 0))})"
            rows.append(
                [
                    _ours_label(row, len(runs)),
                    KIND_TITLES[kind],
                    cells,
                    *[_cell([r.get(key, float("nan")) for r in runs]) for key, _ in ACCURACY_COLUMNS],
                    _rate_cell(runs, "aneuploidy_sensitivity"),
                    _rate_cell(runs, "aneuploidy_specificity"),
                ]
            )
            keys = [k for k, _ in ACCURACY_COLUMNS] + [
                f"aneuploidy_{m}{s}" for m in ("sensitivity", "specificity") for s in ("", "_lo", "_hi")
            ]
            ours.setdefault(kind, {})[row] = {
                "n": len(runs),
                "mean": {k: mean_std([r.get(k, float("nan")) for r in runs])[0] for k in keys},
                "repeats": [
                    {k: r.get(k, float("nan")) for k in [*keys, "n_images", "aneuploidy_n_abnormal"]}
                    for r in runs
                ],
            }
    table = format_table(header, rows)
    found = claims(scores)
    if found:
        claim_rows = [
            [
                f"Two-stage > {c['than']} ({KIND_TITLES[c['kind']]})",
                "F1" if c["metric"] == "f1" else "exact match",
                _cell([c["two_stage"]]),
                _cell([c["other"]]),
                "n/a" if c["holds"] is None else ("yes" if c["holds"] else "NO"),
            ]
            for c in found
        ]
        table += "\n\n" + format_table(["claim", "metric", "two-stage", "other", "holds"], claim_rows)
    return table, {"ours": ours, "claims": found}


# ------------------------------------------------------------------------------------------------ command
def _check_outputs(out_dir: Path, command: str, overwrite: bool) -> None:
    """Refuse the command's own files already in ``out_dir`` unless ``overwrite`` (before any work)."""
    from cytobench.io.files import refuse_existing

    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(out_dir, "is a file, not a folder (--out names the output folder)")
    names, pattern = OUTPUTS[command]
    existing = [out_dir / n for n in names if (out_dir / n).exists()]
    existing += sorted(out_dir.glob(pattern)) if out_dir.is_dir() else []
    refuse_existing(existing, overwrite)


def reproduce(
    command: str,
    models: Sequence[KaryotypeModel],
    out_dir: str | Path,
    *,
    scale: str = "cpu",
    n_test: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    score_thr: float = 0.5,
    figures: bool = True,
    overwrite: bool = False,
    trust: bool = False,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score the models and write one command's table (``table5_1`` or ``accuracy``) and figures.

    Args:
        command: ``"table5_1"`` or ``"accuracy"``.
        models: the checkpoints (:func:`models_from_runs`, :func:`models_from_checkpoints`).
        out_dir: folder for the tables, json, figures (and ``test_data/`` unless ``data_dir``).
        scale: test-set size (:data:`TEST_IMAGES`), unless ``n_test``.
        seed: test-set seed (default: each kind's training seed + 10000).
        device: where the models run.
        data_dir: cache of simulated test sets.
        score_thr: detections scored >= it are the cell's chromosomes.
        figures: write the figures.
        overwrite: replace the command's files already in ``out_dir``.
        trust: load pickled ultralytics checkpoints.
        progress: where progress lines go.

    Returns:
        What the json holds, plus ``table`` (the markdown).
    """
    from cytobench.engine.distributed import local_device

    if command not in OUTPUTS:
        raise BadInputError("table", f"unknown karyotype table {command!r}; known: {sorted(OUTPUTS)}")
    if not models:
        raise BadInputError("--runs / --checkpoint", "no models to score")
    check_one_variant_per_row(models)
    if not 0.0 <= float(score_thr) <= 1.0:
        raise BadInputError("--score-thr", f"must be in [0, 1], got {score_thr}")
    out_dir = Path(out_dir)
    _check_outputs(out_dir, command, overwrite)
    n = int(n_test or 0) or check_scale(scale, TEST_IMAGES)
    dev = local_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(data_dir) if data_dir else out_dir / "test_data"

    notes: list[str] = []
    scores: dict[str, dict[str, list[dict[str, float]]]] = {}
    details: dict[str, dict[str, list[dict[str, Any]]]] = {}
    test_sets: dict[str, dict[str, Any]] = {}
    for kind in DATA_KINDS:
        members = [m for m in models if m.kind == kind]
        if not members:
            continue
        settings = simulator_settings(members[0].data_config)[1]
        differ = [m.source for m in members if simulator_settings(m.data_config)[1] != settings]
        if differ:
            notes.append(
                f"{len(differ)} {kind} model(s) were trained on other simulator settings than the test set's "
                f"(e.g. {differ[0]})"
            )
        test_set = held_out_test_set(members[0].data_config, n, seed, cache)
        test_sets[kind] = {
            "ann_file": str(test_set.ann_file),
            "n_images": n,
            "seed": test_set.seed,
            "settings": settings,
        }
        progress(f"{KIND_TITLES[kind]}: {n} held-out cells, seed {test_set.seed}, {settings}")
        for model in sorted(members, key=lambda m: ROW_ORDER.index(m.row)):
            # each model's own row as the thesis' (raw detections); YOLO, SSD, R-FCN once more with the pair prior
            for row, pair_prior in ((model.row, False), (PRIOR_ROWS.get(model.row), True)):
                progress(f"  scoring {row} ({model.variant}): {model.source}")
                scored = score_model(
                    model, test_set, dev, score_thr=score_thr, trust=trust, pair_prior=pair_prior
                )
                switchable = scored.pop("switchable_prior")
                scores.setdefault(kind, {}).setdefault(row, []).append(scored["metrics"])
                details.setdefault(kind, {}).setdefault(row, []).append(
                    {"source": model.source, "variant": model.variant, **scored}
                )
                if not switchable:
                    break
    for kind in DATA_KINDS:  # rows in the tables' order
        if kind in scores:
            scores[kind] = {r: scores[kind][r] for r in ROW_ORDER if r in scores[kind]}

    common = {
        "scale": scale,
        "score_thr": score_thr,
        "test_sets": test_sets,
        "models": {
            kind: {
                row: [{"source": d["source"], "variant": d["variant"]} for d in ds]
                for row, ds in rows.items()
            }
            for kind, rows in details.items()
        },
        "notes": notes,
    }
    files: list[str] = []
    if command == "table5_1":
        table, result = build_table5_1(load_paper("karyotype")["table5_1"], scores)
        if figures:
            files += prediction_figures(out_dir, details, test_sets, score_thr)
        stem = "table5_1"
    else:
        table, result = build_accuracy_table(scores)
        result["karyotypes"] = {
            kind: {row: [d["karyotypes"] for d in ds] for row, ds in rows.items()}
            for kind, rows in details.items()
        }
        result["confusion"] = {
            kind: {row: ds[0]["confusion"] for row, ds in rows.items()} for kind, rows in details.items()
        }
        if figures:
            files += confusion_figures(out_dir, details)
        stem = "karyotype_accuracy"
    result.update(common)
    result["figures"] = files
    result["table"] = table
    write_report(out_dir, stem, table, result)
    result["written"] = [f"{stem}.md", f"{stem}.json", *files]
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cytobench.cli_checks import add_trust_checkpoint_argument

    parser.add_argument(
        "--runs", nargs="+", default=[], help="run or sweep folders (each run's checkpoints/best.pt)"
    )
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="karyotype model checkpoint(s) (any of the five)",
    )
    parser.add_argument(
        "--scale",
        choices=sorted(TEST_IMAGES),
        default="cpu",
        help="test cells per data kind: smoke 4, cpu 50, paper 200",
    )
    parser.add_argument("--n-test", type=int, help="test cells per data kind (overrides --scale)")
    parser.add_argument("--seed", type=int, help="test-set seed (default: training seed + 10000)")
    parser.add_argument("--out", default="runs/reproduce/karyotype", help="folder for tables, json, figures")
    parser.add_argument("--data-dir", help="cache of simulated test sets (default <out>/test_data)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--score-thr", type=float, default=0.5, help="detections scored >= this are the cell's chromosomes"
    )
    parser.add_argument("--no-figure", action="store_true", help="skip the figures")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace this table's files already in --out"
    )
    add_trust_checkpoint_argument(parser)


def _run(command: str, args: argparse.Namespace) -> dict[str, Any]:
    if not args.runs and not args.checkpoint:
        raise BadInputError("--runs / --checkpoint", "give run folders or checkpoints to score")
    _check_outputs(Path(args.out), command, args.overwrite)  # before any model is read
    models = models_from_runs(args.runs) if args.runs else []
    models += models_from_checkpoints(args.checkpoint)
    result = reproduce(
        command,
        models,
        args.out,
        scale=args.scale,
        n_test=args.n_test,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        score_thr=args.score_thr,
        figures=not args.no_figure,
        overwrite=args.overwrite,
        trust=args.trust_checkpoint,
    )
    if command == "table5_1":
        print(result["caption"])
    print(result["table"])
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"written to {args.out}: {', '.join(result['written'])}")
    return result


def table5_1(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce karyotype/table5_1``: recall, precision, F1 per model, karyograms and spreads."""
    return _run("table5_1", args)


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce karyotype/accuracy``: exact match, Denver accuracy, aneuploidy per model."""
    return _run("accuracy", args)
