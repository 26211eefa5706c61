"""FISH paper Table 1: YOLOv8-seg nucleus masks (whole / destroyed), precision, recall, mAP50, mAP50-95.

``cytobench reproduce fish/table1 --checkpoint runs/.../checkpoints/best.pt [--scale cpu]`` simulates a
held-out test set with the simulator and settings the checkpoint was trained on (its ``data_config``)
but another seed (:func:`cytobench.reproduce.base.held_out_test_set`, cached under ``<out>/test_data/``),
predicts it, and prints three columns: the paper's values, cytobench's (COCO evaluator on the masks) and
ultralytics' own validation of the same images. ``table1.md`` and ``table1.json`` go to ``<out>``.

Definitions (masks, both classes averaged):

* mAP50 / mAP50-95: COCO ``segm`` AP at IoU 0.5 and averaged over IoU 0.50:0.05:0.95 (101-point
  interpolation, maxDets 100), from :func:`cytobench.evaluation.evaluate_coco`.
* precision / recall: at the single confidence threshold that maximises the class-mean F1 at mask IoU
  0.5 (ultralytics' choice of operating point), with COCO's greedy matching:
  :func:`cytobench.evaluation.operating_point.precision_recall_at_best_f1` (the rule and its ties are in
  that module's docstring).

Why ultralytics' own numbers differ from COCO's: its AP integrates the interpolated PR curve by the
trapezoid rule on 101 points (COCO averages the 101 sampled precisions), it matches predictions to
ground truth per IoU threshold over the whole image rather than greedily by score, it has no maxDets
cap (300 per image) and it compares masks at the letterboxed, 4x-downsampled resolution of its mask
head rather than at the original image size.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from cytobench.errors import BadInputError
from cytobench.reproduce.base import check_scale, held_out_test_set, load_paper, write_report

SCALES: dict[str, int] = {"smoke": 4, "cpu": 27, "paper": 87}  # test images (the paper validated on 27)
METRICS = ("precision", "recall", "mAP50", "mAP50-95")
DEFAULT_SIMULATOR = "cytobench.simulate.fish.simulate_fish"


def load_paper_table() -> dict[str, Any]:
    """The paper's numbers (package data ``papers/fish_table1.yaml``)."""
    return load_paper("fish_table1")


def ultralytics_val(
    checkpoint: Path,
    ann_file: Path,
    images: Path,
    out_dir: Path,
    imgsz: int,
    device: str,
    trust: bool = False,
) -> dict:
    """ultralytics' own validation (conf 0.001, IoU 0.7) of the test set: ``{metric: value}`` for masks.

    ``trust``: load a pickled ultralytics ``.pt`` (see :func:`cytobench.models.yolo.build_yolo_model`).
    """
    from cytobench.io.yolo import export_yolo
    from cytobench.models.yolo import build_yolo_model

    yolo_dir = out_dir / "yolo_test"
    shutil.rmtree(yolo_dir, ignore_errors=True)
    export_yolo(ann_file, images, yolo_dir, split="val", task="segment")
    model = build_yolo_model("", weights_path=checkpoint, trust=trust)
    res = model.val(
        data=str(yolo_dir / "data.yaml"),
        imgsz=imgsz,
        batch=8,
        conf=0.001,
        iou=0.7,
        device=device,
        plots=False,
        verbose=False,
        project=str(out_dir),
        name="ultralytics_val",
        exist_ok=True,
    ).results_dict
    keys = ("precision", "recall", "mAP50", "mAP50-95")
    return {k: float(res[f"metrics/{k}(M)"]) for k in keys}


def reproduce(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    scale: str = "cpu",
    seed: int = 2024,
    device: str = "cpu",
    trust: bool = False,
) -> dict[str, Any]:
    """Build the table; returns everything written to ``table1.json``.

    ``trust``: load a pickled ultralytics ``.pt`` (``--trust-checkpoint``); a YOLO run's own checkpoints
    load without it.
    """
    from cytobench.engine.distributed import local_device
    from cytobench.engine.predict import CocoResultsWriter, load_model_from_checkpoint
    from cytobench.evaluation import evaluate_coco
    from cytobench.evaluation.operating_point import precision_recall_at_best_f1
    from cytobench.io.coco import load_coco
    from cytobench.models.yolo import ultralytics_device
    from cytobench.reporting.tables import format_table
    from cytobench.reproduce.base import run_on_test_set

    n_images = check_scale(scale, SCALES)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, info = load_model_from_checkpoint(checkpoint, device, trust=trust)
    if not hasattr(model, "yolo"):
        raise BadInputError(checkpoint, "not a YOLO run's checkpoint (Table 1 is YOLOv8-seg's)")
    model.conf, model.iou, model.max_det = 0.001, 0.7, 300  # ultralytics' validation settings
    test_set = held_out_test_set(
        info.get("data_config") or {},
        n_images,
        seed,
        out_dir / "test_data",
        default_simulator=DEFAULT_SIMULATOR,
    )
    ann_file, images_dir = test_set.ann_file, test_set.images_dir
    gt = load_coco(ann_file)
    writer = CocoResultsWriter(info["label_to_cat_id"])
    run_on_test_set(model, test_set, writer, local_device(device), with_targets=False)
    results = [{k: v for k, v in r.items() if k != "keypoints"} for r in writer.results]
    segm = evaluate_coco(gt, results, "segm")
    bbox = evaluate_coco(gt, results, "bbox")
    pr = precision_recall_at_best_f1(gt, results, "segm", 0.5)
    ours = {
        "precision": pr["precision"],
        "recall": pr["recall"],
        "mAP50": segm["AP50"],
        "mAP50-95": segm["AP"],
    }
    yolo = ultralytics_val(
        Path(checkpoint), ann_file, images_dir, out_dir, model.imgsz, ultralytics_device(device), trust
    )
    paper = load_paper_table()["metrics"]
    rows = [[m, float(paper[m]), ours[m], yolo[m]] for m in METRICS]
    table = format_table(["metric (masks)", "paper", "cytobench COCO", "ultralytics val"], rows, digits=3)
    result = {
        "scale": scale,
        "test_images": len(gt["images"]),
        "test_objects": len(gt["annotations"]),
        "seed": seed,
        "checkpoint": str(checkpoint),
        "paper": {m: float(paper[m]) for m in METRICS},
        "cytobench": ours,
        "operating_point": pr,
        "ultralytics": yolo,
        "coco_segm": segm,
        "coco_bbox": bbox,
        "table": table,
    }
    write_report(out_dir, "table1", table, result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cytobench.cli_checks import add_trust_checkpoint_argument

    parser.add_argument("--checkpoint", required=True, help="YOLO-seg checkpoint of a cytobench run")
    add_trust_checkpoint_argument(parser)
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default="cpu", help="test images: smoke 4, cpu 27, paper 87"
    )
    parser.add_argument("--out", default="runs/reproduce/fish_table1", help="folder for the table and json")
    parser.add_argument("--seed", type=int, default=2024, help="simulation seed of the test set")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = reproduce(
        args.checkpoint,
        args.out,
        scale=args.scale,
        seed=args.seed,
        device=args.device,
        trust=args.trust_checkpoint,
    )
    print(result["table"])
    pr = result["operating_point"]
    print(
        f"\n{result['test_images']} simulated test images ({result['test_objects']} nuclei, seed {result['seed']});"
        f" P/R at conf {pr['conf']:.3f} (best class-mean F1 at mask IoU 0.5)"
    )
    print(f"written to {args.out}: table1.md, table1.json")
    return result
