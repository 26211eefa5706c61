"""FISH YOLOv8-seg experiments: configs compose with the paper's recipe, the smoke run trains through
``python train.py``, ``reproduce fish/table1`` scores it; the table's precision / recall on hand cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from cytobench.errors import BadInputError
from cytobench.io.coco_convert import encode_mask
from cytobench.reproduce import REPRODUCTIONS, load_reproduction
from cytobench.reproduce.fish_table1 import (
    load_paper_table,
    match_detections,
    precision_recall_at_best_f1,
    simulate_test_set,
)
from tests.conftest import ROOT, compose_config, run_train_py

FISH_EXPERIMENTS = ("fish_smoke", "fish_cpu", "fish_yolov8seg")


# ------------------------------------------------------------------------------ precision / recall maths
def _box(x: float, y: float, w: float, h: float) -> dict[str, Any]:
    return {"bbox": [x, y, w, h]}


def _dataset(gts: list[tuple[int, list[float]]]) -> dict[str, Any]:
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, (c, b) in enumerate(gts)
    ]
    return {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "whole"}, {"id": 2, "name": "destroyed"}],
    }


def _results(dets: list[tuple[int, list[float], float]]) -> list[dict[str, Any]]:
    return [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]


def test_best_f1_operating_point_one_class_by_hand() -> None:
    gt = _dataset([(1, [0, 0, 10, 10]), (1, [20, 20, 10, 10])])
    res = _results([(1, [0, 0, 10, 10], 0.9), (1, [50, 50, 5, 5], 0.8), (1, [20, 20, 10, 10], 0.7)])
    # t=0.9: P 1, R 1/2, F1 2/3; t=0.8: P 1/2, R 1/2; t=0.7: P 2/3, R 1, F1 0.8 (best)
    out = precision_recall_at_best_f1(gt, res, "bbox")
    assert out["conf"] == 0.7
    assert (
        out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0 and out["f1"] == pytest.approx(0.8)
    )


def test_best_f1_is_the_class_mean_at_one_shared_threshold() -> None:
    gt = _dataset([(1, [0, 0, 10, 10]), (1, [20, 20, 10, 10]), (2, [40, 0, 10, 10])])
    res = _results(
        [
            (1, [0, 0, 10, 10], 0.9),
            (1, [50, 50, 5, 5], 0.8),
            (1, [20, 20, 10, 10], 0.7),
            (2, [40, 0, 10, 10], 0.75),
            (2, [60, 60, 4, 4], 0.72),
        ]
    )
    # mean F1 per threshold: .9 -> (2/3 + 0)/2, .8 -> (1/2 + 0)/2, .75 -> (1/2 + 1)/2 = 0.75 (best),
    # .72 -> (1/2 + 2/3)/2, .7 -> (0.8 + 2/3)/2 = 0.733
    out = precision_recall_at_best_f1(gt, res, "bbox")
    assert out["conf"] == 0.75
    assert out["precision"] == pytest.approx(0.75) and out["recall"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(0.75)


def test_matching_is_greedy_by_score_and_duplicates_are_false_positives() -> None:
    gt = _dataset([(1, [0, 0, 10, 10])])
    res = _results([(1, [0, 0, 10, 10], 0.6), (1, [0, 0, 10, 9], 0.95), (2, [0, 0, 10, 10], 0.99)])
    matched = match_detections(gt, res, "bbox")
    scores, tps, n_gt = matched[1]
    assert scores.tolist() == [0.95, 0.6] and tps.tolist() == [True, False] and n_gt == 1
    assert matched[2][1].tolist() == [False] and matched[2][2] == 0  # wrong class: no ground truth there
    assert precision_recall_at_best_f1(gt, [], "bbox")["recall"] == 0.0


def test_mask_iou_threshold_is_inclusive_at_one_half() -> None:
    square = np.zeros((20, 20), np.uint8)
    square[0:10, 0:10] = 1
    half, less = np.zeros_like(square), np.zeros_like(square)
    half[0:10, 0:5] = 1  # IoU exactly 50 / 100
    less[0:10, 0:5] = 1
    less[9, 4] = 0  # IoU 49 / 100
    gt = {
        "images": [{"id": 1, "width": 20, "height": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "area": 100.0,
                "iscrowd": 0,
                "segmentation": encode_mask(square),
            }
        ],
        "categories": [{"id": 1, "name": "whole"}],
    }
    for mask, expected in ((half, True), (less, False)):
        res = [
            {
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 5, 10],
                "score": 0.5,
                "segmentation": encode_mask(mask),
            }
        ]
        assert match_detections(gt, res, "segm", 0.5)[1][1].tolist() == [expected]


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", FISH_EXPERIMENTS)
def test_fish_experiment_composes(name: str, tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_config([f"experiment={name}"], tmp_path, data_dir)
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    model, data = job["model"], job["data"]
    assert model["_target_"] == "cytobench.models.yolo.build_yolo" and model["task"] == "segment"
    assert model["arch"].endswith("-seg.yaml")
    assert model["train_args"]["epochs"] == job["trainer"]["max_epochs"]
    assert model["train_args"]["seed"] == job["seed"]
    assert set(job["evaluator"]["iou_types"]) == {"bbox", "segm"}
    assert data["train_ann"].endswith("train.json") and data["val_ann"].endswith("val.json")


def test_paper_experiment_uses_the_paper_recipe_and_split(tmp_path: Path, data_dir: Path) -> None:
    job = OmegaConf.to_container(
        compose_config(["experiment=fish_yolov8seg"], tmp_path, data_dir), resolve=False
    )
    model, args = job["model"], job["model"]["train_args"]
    assert model["arch"] == "yolov8s-seg.yaml" and model["imgsz"] == 640
    recipe = {
        "optimizer": "AdamW",
        "lr0": 0.01,
        "momentum": 0.9,
        "hsv_h": 0.015,
        "hsv_s": 0.1,
        "hsv_v": 0.1,
        "degrees": 0.25,
        "translate": 0.25,
        "scale": 0.5,
        "shear": 0.25,
        "perspective": 0.001,
        "flipud": 0.25,
        "fliplr": 0.25,
        "mosaic": 1.0,
    }
    assert {k: args[k] for k in recipe} == recipe
    n, frac = job["data"]["n_images"], job["data"]["val_fraction"]
    assert (n, round(n * frac)) == (87, 27)  # 60 train / 27 val as in the paper
    assert sorted(e["prepare"]["size"] for e in model["extra_train"]) == [512, 1024, 1293, 2873]
    paper = load_paper_table()
    assert paper["metrics"] == {"precision": 0.94, "recall": 0.98, "mAP50": 0.991, "mAP50-95": 0.764}
    assert (paper["n_train"], paper["n_val"]) == (60, 27)


def test_table_is_registered() -> None:
    assert REPRODUCTIONS["fish/table1"] == "cytobench.reproduce.fish_table1:run"
    module, fn = load_reproduction("fish/table1")
    assert callable(fn) and hasattr(module, "add_arguments")


def test_test_set_seed_must_differ_from_training(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="seed"):
        simulate_test_set({"prepare": {"seed": 5}}, 2, 5, tmp_path / "t")


# ------------------------------------------------------------------------------- smoke run + table1
@pytest.mark.slow
def test_fish_smoke_trains_via_train_py_and_reproduces_table1(tmp_path: Path, data_dir: Path) -> None:
    from cytobench.reproduce.fish_table1 import reproduce

    run_dir = tmp_path / "run"
    run_train_py(["experiment=fish_smoke", f"hydra.run.dir={run_dir}"], data_dir, cwd=ROOT, timeout=300)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and len(metrics["history"]) == 2
    for key in ("coco/segm_AP", "coco/segm_AP50", "coco/bbox_AP", "yolo/mask_mAP50", "yolo/mask_mAP50-95"):
        assert 0.0 <= metrics["latest"][key] <= 1.0, key
    best = run_dir / "checkpoints" / "best.pt"
    assert best.is_file() and (run_dir / "checkpoints" / "last.pt").is_file()

    result = reproduce(best, tmp_path / "table", scale="smoke", seed=2024)
    assert result["test_images"] == 4
    assert result["paper"]["mAP50"] == 0.991
    for column in ("cytobench", "ultralytics"):
        assert set(result[column]) == {"precision", "recall", "mAP50", "mAP50-95"}
        assert all(0.0 <= v <= 1.0 for v in result[column].values()), result[column]
    assert result["cytobench"]["mAP50-95"] <= result["cytobench"]["mAP50"] + 1e-12
    assert "0.991" in (tmp_path / "table" / "table1.md").read_text()
