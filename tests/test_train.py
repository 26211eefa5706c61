"""The baseline experiment end to end: train, evaluate, checkpoint, resume exactly, predict, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cytobench.cli import main as cli_main
from cytobench.errors import BadInputError
from cytobench.io.checkpoint import load_checkpoint
from cytobench.io.files import read_json
from cytobench.train import run
from tests.conftest import ROOT, compose_config

pytestmark = pytest.mark.slow
SMOKE = ["experiment=faster_rcnn_smoke", "logger=csv"]


def train(run_dir: Path, data_dir: Path, *overrides: str) -> dict:
    run(compose_config([*SMOKE, *overrides], run_dir, data_dir))
    return read_json(run_dir / "metrics.json")  # undefined metrics are null in the file, NaN here


def test_smoke_run_writes_everything(tmp_path: Path, data_dir: Path) -> None:
    metrics = train(tmp_path, data_dir)
    assert metrics["epoch"] == 2 and len(metrics["history"]) == 2
    assert {"coco/bbox_AP", "enum/wcr", "enum/aer"} <= set(metrics["latest"])
    assert all(0.0 <= v <= 1.0 for k, v in metrics["latest"].items() if k.startswith("coco/") and v == v)
    csv_rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_rows[0] == "step,key,value" and any(",train/loss," in r for r in csv_rows)
    assert "${" not in (tmp_path / "config.yaml").read_text()  # written resolved
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["num_classes"] == 3 and ckpt["model_config"]["backbone"] == "resnet18"


def test_resume_reproduces_uninterrupted_run(tmp_path: Path, data_dir: Path) -> None:
    full = train(tmp_path / "full", data_dir, "trainer.max_epochs=3")
    train(tmp_path / "part", data_dir, "trainer.max_epochs=1")
    resumed = train(
        tmp_path / "resumed",
        data_dir,
        "trainer.max_epochs=3",
        f"trainer.resume={tmp_path / 'part' / 'checkpoints' / 'last.pt'}",
    )
    assert resumed["step"] == full["step"]
    # best.pt of the resumed folder exists whichever epoch was best (the first run's is copied over)
    assert resumed["best"]["epoch"] == full["best"]["epoch"] and Path(resumed["best"]["checkpoint"]).is_file()
    raw = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("full", "resumed")}
    assert raw["resumed"]["history"] == raw["full"]["history"]  # as written: undefined metrics are null
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_an_override_the_checkpoint_fixes(tmp_path: Path, data_dir: Path) -> None:
    """Resuming with trainer.optimizer.lr=1e10 trained at the checkpoint's 0.005 while config.yaml said
    1e10; now it is refused, naming the value, and a resume that runs records the values it used."""
    train(tmp_path / "part", data_dir, "trainer.max_epochs=1")
    ckpt = tmp_path / "part" / "checkpoints" / "last.pt"
    stored = load_checkpoint(ckpt)
    assert stored["trainer_config"]["optimizer"]["lr"] == 0.005 and stored["seed"] == 0
    with pytest.raises(BadInputError, match=r"fixes trainer\.optimizer\.lr=0\.005 \(this run: 1e\+10\)"):
        train(
            tmp_path / "lr",
            data_dir,
            "trainer.max_epochs=2",
            "trainer.optimizer.lr=1e10",
            f"trainer.resume={ckpt}",
        )
    assert not (tmp_path / "lr" / "config.yaml").exists()

    metrics = train(tmp_path / "ok", data_dir, "trainer.max_epochs=2", f"trainer.resume={ckpt}")
    assert metrics["epoch"] == 2 and metrics["status"] == "done"
    config = yaml.safe_load((tmp_path / "ok" / "config.yaml").read_text())
    resumed = load_checkpoint(tmp_path / "ok" / "checkpoints" / "last.pt")
    assert (
        config["trainer"]["optimizer"]["lr"] == resumed["optimizer"]["param_groups"][0]["initial_lr"] == 0.005
    )


def test_predict_command_writes_coco_results(tmp_path: Path, data_dir: Path, capsys) -> None:
    train(tmp_path / "run", data_dir, "trainer.max_epochs=1")
    images = next(data_dir.glob("toy_n8_*")) / "images"
    out = tmp_path / "pred.json"
    cli_main(
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "run" / "checkpoints" / "last.pt"),
            "--images",
            str(images),
            "--out",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    index = json.loads(out.with_suffix(".images.json").read_text())
    assert len(index["images"]) == 8
    assert all(set(r) >= {"image_id", "category_id", "bbox", "score"} for r in results)
    assert {r["category_id"] for r in results} <= {c["id"] for c in index["categories"]}

    # with --gt the results use the ground truth's image ids, so `cytobench eval` scores them directly
    toy_dir = images.parent
    val_ids = {
        img["file_name"]: img["id"] for img in json.loads((toy_dir / "val.json").read_text())["images"]
    }
    val_images = [images / name for name in val_ids]
    cli_main(
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "run" / "checkpoints" / "last.pt"),
            "--images",
            *map(str, val_images),
            "--gt",
            str(toy_dir / "val.json"),
            "--out",
            str(tmp_path / "pg.json"),
        ]
    )
    assert {r["image_id"] for r in json.loads((tmp_path / "pg.json").read_text())} <= set(val_ids.values())
    cli_main(["eval", "coco-bbox", "--gt", str(toy_dir / "val.json"), "--pred", str(tmp_path / "pg.json")])

    # an undecodable image among good ones stops with one line naming it
    (images.parent / "bad").mkdir(exist_ok=True)
    broken = images.parent / "bad" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "run" / "checkpoints" / "last.pt"),
                "--images",
                str(broken),
                "--out",
                str(tmp_path / "p2.json"),
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "broken.png" in err and err.count("\n") == 1


def test_ddp_two_cpu_processes(tmp_path: Path, data_dir: Path) -> None:
    env = {**os.environ, "CYTOBENCH_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "train.py"),
        *SMOKE,
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 6 training images split over 2 ranks at batch 2: 2 steps per epoch (3 on one process)
    assert metrics["epoch"] == 2 and metrics["step"] == 4
    # evaluation covered each of the 2 validation images exactly once
    assert metrics["latest"]["enum/n_images"] == 2


def test_predict_tiles_a_large_image_like_its_parts(tmp_path: Path, data_dir: Path) -> None:
    """A 2 x 2 mosaic of training-size images, tiled with windows of that size and no overlap, gives the
    union of the four images' own predictions (shifted): the windows are exactly the four images."""
    import numpy as np

    from cytobench.io.images import read_image, write_image

    train(tmp_path / "run", data_dir, "trainer.max_epochs=1")
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    images = sorted((next(data_dir.glob("toy_n8_*")) / "images").glob("*.png"))[:4]
    parts = [np.rint(read_image(p).array * 255).astype(np.uint8) for p in images]
    h, w = parts[0].shape[:2]
    mosaic = np.concatenate([np.concatenate(parts[:2], axis=1), np.concatenate(parts[2:], axis=1)], axis=0)
    write_image(tmp_path / "mosaic.png", mosaic)
    for name, paths, extra in (
        ("parts", [str(p) for p in images], []),
        ("mosaic", [str(tmp_path / "mosaic.png")], ["--tile", str(max(h, w)), "--tile-overlap", "0"]),
    ):
        cli_main(
            [
                "predict",
                "--checkpoint",
                ckpt,
                "--images",
                *paths,
                "--out",
                str(tmp_path / f"{name}.json"),
                *extra,
            ]
        )
    offsets = {1: (0, 0), 2: (w, 0), 3: (0, h), 4: (w, h)}
    expected = sorted(
        [r["bbox"][0] + offsets[r["image_id"]][0], r["bbox"][1] + offsets[r["image_id"]][1], r["score"]]
        for r in json.loads((tmp_path / "parts.json").read_text())
    )
    got = sorted(
        [r["bbox"][0], r["bbox"][1], r["score"]] for r in json.loads((tmp_path / "mosaic.json").read_text())
    )
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose(got, expected, atol=1e-3)
