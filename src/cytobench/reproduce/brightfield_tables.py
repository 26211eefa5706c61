"""SEU-Net thesis (papers/003) Tables 5.1-5.6: per-head pixel metrics on a held-out test set, ours beside
the thesis' numbers, mean +- std over repeats (seeds), with one-sided p-values for the thesis' claims.

    python train.py -m experiment=seunet_heads                    # base, 2-, 3-, 4-head x 3 seeds (cpu)
    cytobench reproduce brightfield/table5_1 --runs runs/seunet_heads_multirun/<date> --scale cpu   # and 5_2
    python train.py -m experiment=seunet_overlap                  # attention maps v0-v4 x 3 seeds
    python train.py -m experiment=seunet_overlap model.overlap_loss=bce model.attention_key=null
    cytobench reproduce brightfield/table5_3 --runs runs/seunet_overlap_multirun
    python train.py -m experiment=seunet_synthetic data.train_set=real,synthetic,mixed data.synthetic_dir=DIR
    cytobench reproduce brightfield/table5_4 --runs runs/seunet_synthetic_multirun       # and 5_5, 5_6

``--runs`` collects finished runs (their ``checkpoints/best.pt``), ``--checkpoint`` takes checkpoint files;
every model is scored on the same simulated test set (the first model's simulator settings, another seed;
``--scale`` sets its size: the thesis' 5 images at ``paper``) by the ``brightfield_pixel`` evaluator
(:mod:`cytobench.evaluation.head_pixel`: the head's map thresholded at 0.5, overlap 0.3). The scoring is
cached in ``<out>/eval_cache.json``, so the six tables share one pass over the models
(:mod:`cytobench.reproduce.brightfield_eval`).

A model's row comes from its configuration:

* Tables 5.1 / 5.2 (models without an overlap head, trained on the real set): ``SEU-Net (base)`` (cytoplasm
  only), ``(2-head)`` cytoplasm + nuclei, ``(3-head)`` cytoplasm + border + background, ``(4-head)`` all four,
  decoupled decoders; ``(multi-channel)`` the four on one shared decoder; other head sets by name.
* Table 5.3 (an overlap head, real set): ``SEU-Net + attn. map (vK)`` for the focal loss weighted by attention
  map vK (``model.attention_key``), ``SEU-Net`` without a map and the BCE loss (the thesis' plain model),
  ``SEU-Net (focal, no attn. map)`` for the focal loss without a map.
* Tables 5.4-5.6 (models with the table's head): the training set, ``Original``, ``Synthetic (N)`` or
  ``Mixed (N)`` with N the synthetic images. The thesis' ``Synthetic (100)`` / ``(1000)`` rows pair with ours
  of the same N, else by rank (our smallest synthetic set with 100, our largest with 1000).

Each table writes ``<out>/table5_K.md`` / ``.json`` and a figure of the first model of each row on two test
images beside the truth (Fig. 5.1 / 5.3 / 5.5 style, :mod:`cytobench.reproduce.brightfield_figures`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cytobench.errors import BadInputError
from cytobench.evaluation.head_pixel import HEAD_METRICS, head_metric_key
from cytobench.evaluation.stats import mean_std, welch_ttest
from cytobench.reporting.tables import format_table
from cytobench.reproduce.base import check_scale, load_paper, write_report
from cytobench.reproduce.brightfield_eval import (
    TEST_IMAGES,
    TrainedModel,
    check_seunet,
    evaluate_models,
    models_from_checkpoints,
    models_from_runs,
    predict_images,
    shared_test_set,
)
from cytobench.reproduce.brightfield_labels import (
    attention_label,
    heads_label,
    model_scale,
    model_variant,
    training_set_label,
)

__all__ = ["TABLES", "build_table", "one_sided_welch", "pair_training_rows", "reproduce", "welch_cell"]

FIGURE_IMAGES = 2  # test images shown per figure


# ------------------------------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class TableKind:
    """How a table picks and names its rows: ``label(model)`` (None: not in this table) and the figure."""

    label: Callable[[TrainedModel], str | None]
    figure: str
    overlap_figure: bool = False


KINDS = {
    "heads": TableKind(heads_label, "fig5_1_heads.png"),
    "attention": TableKind(attention_label, "fig5_3_overlaps.png", overlap_figure=True),
    "training_set": TableKind(training_set_label, "fig5_5_synthetic.png"),
}
TABLES = {  # table -> kind
    "table5_1": "heads",
    "table5_2": "heads",
    "table5_3": "attention",
    "table5_4": "training_set",
    "table5_5": "training_set",
    "table5_6": "training_set",
}


def one_sided_welch(better: Sequence[float], worse: Sequence[float]) -> float:
    """p-value of Welch's t-test for ``mean(better) > mean(worse)`` (one-sided), NaN with < 2 values each.

    From the two-sided p of :func:`cytobench.evaluation.stats.welch_ttest`: half of it when the means differ
    in the claimed direction, one minus half of it when they do not.
    """
    two_sided = welch_ttest(better, worse)
    if math.isnan(two_sided):
        return float("nan")
    return two_sided / 2 if mean_std(better)[0] > mean_std(worse)[0] else 1 - two_sided / 2


def welch_cell(better: Sequence[float], worse: Sequence[float]) -> tuple[float, str]:
    """:func:`one_sided_welch` and its table cell: ``p = ...``, or why there is no p."""
    p = one_sided_welch(better, worse)
    if not math.isnan(p):
        return p, f"p = {p:.3g}"
    finite = [sum(not math.isnan(v) for v in side) for side in (better, worse)]
    if min(len(better), len(worse)) < 2:
        return p, "n/a (2+ repeats each)"
    if min(finite) < 2:  # e.g. APs on a test set without small cells
        return p, "n/a (no value to compare)"
    return p, "n/a (no spread on either side)"


def pair_training_rows(paper_rows: Sequence[str], ours: Sequence[str]) -> dict[str, str]:
    """``{paper row: our row}`` for Tables 5.4-5.6: ``Original`` with ``Original``; the thesis'
    ``Synthetic (N)`` rows with ours of the same N, else by rank of N (smallest with smallest)."""
    pairs = {name: name for name in paper_rows if name in ours and not name.startswith("Synthetic")}

    def size(label: str) -> float:
        inside = label[label.find("(") + 1 : label.rfind(")")]
        return float(inside) if inside.isdigit() else math.inf

    theirs = sorted((r for r in paper_rows if r.startswith("Synthetic (")), key=size)
    mine = sorted((r for r in ours if r.startswith("Synthetic (")), key=size)
    for name in theirs:
        if name in mine:
            pairs[name] = name
    left_theirs = [r for r in theirs if r not in pairs]
    left_mine = [r for r in mine if r not in pairs.values()]
    if len(left_mine) > len(left_theirs) > 0:  # keep our smallest and largest sets for the thesis' ends
        left_mine = [*left_mine[: len(left_theirs) - 1], left_mine[-1]]
    pairs.update(zip(left_theirs, left_mine))
    return pairs


def _cells(values: Sequence[float], digits: int = 4) -> list[str]:
    """Thesis cells: 4 decimals, '-' for a missing value."""
    return [
        "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}" for v in values
    ]


def _our_cells(summary: Mapping[str, tuple[float, float, int]]) -> list[str]:
    cells = []
    for mean, std, n in summary.values():
        if n == 0 or math.isnan(mean):
            cells.append("-")
        else:
            cells.append(f"{mean:.4f}" + (f" +- {std:.4f}" if n > 1 else ""))
    return cells


def _matching(groups: Mapping[str, Any], name: str) -> list[str]:
    """Our rows a claim names: the row itself, or each ``name (N)`` row."""
    return [label for label in groups if label == name or label.startswith(f"{name} (")]


def claim_tests(
    spec: Mapping[str, Any], groups: Mapping[str, Sequence[Mapping[str, float]]]
) -> tuple[dict[str, dict[str, Any]], list[list[object]]]:
    """One-sided Welch p-values of the thesis' claims (``better`` > ``than`` on ``metric``) over our repeats.

    Returns:
        ``({"A > B": {"metric", "p_one_sided", "mean_better", "mean_than"}}, table rows with the p-value in
        the claim's column)``; a comparison with fewer than two repeats on a side has p NaN ("n/a").
    """
    head = spec["head"]
    p_values: dict[str, dict[str, Any]] = {}
    rows: list[list[object]] = []
    for claim in spec.get("claims") or []:
        key = head_metric_key(head, claim["metric"])
        column = HEAD_METRICS.index(claim["metric"])
        for better in _matching(groups, claim["better"]):
            for worse in _matching(groups, claim["than"]):
                a = [r.get(key, float("nan")) for r in groups[better]]
                b = [r.get(key, float("nan")) for r in groups[worse]]
                p, cell = welch_cell(a, b)
                text = f"{better} > {worse}"
                p_values[text] = {
                    "metric": key,
                    "p_one_sided": p,
                    "mean_better": mean_std(a)[0],
                    "mean_than": mean_std(b)[0],
                }
                cells = ["" if i != column else cell for i in range(len(HEAD_METRICS))]
                rows.append([f"{text}: Welch one-sided (ours)", *cells])
    return p_values, rows


def build_table(
    name: str,
    spec: Mapping[str, Any],
    groups: Mapping[str, Sequence[Mapping[str, float]]],
    column_names: Sequence[str],
) -> tuple[str, dict[str, Any]]:
    """Markdown table (each thesis row followed by ours, then our other rows and the claims' p-values) and
    the numbers behind it.

    Args:
        name: table name (``table5_1`` ...).
        spec: its entry of ``papers/brightfield.yaml`` (``head``, ``rows``, ``claims``).
        groups: ``{our row: metrics of each repeat}`` (``pix/<head>_<metric>`` keys).
        column_names: the thesis' column titles.
    """
    head = spec["head"]
    keys = [head_metric_key(head, m) for m in HEAD_METRICS]
    summary = {
        label: {
            k: (*mean_std([r.get(k, float("nan")) for r in runs]), sum(k in r for r in runs)) for k in keys
        }
        for label, runs in groups.items()
    }
    paper_rows = dict(spec["rows"])
    if TABLES[name] == "training_set":
        pairs = pair_training_rows(list(paper_rows), list(groups))
    else:
        pairs = {row: row for row in paper_rows if row in groups}
    model = f"{spec['model']}, " if spec.get("model") else ""  # the thesis' model of a training-set table
    rows: list[list[object]] = []

    def ours(label: str) -> list[object]:
        return [f"{label} (ours, n={len(groups[label])})", *_our_cells(summary[label])]

    for row, values in paper_rows.items():
        rows.append([f"{model}{row} (thesis)", *_cells(values)])
        if row in pairs:
            rows.append(ours(pairs[row]))
    rows += [ours(label) for label in groups if label not in pairs.values()]
    p_values, p_rows = claim_tests(spec, groups)
    rows += p_rows
    first = "training set" if TABLES[name] == "training_set" else "model"
    table = format_table([f"{first} ({head})", *column_names], rows)
    result = {
        "caption": spec["caption"],
        "head": head,
        "paper": paper_rows,
        "pairs": pairs,
        "ours": {
            label: {
                "n": len(groups[label]),
                "mean": {k: s[0] for k, s in summary[label].items()},
                "std": {k: s[1] for k, s in summary[label].items()},
                "repeats": [{k: r.get(k, float("nan")) for k in keys} for r in groups[label]],
            }
            for label in groups
        },
        "p_values": p_values,
        "table": table,
    }
    return table, result


# ------------------------------------------------------------------------------------------------ command
def _groups_of(name: str, models: Sequence[TrainedModel]) -> tuple[dict[str, list[int]], list[str]]:
    """``{row label: indices of its models}`` of one table (first-seen order) and notes on left-out models."""
    kind = KINDS[TABLES[name]]
    labels = [kind.label(model) for model in models]
    notes = []
    if TABLES[name] == "training_set":
        head = load_paper("brightfield")[name]["head"]
        labels = [label if head in model.heads else None for label, model in zip(labels, models)]
        variants = [model_variant(m) if label else None for m, label in zip(models, labels)]
        counted = [v for v, label in zip(variants, labels) if label and label != "Original"] or [
            v for v in variants if v
        ]
        if counted:
            chosen = max(set(counted), key=counted.count)  # the variant trained on synthetic data most often
            dropped = sum(v is not None and v != chosen for v in variants)
            if dropped:
                notes.append(
                    f"left out {dropped} model(s) of other variants than the synthetic runs' ({chosen})"
                )
            labels = [label if v == chosen else None for label, v in zip(labels, variants)]
    left_out = sum(label is None for label in labels)
    if left_out:
        notes.append(f"left out {left_out} of {len(models)} model(s) that are not this table's variants")
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if label is not None:
            groups.setdefault(label, []).append(i)
    return groups, notes


def _row_order(name: str, spec: Mapping[str, Any], groups: Mapping[str, Any]) -> list[str]:
    """Rows in the thesis' order, ours without a thesis row after them (sorted)."""
    first = [row for row in spec["rows"] if row in groups]
    return first + sorted(label for label in groups if label not in first)


def reproduce(
    name: str,
    models: Sequence[TrainedModel],
    out_dir: str | Path,
    *,
    scale: str = "cpu",
    n_test: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    thresholds: Mapping[str, float] | None = None,
    use_cache: bool = True,
    figure: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score the models, write table ``name`` (``<name>.md``, ``.json``) and its figure; returns the json."""
    from cytobench.engine.distributed import local_device
    from cytobench.models.seunet.heads import INFERENCE_THRESHOLDS
    from cytobench.reproduce.brightfield_figures import save_prediction_grid

    if name not in TABLES:
        raise BadInputError("table", f"unknown brightfield table {name!r}; known: {sorted(TABLES)}")
    if not models:
        raise BadInputError("--runs / --checkpoint", "no models to score")
    check_seunet(models)
    paper = load_paper("brightfield")
    spec = paper[name]
    n = int(n_test or 0) or check_scale(scale, TEST_IMAGES)
    dev = local_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_set, settings, notes = shared_test_set(models, n, seed, data_dir or out_dir / "test_data")
    progress(f"test set: {n} simulated images, {settings}, seed {test_set.seed}")

    index_groups, group_notes = _groups_of(name, models)
    notes += group_notes
    if not index_groups:
        raise BadInputError(
            "--runs / --checkpoint",
            f"none of the {len(models)} model(s) is a variant of {name} ({spec['caption']})",
        )
    chosen = sorted({i for members in index_groups.values() for i in members})
    scores = evaluate_models(
        [models[i] for i in chosen],
        test_set,
        dev,
        out_dir,
        thresholds=thresholds,
        use_cache=use_cache,
        progress=progress,
    )
    by_index = dict(zip(chosen, scores))
    order = _row_order(name, spec, index_groups)
    groups = {label: [by_index[i] for i in index_groups[label]] for label in order}
    table, result = build_table(name, spec, groups, paper["column_names"])
    scales = sorted({model_scale(models[i]) for i in chosen})
    if len(scales) > 1:
        notes.append(f"these models were trained at {len(scales)} different scales: {scales}")
    result.update(
        {
            "table_name": name,
            "scale": scale,
            "test_set": {
                "ann_file": str(test_set.ann_file),
                "n_images": n,
                "seed": test_set.seed,
                "simulator_settings": settings,
            },
            "models": {label: [models[i].source for i in index_groups[label]] for label in order},
            "training_scales": scales,
            "model_variants": sorted({model_variant(models[i]) for i in chosen}),
            "notes": notes,
        }
    )
    if figure:
        limits = {**INFERENCE_THRESHOLDS, **dict(thresholds or {})}
        shown = min(FIGURE_IMAGES, n)
        columns = {
            label: predict_images(models[index_groups[label][0]], test_set, range(shown), dev)
            for label in order
        }
        path = save_prediction_grid(
            out_dir / KINDS[TABLES[name]].figure,
            columns,
            limits,
            overlap_only=KINDS[TABLES[name]].overlap_figure,
        )
        result["figure"] = str(path)
    write_report(out_dir, name, table, result)
    return result


def add_common_arguments(parser: argparse.ArgumentParser, what: str, figure: str) -> None:
    """The arguments every brightfield table takes: models (``what`` they are), test set, output, figure."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", nargs="+", help="run or sweep folders (each run's checkpoints/best.pt)")
    source.add_argument("--checkpoint", nargs="+", metavar="CKPT", help=f"{what} training checkpoint(s)")
    parser.add_argument(
        "--scale",
        choices=sorted(TEST_IMAGES),
        default="cpu",
        help="test-set size: smoke 2, cpu 10, paper 5 images",
    )
    parser.add_argument("--n-test", type=int, help="test images (overrides --scale)")
    parser.add_argument("--seed", type=int, help="test-set seed (default: training seed + 10000)")
    parser.add_argument(
        "--out", default="runs/reproduce/brightfield", help="folder for tables, json, figures"
    )
    parser.add_argument("--data-dir", help="cache of simulated test sets (default <out>/test_data)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--no-cache", action="store_true", help="re-evaluate even if eval_cache.json has the model"
    )
    parser.add_argument("--no-figure", action="store_true", help=f"skip the {figure}")


def print_result(name: str, out: str | Path, result: Mapping[str, Any], lines: Sequence[str] = ()) -> None:
    """The table and ``lines`` on stdout, the notes on stderr, then what was written where."""
    print(f"{result['caption']}\n{result['table']}")
    for line in lines:
        print(line)
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    written = [f"{name}.md", f"{name}.json"] + ([Path(result["figure"]).name] if "figure" in result else [])
    print(f"written to {out}: {', '.join(written)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "SEU-Net", "prediction figure")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="HEAD=T",
        help="override a head's threshold, e.g. overlap=0.5",
    )


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """``["overlap=0.5"]`` -> ``{"overlap": 0.5}``.

    Raises:
        BadInputError: an item that is not ``HEAD=NUMBER``.
    """
    out = {}
    for item in items:
        head, _, value = str(item).partition("=")
        try:
            out[head.strip()] = float(value)
        except ValueError:
            raise BadInputError("--threshold", f"expected HEAD=NUMBER, got {item!r}") from None
    return out


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    models = models_from_runs(args.runs) if args.runs else models_from_checkpoints(args.checkpoint)
    thresholds = parse_thresholds(args.threshold)
    from cytobench.evaluation.head_pixel import HeadPixelEvaluator

    HeadPixelEvaluator(thresholds=thresholds)  # refuses an unknown head or a threshold out of range, up front
    result = reproduce(
        name,
        models,
        args.out,
        scale=args.scale,
        n_test=args.n_test,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        thresholds=thresholds,
        use_cache=not args.no_cache,
        figure=not args.no_figure,
    )
    scale = "Scale (ours): " + " | ".join(result["training_scales"])
    variants = "Models (ours; heads, decoder[, overlap loss, attention map]): " + " | ".join(
        result["model_variants"]
    )
    print_result(name, args.out, result, [scale, variants])
    return result


def table5_1(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_1``: cytoplasm, base vs 2- / 3- / 4-head."""
    return _run("table5_1", args)


def table5_2(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_2``: nuclei, the same models."""
    return _run("table5_2", args)


def table5_3(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_3``: overlap, attention maps v0-v4 vs none."""
    return _run("table5_3", args)


def table5_4(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_4``: cytoplasm, real vs synthetic vs mixed training."""
    return _run("table5_4", args)


def table5_5(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_5``: nuclei, real vs synthetic vs mixed training."""
    return _run("table5_5", args)


def table5_6(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_6``: overlap, real vs synthetic vs mixed training."""
    return _run("table5_6", args)
