"""Benchmark: ``cytobench karyotype`` on one 1600 x 1200 G-banded metaphase spread on the CPU, stage by stage,
and the two-stage model's batched crop classifier against one crop at a time.

The spread comes from ``simulate_metaphase(label_mode="karyotype")`` (46 chromosomes, fragments and debris,
written as a PNG as the command reads it). The model is the ``karyotype_two_stage`` experiment's at the paper
scale on spreads (``experiment=karyotype_two_stage scale=paper data=karyotype_spreads``, composed with hydra
from ``conf/``; ``--override`` adds more, e.g. ``model.detector.backbone=resnet101 model.crop_size=[96,32]
model.classifier.width=32`` for the paper-size model): DeepACEv2 on ResNet-18 as stage 1, a width-16 crop
classifier of 64 x 24 crops as stage 2, with **random weights** (nothing is downloaded or trained).

**Claim 1 (report): seconds per spread, split into three stages**, each as the command runs it:

* *detection*: the image as a tensor, ``TiledPredictor(detector, window).predict_one`` and the detections
  back as arrays (``cytobench karyotype``'s ``_Detector``). The window is the training size (1024 px at the
  paper scale, 1024 x 768 spreads), so a 1600 x 1200 spread goes through in windows, as the command does by
  default (``--tile``: another window, 0 for the whole image at once).
* *classification*: straightened crops of the chromosomes, the classifier and the pair prior
  (``TwoStageKaryotyper.classify``, what ``model(images)`` does after its detector).
* *rendering*: ``cytobench.karyotype.command.analyze_image`` (reading the PNG, cutting out and standing up
  each chromosome, the karyogram PNG, the image's json entry) and the ``karyotypes.json`` / ``.md`` of the
  run (summary, json, markdown).

Untrained weights give arbitrary detections (their number and places mean nothing), so classification and
rendering are fed the simulator's **true boxes** (46 chromosomes, detector score 1): the realistic number of
chromosomes for a spread. Rendering gets the classified boxes (classes from the pair prior, scores = detector
score x class probability, so with random weights every chromosome is marked low-confidence). With windows the
command classifies each window's detections; here the spread's chromosomes are classified once, together.

**Claim 2: batched crop classification vs one crop at a time.** Ours: all crops of the spread from one
``crops_from_detections`` call (one ``grid_sample``) and one classifier forward pass. The baseline: a Python
loop that cuts each chromosome with ``straighten_crop`` and runs the classifier on it alone. Both get the same
1-channel image, boxes and relative lengths (length / the cell's median); the logits must agree to 1e-4.
Goal: >= 2x faster than one at a time. This comparison runs on ``--crop-threads`` torch threads (default 1):
one crop at a time is hundreds of tiny operations, and with 2 threads on cores that other processes share, each
waits on OpenMP's barriers for a descheduled thread (one run on 2 loaded cores: 46 single-crop passes took 30 s
at 2 threads, 0.2 s at 1), so the loop's time would measure the machine's load rather than the loop. On one
thread the batched pass loses its second thread too: the ratio is, if anything, conservative for ours.

Claim 1 runs on torch's default threads, as the command does (``--threads`` sets them); on loaded cores its
small-operation stages pay the same barrier waits (one run on 2 loaded cores: crop + classify 1.16 s at 2
threads, where claim 2's batched crops and classifier took 79 ms at 1). Times are wall seconds, median of
``--repeats`` (the stages, and ours / the baseline, alternate in each repeat); CPU seconds (this process, all
threads) are printed beside them.

Usage: ``python bench/bench_karyotype.py [--size 1600 1200] [--repeats 3] [--tile PX] [--seed 0]
[--threads N] [--crop-threads 1] [--override KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

from cytobench.engine.tiling import TiledPredictor, tile_windows, training_image_size
from cytobench.io.coco_convert import to_numpy
from cytobench.io.files import atomic_file, write_json_atomic
from cytobench.io.images import read_image
from cytobench.karyotype.command import analyze_image
from cytobench.karyotype.report import render_markdown, summarize
from cytobench.models.karyotype_classifier import (
    ChromosomeClassifier,
    chromosome_geometry,
    crops_from_detections,
    relative_lengths,
    straighten_crop,
)
from cytobench.simulate.metaphase import simulate_metaphase

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ["experiment=karyotype_two_stage", "scale=paper", "data=karyotype_spreads"]
LOW_CONFIDENCE = 0.7
KARYOGRAM = "metaphase_00000_karyogram.png"


# ------------------------------------------------------------------------------------------------ set-up
def build_model(overrides: Sequence[str]) -> tuple[Any, dict[str, Any], list[int]]:
    """The experiment's model with random weights (eval mode), its resolved config and the training size."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train", overrides=list(overrides))
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    model = instantiate(model_config, num_classes=25)  # 24 chromosome classes + background
    return model.eval(), model_config, [int(v) for v in cfg.data.size]


def simulate_spread(out: Path, size: Sequence[int], seed: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """One simulated spread on disk: its PNG, true xyxy boxes (N, 4) and classes (N,) 1-24."""
    ann_file = simulate_metaphase(
        1, out, size=(int(size[0]), int(size[1])), seed=seed, label_mode="karyotype"
    )
    data = json.loads(Path(ann_file).read_text(encoding="utf-8"))
    image = data["images"][0]
    anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
    return Path(ann_file).parent / "images" / image["file_name"], boxes, classes


# ------------------------------------------------------------------------------------------------ stages
def detect(predictor: TiledPredictor, array: np.ndarray) -> dict[str, np.ndarray]:
    """Stage 1 as the command runs it: ``(H, W, C)`` array -> tensor -> tiled detector -> arrays."""
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    with torch.no_grad():
        pred = predictor.predict_one(tensor)
    return {
        "boxes": to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4),
        "scores": to_numpy(pred["scores"]).astype(np.float64).reshape(-1),
        "labels": to_numpy(pred["labels"]).astype(np.int64).reshape(-1),
    }


def classify(model: Any, image: torch.Tensor, boxes: torch.Tensor) -> dict[str, np.ndarray]:
    """Stage 2: crops, classifier and pair prior on the given boxes (detector score 1) -> what stage 3 takes."""
    n = boxes.shape[0]
    detections = {"boxes": boxes, "scores": torch.ones(n), "labels": torch.ones(n, dtype=torch.int64)}
    with torch.no_grad():
        pred = model.classify([image], [detections])[0]
    return {
        "boxes": boxes.numpy().astype(np.float64),
        "scores": pred["scores"].numpy().astype(np.float64),
        "classes": pred["labels"].numpy().astype(np.int64),
        "class_scores": pred["class_scores"].numpy(),
    }


class FixedDetections:
    """The detector ``analyze_image`` calls, giving the classified true boxes."""

    def __init__(self, found: dict[str, np.ndarray]) -> None:
        self.found = {k: found[k] for k in ("boxes", "scores", "classes")}

    def __call__(self, array: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.found.items()}


def render(path: Path, found: dict[str, np.ndarray], out: Path) -> dict[str, Any]:
    """Stage 3: the command's per-image work (read, cut out, karyogram PNG, entry) and the run's json / md."""
    entry = analyze_image(
        path, FixedDetections(found), out, KARYOGRAM, score_thr=0.0, low_confidence=LOW_CONFIDENCE
    )
    report = {
        "images": [entry],
        "summary": summarize([entry]),
        "settings": {"checkpoint": "untrained", "score_thr": 0.0, "low_confidence": LOW_CONFIDENCE},
    }
    write_json_atomic(out / "karyotypes.json", report, indent=1)
    with atomic_file(out / "karyotypes.md") as handle:
        handle.write(render_markdown(report))
    return entry


# ---------------------------------------------------------------------------------------- crop classifier
def batched(
    classifier: ChromosomeClassifier,
    image: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    margin: float,
) -> tuple[torch.Tensor, float]:
    """Ours: every crop from one ``crops_from_detections`` call, one classifier pass; (logits, crop seconds)."""
    start = time.perf_counter()
    geometry = chromosome_geometry(boxes)
    rel = relative_lengths(geometry.lengths)
    crops, _ = crops_from_detections(
        [image], [boxes], None, size, margin=margin, channels=classifier.in_channels, geometry=[geometry]
    )
    crop_s = time.perf_counter() - start
    return classifier(crops, rel), crop_s


def one_at_a_time(
    classifier: ChromosomeClassifier,
    image: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    margin: float,
) -> tuple[torch.Tensor, float]:
    """The baseline: ``straighten_crop`` and the classifier per chromosome; (logits, crop seconds)."""
    crop_s = 0.0
    start = time.perf_counter()
    rel = relative_lengths(torch.cat([chromosome_geometry(box[None]).lengths for box in boxes]))
    crop_s += time.perf_counter() - start
    logits = []
    for k in range(boxes.shape[0]):
        start = time.perf_counter()
        crop, _ = straighten_crop(image, boxes[k], None, size, margin=margin)
        crop_s += time.perf_counter() - start
        logits.append(classifier(crop[None], rel[k : k + 1]))
    return torch.cat(logits), crop_s


# ------------------------------------------------------------------------------------------------ timing
def clocked(fn: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of ``fn(*args)``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[1600, 1200], metavar=("W", "H"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="detector window in px (default: the training size; 0: never tile)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of claim 1 (0: torch's default)"
    )
    parser.add_argument(
        "--crop-threads",
        type=int,
        default=1,
        help="torch threads of claim 2 (0: as claim 1; see the docstring)",
    )
    parser.add_argument(
        "--override", nargs="*", default=[], help="more hydra overrides of the model (after the experiment's)"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    model, model_config, train_size = build_model([*EXPERIMENT, *args.override])
    detector_cfg, classifier = model_config["detector"], model.classifier
    window = training_image_size({"size": train_size}) if args.tile is None else int(args.tile)
    predictor = TiledPredictor(model.detector, window)
    crop_size, margin = model.crop_size, model.crop_margin
    print(
        f"torch {torch.__version__} on cpu, {torch.get_num_threads()} threads (claim 1); load average (1 min) "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"model: {' '.join([*EXPERIMENT, *args.override])}, random weights: DeepACEv2 "
        f"{detector_cfg['backbone']} (resize {detector_cfg['min_size']} / {detector_cfg['max_size']}, "
        f"{detector_cfg['rpn_post_nms_top_n_test']} proposals), classifier width "
        f"{model_config['classifier']['width']}, crops {crop_size[0]} x {crop_size[1]}"
    )

    with tempfile.TemporaryDirectory(prefix="bench_karyotype_") as tmp:
        path, true_boxes, _classes = simulate_spread(Path(tmp) / "spread", args.size, args.seed)
        array = read_image(path).array
        height, width = array.shape[:2]
        tiled = window > 0 and max(height, width) > predictor.min_ratio * window
        n_windows = len(tile_windows(height, width, window, predictor.overlap)) if tiled else 1
        print(
            f"spread {width} x {height} ({array.shape[2]} channel), {len(true_boxes)} chromosomes; detector "
            + (f"in {n_windows} windows of {window} px" if tiled else "on the whole image")
        )
        image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        boxes = torch.from_numpy(true_boxes).float()
        out = Path(tmp) / "karyo"
        out.mkdir()

        # claim 1: the three stages, alternating in each repeat
        times: dict[str, list[tuple[float, float]]] = {"detection": [], "classification": [], "rendering": []}
        for _ in range(args.repeats):
            wall, cpu, detections = clocked(detect, predictor, array)
            times["detection"].append((wall, cpu))
            wall, cpu, found = clocked(classify, model, image, boxes)
            times["classification"].append((wall, cpu))
            wall, cpu, entry = clocked(render, path, found, out)
            times["rendering"].append((wall, cpu))
        stage_s = {k: median([w for w, _ in v]) for k, v in times.items()}
        stage_cpu = {k: median([c for _, c in v]) for k, v in times.items()}
        total_s, total_cpu = sum(stage_s.values()), sum(stage_cpu.values())
        karyogram_shape = read_image(out / KARYOGRAM).array.shape
        print(
            f"untrained detector: {len(detections['boxes'])} detections (arbitrary); classification and "
            f"rendering use the {len(true_boxes)} true boxes"
        )
        print(
            f"karyogram {karyogram_shape[1]} x {karyogram_shape[0]} px, karyotype {entry['karyotype']} "
            f"(random weights), {entry['n_low_confidence']} low-confidence"
        )
        for name in times:
            print(f"{name}: {stage_s[name]:.3f} s ({stage_cpu[name]:.3f} CPU-s)")
        print(f"per spread: {total_s:.3f} s ({total_cpu:.3f} CPU-s)")

        # claim 2: batched crops + one classifier pass vs one crop at a time
        stage_threads = torch.get_num_threads()
        crop_threads = args.crop_threads if args.crop_threads > 0 else stage_threads
        torch.set_num_threads(crop_threads)
        gray = image if image.shape[0] == classifier.in_channels else image.mean(dim=0, keepdim=True)
        ours_t, base_t = [], []
        with torch.no_grad():
            for _ in range(args.repeats):
                wall, cpu, (base, base_crop) = clocked(
                    one_at_a_time, classifier, gray, boxes, crop_size, margin
                )
                base_t.append((wall, cpu, base_crop))
                wall, cpu, (ours, ours_crop) = clocked(batched, classifier, gray, boxes, crop_size, margin)
                ours_t.append((wall, cpu, ours_crop))
        torch.set_num_threads(stage_threads)
    diff = float((ours - base).abs().max())
    model_diff = float(np.abs(ours.softmax(dim=1).numpy() - found["class_scores"]).max())
    ours_ms, base_ms = (1000 * median([t[0] for t in ts]) for ts in (ours_t, base_t))
    ours_cpu, base_cpu = (1000 * median([t[1] for t in ts]) for ts in (ours_t, base_t))
    ours_crop_ms, base_crop_ms = (1000 * median([t[2] for t in ts]) for ts in (ours_t, base_t))
    threads_text = f"{crop_threads} thread{'s' if crop_threads > 1 else ''}"
    print(
        f"crop classifier ({threads_text}), {len(true_boxes)} crops: one at a time {base_ms:.1f} ms "
        f"({base_cpu:.1f} CPU-ms; crops {base_crop_ms:.1f} ms), batched {ours_ms:.1f} ms ({ours_cpu:.1f} CPU-ms; "
        f"crops {ours_crop_ms:.1f} ms)"
    )
    print(
        f"max |logits ours - one at a time| = {diff:.2e}; max |softmax(ours) - the model's class_scores| = "
        f"{model_diff:.2e}"
    )
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    print(HEADER)
    spread = f"karyotype {width}x{height} spread"
    what = {
        "detection": f"detection s (DeepACEv2 {detector_cfg['backbone']}, untrained, "
        + (f"{n_windows} windows of {window} px" if tiled else "whole image"),
        "classification": f"crop + classify s ({len(true_boxes)} true boxes, width "
        f"{model_config['classifier']['width']}, {crop_size[0]}x{crop_size[1]} crops, pair prior",
        "rendering": f"rendering s (read, karyogram PNG, json + md; {len(true_boxes)} true boxes",
    }
    for name, text in what.items():
        row(
            f"{spread}, {text}; baseline: whole spread, ratio: share)",
            round(stage_s[name], 3),
            round(total_s, 3),
            stage_s[name] / total_s,
            "report",
            True,
        )
    row(
        f"{spread}, s per spread on CPU ({stage_threads} threads; the 3 stages above)",
        round(total_s, 3),
        "-",
        math.nan,
        "report",
        True,
    )
    speedup = base_ms / ours_ms
    row(
        f"crop classifier, {len(true_boxes)} crops of a {width}x{height} spread, ms ({threads_text}; "
        "baseline: one crop at a time)",
        round(ours_ms, 2),
        round(base_ms, 2),
        speedup,
        ">= 2x faster than one at a time, logits within 1e-4",
        speedup >= 2.0 and diff < 1e-4,
    )


if __name__ == "__main__":
    main()
