"""SEU-Net thesis (papers/003) Tables 5.7, 5.9, 5.10 and 5.11: cell instance segmentation, COCO mask AP under
LIVECell's protocol, ours beside the thesis' numbers, mean +- std over repeats (seeds).

    python train.py -m experiment=sparse_seunet_cpu model.aggregation=single,multi seed=0,1,2
    python train.py -m experiment=mask_rcnn_brightfield,yolov8_seg_brightfield,seunet_watershed seed=0,1,2
    cytobench reproduce brightfield/table5_7 --runs runs/ --scale cpu       # every model side by side
    python train.py -m experiment=sparse_seunet_cpu model.overlap_head=true model.attention_mask=false,true
    cytobench reproduce brightfield/table5_9 --runs runs/                   # overlap head / attention mask
    cytobench reproduce brightfield/table5_10 --runs runs/                  # single- vs multi-level
    cytobench reproduce brightfield/table5_11 --runs runs/                  # error analysis (multi-level)

``--runs`` collects finished runs (their ``checkpoints/best.pt``), ``--checkpoint`` takes checkpoint files. Every
model is scored on one held-out simulated test set (the first model's simulator settings, another seed;
``--scale`` sets its size: 2 / 50 / 5 images at smoke / cpu / paper; ``--n-test`` overrides it), read as instances (:mod:`cytobench.data.brightfield_instances`: cells only) at each
model's own evaluation size, by the ``livecell_segm`` evaluator (COCO mask AP, maxDets 100 / 500 / 2000,
LIVECell's area ranges, categories pooled; ``--amodal`` scores against whole cells instead of visible parts).
Table 5.11 re-scores the multi-level SparseSEU-Net (the vanilla one when no multi-level run is given) with
:class:`~cytobench.evaluation.error_analysis.ErrorAnalysisEvaluator`: "w/ gt mask" and "gt matched".
Scores are cached in ``<out>/eval_cache.json`` (shared with Tables 5.1-5.6, keyed by the scoring).

A row comes from the model's ``_target_`` and options: ``Mask R-CNN``, ``YOLOv8`` (YOLOv8-seg; the thesis'
YOLOv5 row has no counterpart), ``SEU-Net + watershed``, ``SparseSEU-Net`` (single-level, no overlap head, no
objectness: the thesis' vanilla model) and its variants by name; Cellpose (trained by its own loop,
:mod:`cytobench.engine.cellpose_run`) by its checkpoint as the others. The thesis' starred rows started from
pretrained weights; ours all train from random initialisation, and the tables say so.

Each table writes ``<out>/table5_K.md`` / ``.json`` and a figure of the first model of each row on two test
images beside the truth, every instance in its own colour (thesis Figs. 5.6-5.8).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.errors import BadInputError
from cytobench.evaluation.stats import mean_std
from cytobench.reporting.tables import format_table
from cytobench.reproduce.base import TestSet, check_scale, load_paper, write_report
from cytobench.reproduce.brightfield_eval import (
    Scorer,
    TrainedModel,
    evaluate_models,
    models_from_checkpoints,
    models_from_runs,
    shared_test_set,
)
from cytobench.reproduce.brightfield_tables import add_common_arguments, print_result, welch_cell

__all__ = ["TABLES", "build_table", "instance_scorer", "model_label", "reproduce", "sparse_variant"]

PAPER = "brightfield_instances"
FIGURE_IMAGES = 2
# Held-out images per scale. At the cpu scale 10 (the pixel tables' number) left Table 5.10 unreadable: the same
# four checkpoints gave one-sided p = 0.13 on 10 images and 0.005 on 50 (experiments/brightfield/README.md);
# 50 cost under a minute for four models on 2 cores. The paper scale keeps the thesis' 5 held-out images.
TEST_IMAGES = {"smoke": 2, "cpu": 50, "paper": 5}
FIGURE_SCORE = 0.5  # predictions drawn in the figure: scored at least this (the thesis' confidence threshold)
INSTANCES_DIR = "instances"
TEST_SPLIT = "annotations.json"
ERROR_PREFIXES = {"baseline": "coco", "w/ gt mask": "gt_mask", "gt matched": "gt_matched"}


# ------------------------------------------------------------------------------------------------ row labels
def _kind(model: TrainedModel) -> str:
    """``sparse_seunet``, ``mask_rcnn``, ``yolo``, ``watershed``, ``cellpose`` or ``""`` (not an instance model)."""
    target = str(model.model_config.get("_target_", ""))
    for key, kind in (
        ("sparse_seunet", "sparse_seunet"),
        ("seunet_watershed", "watershed"),
        ("mask_rcnn", "mask_rcnn"),
        ("models.yolo", "yolo"),
        ("cellpose_baseline", "cellpose"),
    ):
        if key in target:
            return kind
    return ""


def sparse_variant(model: TrainedModel) -> dict[str, Any]:
    """The SparseSEU-Net switches of a model: aggregation, overlap head, attention mask, objectness."""
    cfg = model.model_config
    return {
        "aggregation": str(cfg.get("aggregation", "single")),
        "overlap_head": bool(cfg.get("overlap_head", False)),
        "attention_mask": bool(cfg.get("attention_mask", False)),
        "objectness": bool(cfg.get("objectness", False)),
    }


def _sparse_name(variant: Mapping[str, Any]) -> str:
    parts = ["multi-level"] if variant["aggregation"] == "multi" else []
    if variant["overlap_head"]:
        parts.append("overlap head" + (" + attn. mask" if variant["attention_mask"] else ""))
    if variant["objectness"]:
        parts.append("objectness")
    return "SparseSEU-Net" + (f" ({', '.join(parts)})" if parts else "")


def model_label(model: TrainedModel) -> str | None:
    """Table 5.7 row of an instance model, None for other models."""
    kind = _kind(model)
    if kind == "sparse_seunet":
        return _sparse_name(sparse_variant(model))
    if kind == "yolo":
        return "YOLOv8" if str(model.model_config.get("task", "segment")) == "segment" else None
    return {"mask_rcnn": "Mask R-CNN", "watershed": "SEU-Net + watershed", "cellpose": "Cellpose"}.get(kind)


def overlap_label(model: TrainedModel) -> str | None:
    """Table 5.9 row: single-level SparseSEU-Net without objectness, by overlap head and attention mask."""
    if _kind(model) != "sparse_seunet":
        return None
    v = sparse_variant(model)
    if v["aggregation"] != "single" or v["objectness"]:
        return None
    if not v["overlap_head"]:
        return "SparseSEU-Net"
    return "+ overlap head + attn. mask" if v["attention_mask"] else "+ overlap head"


def aggregation_label(model: TrainedModel) -> str | None:
    """Table 5.10 row: SparseSEU-Net without overlap head or objectness, by feature aggregation."""
    if _kind(model) != "sparse_seunet":
        return None
    v = sparse_variant(model)
    if v["overlap_head"] or v["objectness"]:
        return None
    return "multi-level" if v["aggregation"] == "multi" else "single-level"


def error_model_label(models: Sequence[TrainedModel]) -> Callable[[TrainedModel], str | None]:
    """Table 5.11 scores the multi-level model (the thesis' best); the vanilla one when none is given."""
    labels = [aggregation_label(m) for m in models]
    chosen = "multi-level" if "multi-level" in labels else "single-level"
    return lambda model: "SparseSEU-Net" if aggregation_label(model) == chosen else None


TABLES: dict[str, Callable[[Sequence[TrainedModel]], Callable[[TrainedModel], str | None]]] = {
    "table5_7": lambda models: model_label,
    "table5_9": lambda models: overlap_label,
    "table5_10": lambda models: aggregation_label,
    "table5_11": error_model_label,
}


# ------------------------------------------------------------------------------------------------ scoring
def test_instances(test_set: TestSet, planes: Sequence[int]) -> Path:
    """The held-out set's cells-only view (derived once, beside its images): its json."""
    from cytobench.data.brightfield_instances import derive_brightfield_instances
    from cytobench.data.prepare import ensure_simulated

    folder = test_set.ann_file.parent / INSTANCES_DIR
    ensure_simulated(
        derive_brightfield_instances, folder, planes=[int(i) for i in planes], splits=[TEST_SPLIT]
    )
    return folder / TEST_SPLIT


def instance_scorer(
    test_json: Path, *, error_analysis: bool = False, amodal: bool = False, dice_thr: float | None = None
) -> Scorer:
    """LIVECell-protocol COCO mask AP (``coco/segm_*``; with ``error_analysis`` also ``gt_mask/segm_*`` and
    ``gt_matched/segm_*``) on the test set's instances, each model reading them at its evaluation size."""
    from cytobench.data.brightfield_instances import brightfield_instance_dataset
    from cytobench.data.transforms import build_transforms
    from cytobench.evaluation import LIVECELL_AREA_RANGES, LIVECELL_MAX_DETS, CocoEvaluator
    from cytobench.evaluation.error_analysis import ErrorAnalysisEvaluator

    options: dict[str, Any] = {
        "max_dets": LIVECELL_MAX_DETS,
        "area_ranges": LIVECELL_AREA_RANGES,
        "class_agnostic": True,
        "truth_masks": "amodal_masks" if amodal else "masks",
        "segm_det_area": "mask",
    }
    if error_analysis and dice_thr is not None:
        options["dice_thr"] = float(dice_thr)

    def evaluator() -> Any:
        if error_analysis:
            return ErrorAnalysisEvaluator(**options)
        return CocoEvaluator(iou_types=("segm",), **options)

    def dataset(test_set: TestSet, data_config: Mapping[str, Any]) -> Any:
        resize = data_config.get("resize")
        transforms = build_transforms(train=False, resize=int(resize)) if resize else None
        return brightfield_instance_dataset(test_json.parent, test_json, amodal=amodal, transforms=transforms)

    key = ["livecell_segm", "error_analysis" if error_analysis else "ap", options["truth_masks"], dice_thr]
    return Scorer(key, evaluator, dataset)


# ------------------------------------------------------------------------------------------------ tables
def _percent_cells(summary: Sequence[tuple[float, float, int]]) -> list[str]:
    cells = []
    for mean, std, n in summary:
        if n == 0 or math.isnan(mean):
            cells.append("-")
        else:
            cells.append(f"{100 * mean:.1f}" + (f" +- {100 * std:.1f}" if n > 1 else ""))
    return cells


def build_table(
    name: str,
    spec: Mapping[str, Any],
    groups: Mapping[str, Sequence[Mapping[str, float]]],
    columns: Sequence[str],
    prefixes: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Markdown table (each thesis row followed by ours, then our other rows and the claims' p-values), in %.

    Args:
        name: ``table5_7`` ...
        spec: its entry of ``papers/brightfield_instances.yaml``.
        groups: ``{our row: metrics of each repeat}``.
        columns: the metric names (``AP``, ``AP50`` ...), read as ``<prefix>/segm_<column>``.
        prefixes: ``{our row: key prefix}`` (default ``coco``; Table 5.11's variants have their own).
    """
    prefixes = dict(prefixes or {})

    def keys(label: str) -> list[str]:
        return [f"{prefixes.get(label, 'coco')}/segm_{c}" for c in columns]

    summary = {
        label: [
            (*mean_std([r.get(k, float("nan")) for r in runs]), sum(k in r for r in runs))
            for k in keys(label)
        ]
        for label, runs in groups.items()
    }
    rows: list[list[object]] = []
    for row, values in spec["rows"].items():
        rows.append([f"{row} (thesis)", *[f"{v:.1f}" for v in values]])
        if row in groups:
            rows.append([f"{row} (ours, n={len(groups[row])})", *_percent_cells(summary[row])])
    rows += [
        [f"{label} (ours, n={len(groups[label])})", *_percent_cells(summary[label])]
        for label in groups
        if label not in spec["rows"]
    ]
    p_values = {}
    for claim in spec.get("claims") or []:
        better, than, metric = claim["better"], claim["than"], claim["metric"]
        if better not in groups or than not in groups:
            continue
        column = list(columns).index(metric)
        a = [r.get(keys(better)[column], float("nan")) for r in groups[better]]
        b = [r.get(keys(than)[column], float("nan")) for r in groups[than]]
        p, cell = welch_cell(a, b)
        text = f"{better} > {than}"
        p_values[text] = {
            "metric": metric,
            "p_one_sided": p,
            "mean_better": mean_std(a)[0],
            "mean_than": mean_std(b)[0],
        }
        rows.append(
            [f"{text}: Welch one-sided (ours)", *["" if i != column else cell for i in range(len(columns))]]
        )
    table = format_table(["model (mask AP, %)", *columns], rows)
    result = {
        "caption": spec["caption"],
        "paper": dict(spec["rows"]),
        "ours": {
            label: {
                "n": len(groups[label]),
                "mean": {k: s[0] for k, s in zip(keys(label), summary[label])},
                "std": {k: s[1] for k, s in zip(keys(label), summary[label])},
                "repeats": [{k: r.get(k, float("nan")) for k in keys(label)} for r in groups[label]],
            }
            for label in groups
        },
        "p_values": p_values,
        "table": table,
    }
    return table, result


# ------------------------------------------------------------------------------------------------ command
def _group(
    models: Sequence[TrainedModel], label: Callable[[TrainedModel], str | None]
) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, model in enumerate(models):
        row = label(model)
        if row is not None:
            groups.setdefault(row, []).append(i)
    return groups


def _figure(
    path: Path, models: Mapping[str, TrainedModel], test_json: Path, n: int, device: Any, amodal: bool
) -> Path:
    """First ``n`` test images: each model's instances scored >= :data:`FIGURE_SCORE`, and the truth."""
    import torch

    from cytobench.data.brightfield_instances import brightfield_instance_dataset
    from cytobench.data.transforms import build_transforms
    from cytobench.engine.predict import load_model_from_checkpoint
    from cytobench.reproduce.brightfield_figures import save_instance_grid

    columns: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    truth: list[np.ndarray] = []
    for name, model in models.items():
        network, _ = load_model_from_checkpoint(model.checkpoint, device)
        resize = model.data_config.get("resize")
        dataset = brightfield_instance_dataset(
            test_json.parent,
            test_json,
            amodal=amodal,
            transforms=build_transforms(train=False, resize=int(resize)) if resize else None,
        )
        columns[name] = []
        with torch.no_grad():
            for index in range(n):
                image, target = dataset[index]
                pred = network([image.to(device)])[0]
                masks = pred.get("masks")
                masks = (
                    np.zeros((0, *image.shape[-2:]), bool) if masks is None else masks.detach().cpu().numpy()
                )
                keep = pred["scores"].detach().cpu().numpy() >= FIGURE_SCORE
                masks = masks.reshape(-1, *image.shape[-2:])[keep] > 0.5
                columns[name].append((image[0].numpy(), masks))
                if len(truth) < n:
                    key = "amodal_masks" if amodal else "masks"
                    truth.append(np.asarray(target[key], dtype=bool))
    return save_instance_grid(path, columns, truth)


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
    amodal: bool = False,
    use_cache: bool = True,
    figure: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score the models, write table ``name`` (``<name>.md``, ``.json``) and its figure; returns the json."""
    from cytobench.engine.distributed import local_device

    if name not in TABLES:
        raise BadInputError("table", f"unknown brightfield instance table {name!r}; known: {sorted(TABLES)}")
    if not models:
        raise BadInputError("--runs / --checkpoint", "no models to score")
    paper = load_paper(PAPER)
    spec = paper[name]
    n = int(n_test or 0) or check_scale(scale, TEST_IMAGES)
    dev = local_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_groups = _group(models, TABLES[name](models))
    if not index_groups:
        raise BadInputError(
            "--runs / --checkpoint",
            f"none of the {len(models)} model(s) is a variant of {name} ({spec['caption']})",
        )
    chosen = sorted({i for members in index_groups.values() for i in members})
    test_set, settings, notes = shared_test_set(
        [models[i] for i in chosen], n, seed, data_dir or out_dir / "test_data"
    )
    planes = models[chosen[0]].data_config.get("planes", (0, 1))
    test_json = test_instances(test_set, planes)
    progress(f"test set: {n} simulated images, {settings}, seed {test_set.seed}")
    left_out = len(models) - len(chosen)
    if left_out:
        notes.append(f"left out {left_out} of {len(models)} model(s) that are not this table's variants")
    scorer = instance_scorer(test_json, error_analysis=name == "table5_11", amodal=amodal)
    scores = evaluate_models(
        [models[i] for i in chosen],
        test_set,
        dev,
        out_dir,
        use_cache=use_cache,
        progress=progress,
        scorer=scorer,
    )
    by_index = dict(zip(chosen, scores))
    if name == "table5_11":
        runs = [by_index[i] for i in index_groups["SparseSEU-Net"]]
        groups = {row: runs for row in ERROR_PREFIXES}
        prefixes = ERROR_PREFIXES
        notes.append(f"scored model: {model_label(models[index_groups['SparseSEU-Net'][0]])}")
    else:
        order = [row for row in spec["rows"] if row in index_groups]
        order += sorted(row for row in index_groups if row not in order)
        groups = {row: [by_index[i] for i in index_groups[row]] for row in order}
        prefixes = {}
    table, result = build_table(name, spec, groups, paper["columns"], prefixes)
    if name == "table5_7":  # the thesis' starred rows (its SparseSEU-Net trained from scratch, as ours)
        notes.append(
            "the thesis started its baselines from pretrained weights; ours train from random initialisation"
        )
    result.update(
        {
            "table_name": name,
            "scale": scale,
            "truth": "amodal_masks" if amodal else "masks",
            "test_set": {
                "ann_file": str(test_json),
                "n_images": n,
                "seed": test_set.seed,
                "simulator_settings": settings,
            },
            "models": {row: [models[i].source for i in index_groups[row]] for row in index_groups},
            "notes": notes,
        }
    )
    if figure:
        firsts = {row: models[members[0]] for row, members in index_groups.items()}
        path = _figure(
            out_dir / f"fig_{name}_instances.png", firsts, test_json, min(FIGURE_IMAGES, n), dev, amodal
        )
        result["figure"] = str(path)
    write_report(out_dir, name, table, result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "instance-model", "instance figure")
    parser.add_argument("--amodal", action="store_true", help="score against whole (amodal) cells")


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    models = models_from_runs(args.runs) if args.runs else models_from_checkpoints(args.checkpoint)
    result = reproduce(
        name,
        models,
        args.out,
        scale=args.scale,
        n_test=args.n_test,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        amodal=args.amodal,
        use_cache=not args.no_cache,
        figure=not args.no_figure,
    )
    print_result(name, args.out, result)
    return result


def table5_7(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_7``: every instance model side by side."""
    return _run("table5_7", args)


def table5_9(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_9``: SparseSEU-Net with overlap head / attention mask."""
    return _run("table5_9", args)


def table5_10(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_10``: single- vs multi-level feature aggregation."""
    return _run("table5_10", args)


def table5_11(args: argparse.Namespace) -> dict[str, Any]:
    """``cytobench reproduce brightfield/table5_11``: error analysis, w/ gt mask and gt matched."""
    return _run("table5_11", args)
