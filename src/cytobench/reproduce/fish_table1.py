"""FISH paper Table 1: YOLOv8-seg nucleus masks (whole / destroyed), precision, recall, mAP50, mAP50-95.

``cytobench reproduce fish/table1 --checkpoint runs/.../checkpoints/best.pt [--scale cpu]`` simulates a
held-out test set with the simulator and settings the checkpoint was trained on (its ``data_config``)
but another seed, predicts it, and prints three columns: the paper's values, cytobench's (COCO
evaluator on the masks) and ultralytics' own validation of the same images.

Definitions (masks, both classes averaged):

* mAP50 / mAP50-95: COCO ``segm`` AP at IoU 0.5 and averaged over IoU 0.50:0.05:0.95 (101-point
  interpolation, maxDets 100), from :func:`cytobench.evaluation.evaluate_coco`.
* precision / recall: at the single confidence threshold that maximises the class-mean F1 at mask IoU
  0.5 (ultralytics' choice of operating point), with COCO's greedy matching (detections in descending
  score; each takes the unmatched ground truth of its class with the highest IoU >= 0.5). Thresholds
  are the predicted scores themselves (ultralytics interpolates on a 1000-point grid and smooths the F1
  curve first, so its P / R can differ by a few thousandths). A class with no detection above the
  threshold has precision 1 (ultralytics' convention).

Why ultralytics' own numbers differ from COCO's: its AP integrates the interpolated PR curve by the
trapezoid rule on 101 points (COCO averages the 101 sampled precisions), it matches predictions to
ground truth per IoU threshold over the whole image rather than greedily by score, it has no maxDets
cap (300 per image) and it compares masks at the letterboxed, 4x-downsampled resolution of its mask
head rather than at the original image size.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cytobench.errors import BadInputError

PAPER_FILE = Path(__file__).resolve().parents[3] / "experiments" / "fish" / "paper_table1.yaml"
SCALES: dict[str, int] = {"smoke": 4, "cpu": 27, "paper": 87}  # test images (the paper validated on 27)
METRICS = ("precision", "recall", "mAP50", "mAP50-95")


def load_paper_table(path: str | Path = PAPER_FILE) -> dict[str, Any]:
    """The paper's numbers (``experiments/fish/paper_table1.yaml``)."""
    return yaml.safe_load(Path(path).read_text())


def _segm_rles(items: Sequence[Mapping[str, Any]], height: int, width: int, iou_type: str) -> list[Any]:
    """RLEs (segm) or xywh boxes (bbox) of annotations / results of one image, for ``mask.iou``."""
    from pycocotools import mask as mask_utils

    if iou_type == "bbox":
        return [list(map(float, a["bbox"])) for a in items]
    out = []
    for a in items:
        seg = a["segmentation"]
        if isinstance(seg, list):
            out.append(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        else:
            rle = dict(seg)
            if isinstance(rle.get("counts"), list):
                rle = mask_utils.frPyObjects(rle, height, width)
            elif isinstance(rle.get("counts"), str):
                rle["counts"] = rle["counts"].encode("ascii")
            out.append(rle)
    return out


def match_detections(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str = "segm", iou_thr: float = 0.5
) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
    """Greedy COCO-style matching at one IoU threshold.

    Args:
        gt: COCO dataset (``segmentation`` polygons or RLE for segm, ``bbox`` xywh for bbox); crowd ignored.
        results: COCO results with ``image_id``, ``category_id``, ``score`` and ``segmentation`` / ``bbox``.
        iou_type: ``"segm"`` or ``"bbox"``.
        iou_thr: lowest IoU of a match.

    Returns:
        ``{category_id: (scores (D,) descending, is_tp (D,) bool, number of ground-truth objects)}``.
    """
    from pycocotools import mask as mask_utils

    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in gt["images"]}
    gts: dict[tuple[Any, int], list[Mapping[str, Any]]] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            gts.setdefault((a["image_id"], int(a["category_id"])), []).append(a)
    dts: dict[tuple[Any, int], list[Mapping[str, Any]]] = {}
    for r in results:
        if r["image_id"] not in sizes:
            raise BadInputError("results", f"image_id {r['image_id']} is not in the ground truth")
        dts.setdefault((r["image_id"], int(r["category_id"])), []).append(r)
    per_class: dict[int, tuple[list[float], list[bool], int]] = {
        int(c["id"]): ([], [], 0) for c in gt["categories"]
    }
    for key in set(gts) | set(dts):
        image_id, cat = key
        g, d = gts.get(key, []), sorted(dts.get(key, []), key=lambda r: -float(r["score"]))
        scores, tps, n_gt = per_class.setdefault(cat, ([], [], 0))
        per_class[cat] = (scores, tps, n_gt + len(g))
        if not d:
            continue
        height, width = sizes[image_id]
        ious = (
            np.asarray(
                mask_utils.iou(
                    _segm_rles(d, height, width, iou_type),
                    _segm_rles(g, height, width, iou_type),
                    [0] * len(g),
                )
            ).reshape(len(d), len(g))
            if g
            else np.zeros((len(d), 0))
        )
        taken = np.zeros(len(g), dtype=bool)
        for i, det in enumerate(d):
            candidates = np.where(~taken & (ious[i] >= iou_thr), ious[i], -1.0)
            j = int(np.argmax(candidates)) if len(g) else -1
            hit = j >= 0 and candidates[j] >= 0
            if hit:
                taken[j] = True
            scores.append(float(det["score"]))
            tps.append(bool(hit))
    out = {}
    for cat, (scores, tps, n_gt) in per_class.items():
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        out[cat] = (np.asarray(scores, dtype=np.float64)[order], np.asarray(tps, dtype=bool)[order], n_gt)
    return out


def precision_recall_at_best_f1(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str = "segm", iou_thr: float = 0.5
) -> dict[str, float]:
    """Class-mean precision and recall at the confidence threshold that maximises the class-mean F1.

    Classes without ground truth are left out of the means. Ties keep the highest threshold.

    Returns:
        ``{"precision", "recall", "f1", "conf"}`` (``conf`` NaN and the rest 0 when there are no results).
    """
    matched = {c: m for c, m in match_detections(gt, results, iou_type, iou_thr).items() if m[2] > 0}
    thresholds = np.unique(np.concatenate([m[0] for m in matched.values()] or [np.zeros(0)]))[::-1]
    if not matched or thresholds.size == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "conf": float("nan")}
    p = np.zeros((len(matched), thresholds.size))
    r = np.zeros_like(p)
    for k, (scores, tps, n_gt) in enumerate(matched.values()):
        # detections with score >= t: scores are descending, so count them with a search on -scores
        n_det = np.searchsorted(-scores, -thresholds, side="right")
        n_tp = np.concatenate([[0], np.cumsum(tps)])[n_det]
        p[k] = np.where(n_det > 0, n_tp / np.maximum(n_det, 1), 1.0)
        r[k] = n_tp / n_gt
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    best = int(np.argmax(f1.mean(axis=0)))
    return {
        "precision": float(p[:, best].mean()),
        "recall": float(r[:, best].mean()),
        "f1": float(f1[:, best].mean()),
        "conf": float(thresholds[best]),
    }


def simulate_test_set(data_config: Mapping[str, Any], n_images: int, seed: int, out_dir: Path) -> Path:
    """Simulate ``n_images`` with the training data's simulator and settings but ``seed``; returns the json."""
    from hydra.utils import get_method

    prepare = dict(data_config.get("prepare") or {})
    simulator = (prepare.pop("simulator", None) or {}).get("path", "cytobench.simulate.fish.simulate_fish")
    kwargs = {
        k: v
        for k, v in prepare.items()
        if not k.startswith("_") and k not in ("out_dir", "n_images", "seed", "val_fraction")
    }
    train_seed = prepare.get("seed", data_config.get("sim_seed"))
    if train_seed is not None and int(train_seed) == int(seed):
        raise BadInputError("--seed", f"{seed} is the training data's simulation seed; choose another")
    shutil.rmtree(out_dir, ignore_errors=True)
    return Path(get_method(simulator)(n_images=n_images, out_dir=out_dir, seed=seed, **kwargs))


def ultralytics_val(
    checkpoint: Path, ann_file: Path, images: Path, out_dir: Path, imgsz: int, device: str
) -> dict:
    """ultralytics' own validation (conf 0.001, IoU 0.7) of the test set: ``{metric: value}`` for masks."""
    from cytobench.io.yolo import export_yolo
    from cytobench.models.yolo import build_yolo_model

    yolo_dir = out_dir / "yolo_test"
    shutil.rmtree(yolo_dir, ignore_errors=True)
    export_yolo(ann_file, images, yolo_dir, split="val", task="segment")
    model = build_yolo_model("", weights_path=checkpoint)
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
    checkpoint: str | Path, out_dir: str | Path, *, scale: str = "cpu", seed: int = 2024, device: str = "cpu"
) -> dict[str, Any]:
    """Build the table; returns everything written to ``table1.json``."""
    from torch.utils.data import DataLoader

    from cytobench.data.collate import detection_collate
    from cytobench.data.image_list import ImageListDataset
    from cytobench.engine.distributed import local_device
    from cytobench.engine.inference import inference_on_dataset
    from cytobench.engine.predict import CocoResultsWriter, load_model_from_checkpoint
    from cytobench.evaluation import evaluate_coco
    from cytobench.io.coco import load_coco
    from cytobench.models.yolo import ultralytics_device
    from cytobench.reporting.tables import format_table

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {sorted(SCALES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, info = load_model_from_checkpoint(checkpoint, device)
    if not hasattr(model, "yolo"):
        raise BadInputError(checkpoint, "not a YOLO run's checkpoint (Table 1 is YOLOv8-seg's)")
    model.conf, model.iou, model.max_det = 0.001, 0.7, 300  # ultralytics' validation settings
    ann_file = simulate_test_set(info.get("data_config") or {}, SCALES[scale], seed, out_dir / "test_data")
    gt = load_coco(ann_file)
    images_dir = ann_file.parent / "images"
    dataset = ImageListDataset(
        [images_dir / img["file_name"] for img in gt["images"]], [img["id"] for img in gt["images"]]
    )
    writer = CocoResultsWriter(info["label_to_cat_id"])
    loader = DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=detection_collate)
    inference_on_dataset(model, loader, writer, local_device(device))
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
        Path(checkpoint), ann_file, images_dir, out_dir, model.imgsz, ultralytics_device(device)
    )
    paper = load_paper_table()["metrics"]
    rows = [[m, float(paper[m]), ours[m], yolo[m]] for m in METRICS]
    table = format_table(["metric (masks)", "paper", "cytobench COCO", "ultralytics val"], rows, digits=3)
    (out_dir / "table1.md").write_text(table + "\n")
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
    (out_dir / "table1.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="YOLO-seg checkpoint of a cytobench run")
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default="cpu", help="test images: smoke 4, cpu 27, paper 87"
    )
    parser.add_argument("--out", default="runs/reproduce/fish_table1", help="folder for the table and json")
    parser.add_argument("--seed", type=int, default=2024, help="simulation seed of the test set")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = reproduce(args.checkpoint, args.out, scale=args.scale, seed=args.seed, device=args.device)
    print(result["table"])
    pr = result["operating_point"]
    print(
        f"\n{result['test_images']} simulated test images ({result['test_objects']} nuclei, seed {result['seed']});"
        f" P/R at conf {pr['conf']:.3f} (best class-mean F1 at mask IoU 0.5)"
    )
    print(f"written to {args.out}: table1.md, table1.json")
    return result
