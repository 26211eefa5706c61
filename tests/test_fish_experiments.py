"""FISH YOLOv8-seg experiments: configs compose with the paper's recipe, the smoke run trains through
``python train.py``, ``reproduce fish/table1`` scores it (the table's precision / recall maths is tested on
hand cases in ``tests/unit/test_eval_operating_point.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cytobench.errors import BadInputError
from cytobench.reproduce import REPRODUCTIONS, load_reproduction
from cytobench.reproduce.base import held_out_test_set
from cytobench.reproduce.fish_table1 import load_paper_table
from tests.conftest import ROOT, compose_config, run_train_py

FISH_EXPERIMENTS = ("fish_smoke", "fish_cpu", "fish_yolov8seg")
FISH_SIM = "cytobench.simulate.fish.simulate_fish"


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
    with pytest.raises(BadInputError, match="--seed: 5 is the training data's simulation seed"):
        held_out_test_set(
            {"prepare": {"seed": 5, "size": 64}}, 2, 5, tmp_path / "t", default_simulator=FISH_SIM
        )


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
