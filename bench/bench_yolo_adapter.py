"""Benchmark: the YOLO adapter's overhead against calling ultralytics directly (goal: ratio <= 1.05).

Same data, same arguments, same process. Training: ``python train.py experiment=fish_smoke``'s path
(``cytobench.train.run``: data check, COCO -> YOLO export, ultralytics training with the cytobench
logging callback, checkpoints with metadata) against plain ``YOLO(yaml).train(**the same arguments)``
on the already exported data, timed until the checkpoints are written; the adapter's COCO scoring of
the val split afterwards is extra work (plain ultralytics does not do it) and is shown on its own row.
The adapter's overhead is a fixed cost per run (export, a fresh ultralytics label cache, checkpoint
copies with metadata: about half a second here), so the ratio falls towards 1 with more epochs.
Prediction: ``YoloModel`` (C x H x W tensors in [0, 1] in, boxes / labels / full-size uint8 masks out)
against plain ``YOLO(best.pt).predict`` on the same images with the same arguments.

A first, untimed plain training pays the one-time costs (imports, kernel set-up); then rounds
alternate which path goes first and the table gives medians of wall and process-CPU seconds (CPU
seconds are robust to other processes sharing the cores). The last epoch's training losses of both
paths are printed: identical numbers show that both ran the same training. Summary rows (``make bench``):
the training and the prediction wall-time ratios, adapter / plain, against the goal.

Usage: ``python bench/bench_yolo_adapter.py [--epochs 3] [--n-images 24] [--size 512] [--imgsz 320]
[--rounds 3] [--predict-repeats 7]``
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402
from summary import HEADER, row  # noqa: E402  # bench/ is on sys.path when a bench runs as a script

from cytobench.engine.ultralytics_run import coco_splits, export_yolo_dataset, train_arguments  # noqa: E402
from cytobench.io.coco import load_coco  # noqa: E402
from cytobench.io.images import read_image  # noqa: E402
from cytobench.models.yolo import (  # noqa: E402
    build_yolo_model,
    load_yolo_model,
    setup_ultralytics_offline,
    to_uint8_rgb,
)
from cytobench.reporting.tables import format_table  # noqa: E402
from cytobench.train import prepare_data, run  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GOAL = 1.05  # adapter wall time / plain ultralytics wall time, at most


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def plain_train(arch: str, train_args: dict[str, Any]) -> Any:
    """Plain ultralytics: ``YOLO(arch).train(**train_args)``; returns its trainer."""
    model = build_yolo_model(arch)
    model.train(**train_args)
    return model.trainer


def compose_fish(work: Path, run_dir: Path, args: argparse.Namespace) -> Any:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=fish_smoke",
                f"data_dir={work / 'data'}",
                f"data.n_images={args.n_images}",
                f"data.size={args.size}",
                f"model.imgsz={args.imgsz}",
                f"trainer.max_epochs={args.epochs}",
                "logger=csv",
            ],
        )
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--predict-repeats", type=int, default=7)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_yolo_"))
    setup_ultralytics_offline(work / "ultralytics_cfg")
    base_cfg = compose_fish(work, work / "unused", args)
    prepare_data(base_cfg.data)  # the simulation is cached for both paths
    splits = coco_splits(base_cfg.data)
    # plain ultralytics gets the data ready-made in its own format
    data_yaml, _ = export_yolo_dataset(splits, work / "plain_data")

    train_rows: dict[str, list[tuple[float, float]]] = {"plain": [], "adapter": [], "scoring": []}
    losses: dict[str, list[float]] = {"plain": [], "adapter": []}
    best_pt = None
    for r in range(-1, args.rounds):  # round -1: untimed warm-up
        cfg = compose_fish(work, work / f"adapter_{r}", args)
        plain_args = train_arguments(
            OmegaConf.to_container(cfg.model.train_args, resolve=True),
            imgsz=cfg.model.imgsz,
            data_yaml=data_yaml,
            project=work / f"plain_{r}",
            device="cpu",
        )
        if r < 0:
            plain_train(cfg.model.arch, {**plain_args, "epochs": 1})
            continue
        for path in ("plain", "adapter") if r % 2 == 0 else ("adapter", "plain"):
            if path == "plain":
                wall, cpu, trainer = timed(functools.partial(plain_train, cfg.model.arch, plain_args))
                train_rows["plain"].append((wall, cpu))
                losses["plain"].append(
                    trainer.label_loss_items(trainer.tloss, prefix="train")["train/seg_loss"]
                )
                continue
            run(cfg)
            metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
            latest = metrics["latest"]
            train_rows["adapter"].append((latest["time/train_s"], latest["time/train_cpu_s"]))
            train_rows["scoring"].append((latest["time/eval_s"], float("nan")))
            losses["adapter"].append(metrics["history"][-1]["train/seg_loss"])
            best_pt = Path(cfg.run_dir) / "checkpoints" / "best.pt"

    gt = load_coco(splits["val"][1])
    rgb = [to_uint8_rgb(read_image(splits["val"][0] / img["file_name"]).array) for img in gt["images"]]
    bgr = [np.ascontiguousarray(a[:, :, ::-1]) for a in rgb]
    model = load_yolo_model(best_pt, imgsz=args.imgsz, conf=0.001, iou=0.7, max_det=300).eval()
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in rgb]
    plain_model = build_yolo_model("", weights_path=best_pt)
    kw = {"imgsz": args.imgsz, "conf": 0.001, "iou": 0.7, "max_det": 300}
    plain_predict = functools.partial(
        plain_model.predict, source=bgr, retina_masks=True, verbose=False, device="cpu", **kw
    )
    adapter_predict = functools.partial(model, tensors)
    plain_predict(), adapter_predict()  # warm-up (model fusing, first-call set-up)
    predict_rows: dict[str, list[tuple[float, float]]] = {"plain": [], "adapter": []}
    for _ in range(args.predict_repeats):
        predict_rows["plain"].append(timed(plain_predict)[:2])
        predict_rows["adapter"].append(timed(adapter_predict)[:2])

    def med(rows: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in rows)

    header = ["step", "plain ultralytics wall s", "adapter wall s", "extra wall s", "ratio wall", "ratio CPU"]
    table = [
        [
            f"train {args.epochs} epochs ({args.n_images} images at {args.size} px, imgsz {args.imgsz})",
            med(train_rows["plain"], 0),
            med(train_rows["adapter"], 0),
            med(train_rows["adapter"], 0) - med(train_rows["plain"], 0),
            med(train_rows["adapter"], 0) / med(train_rows["plain"], 0),
            med(train_rows["adapter"], 1) / med(train_rows["plain"], 1),
        ],
        [
            f"predict {len(rgb)} val images (numpy masks at image size)",
            med(predict_rows["plain"], 0),
            med(predict_rows["adapter"], 0),
            med(predict_rows["adapter"], 0) - med(predict_rows["plain"], 0),
            med(predict_rows["adapter"], 0) / med(predict_rows["plain"], 0),
            med(predict_rows["adapter"], 1) / med(predict_rows["plain"], 1),
        ],
        [
            "COCO scoring of val after training (adapter only)",
            float("nan"),
            med(train_rows["scoring"], 0),
            "",
            "",
            "",
        ],
    ]
    print(format_table(header, table, digits=3))
    print(f"\nlast-epoch train/seg_loss, plain: {losses['plain']}  adapter: {losses['adapter']}")
    print(f"medians of {args.rounds} rounds (training) and {args.predict_repeats} repeats (prediction)")
    print(HEADER)
    for (measure, plain, ours, _extra, ratio, _cpu), what in zip(table[:2], ("training", "prediction")):
        row(
            f"YOLO adapter {what}: {measure}, wall s (baseline: plain ultralytics)",
            round(ours, 2),
            round(plain, 2),
            ratio,
            f"<= {GOAL:g}x",
            ratio <= GOAL,
        )


if __name__ == "__main__":
    main()
