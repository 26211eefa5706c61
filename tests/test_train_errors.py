"""``python train.py`` on bad input: one line on stderr naming the fault, exit code 2, nothing trained.

Each case runs train.py in its own process, as a user would; the checkpoints are plain-data files made
from the composed config, so no case trains (the resume checks run before any training).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.io.images import write_image
from tests.conftest import ROOT, compose_config
from tests.unit.test_run_checks import checkpoint_of

pytestmark = pytest.mark.slow
SMOKE = ["experiment=faster_rcnn_smoke"]


def write_coco(folder: Path, names: list[str]) -> dict[str, str]:
    """Two 32 x 32 images with one box each, categories ``names``; returns the data=coco overrides."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in (1, 2):
        write_image(folder / "images" / f"im{i}.png", np.full((32, 32), 40 * i, dtype=np.uint8))
        images.append({"id": i, "file_name": f"im{i}.png", "width": 32, "height": 32})
        annotations.append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 10, 10], "area": 100, "iscrowd": 0}
        )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)],
    }
    ann = folder / f"{len(names)}cats.json"
    ann.write_text(json.dumps(coco))
    return {
        "data.train.root": str(folder / "images"),
        "data.train.ann_file": str(ann),
        "data.val.ann_file": str(ann),
    }


def train_py(args: list[str], run_dir: Path, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        cwd=run_dir.parent,
        env={
            **{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
            "CYTOBENCH_DATA_DIR": str(data_dir),
            **env,
        },
        timeout=300,
    )


def assert_one_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, nothing else
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    return proc.stderr.strip()


def test_config_values_and_missing_paths(tmp_path: Path, data_dir: Path) -> None:
    run_dir = tmp_path / "run"
    proc = train_py([*SMOKE, "trainer.max_epochs=abc"], run_dir, data_dir, OMP_NUM_THREADS="1")
    assert_one_line(proc, "BadInputError: trainer.max_epochs: must be an integer >= 1, got 'abc'")
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "trainer.max_epochs" in status["reason"]
    # what besides config and seed moves the numbers is recorded from the start, failed runs included
    assert status["environment"]["torch_threads"] == 1
    assert status["environment"]["torch"] == torch.__version__
    assert "trainer.max_epochs: must be an integer" in (run_dir / "train.log").read_text()  # + traceback

    proc = train_py([*SMOKE, "data=coco"], tmp_path / "coco", data_dir)
    assert_one_line(proc, "data.train.ann_file, data.train.root, data.val.ann_file: no value given")

    # a cytobench error raised inside Hydra's instantiate (the dataset) is not wrapped into four lines
    missing = ["data=coco", "data.train.root=/nowhere", f"data.train.ann_file={tmp_path / 'none.json'}"]
    proc = train_py([*SMOKE, *missing, "data.val.ann_file=/nowhere.json"], tmp_path / "inst", data_dir)
    assert_one_line(proc, f"BadInputError: {tmp_path / 'none.json'}: ")

    # HYDRA_FULL_ERROR=1 keeps the traceback
    proc = train_py([*SMOKE, "trainer.max_epochs=abc"], tmp_path / "full", data_dir, HYDRA_FULL_ERROR="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "trainer.max_epochs" in proc.stderr


def test_resume_refusals(tmp_path: Path, data_dir: Path) -> None:
    data = write_coco(tmp_path / "two", ["cell", "debris"])
    args = [*SMOKE, "data=coco", *(f"{k}={v}" for k, v in data.items())]
    ckpt = tmp_path / "last.pt"
    torch.save(checkpoint_of(compose_config(args, tmp_path / "ref", data_dir)), ckpt)

    # item 7: an optimizer override on an exact resume is refused, naming the checkpoint's value
    run_dir = tmp_path / "lr"
    proc = train_py([*args, "trainer.optimizer.lr=1e10", f"trainer.resume={ckpt}"], run_dir, data_dir)
    line = assert_one_line(proc, f"{ckpt}: the checkpoint fixes trainer.optimizer.lr=0.005 (this run: 1e+10)")
    assert f"model.weights_path={ckpt}" in line
    assert not (run_dir / "config.yaml").exists()  # nothing claims a run with lr 1e10

    # a checkpoint of another number of classes
    three = write_coco(tmp_path / "three", ["cell", "debris", "mitosis"])
    other = [*SMOKE, "data=coco", *(f"{k}={v}" for k, v in three.items())]
    proc = train_py([*other, f"trainer.resume={ckpt}"], tmp_path / "classes", data_dir)
    assert_one_line(proc, "was trained on 2 categories (cell, debris) but this run's data has 3")

    # a YOLO checkpoint (metadata under "cytobench", no trainer state)
    yolo = tmp_path / "yolo.pt"
    meta = {"model_config": {"_target_": "cytobench.models.yolo.build_yolo", "arch": "yolov8n-seg.yaml"}}
    torch.save({"model": {"w": torch.zeros(1)}, "cytobench": meta}, yolo)
    proc = train_py([*args, f"trainer.resume={yolo}"], tmp_path / "yolo", data_dir)
    assert_one_line(proc, f"BadInputError: {yolo}: is a YOLO (ultralytics) checkpoint")
