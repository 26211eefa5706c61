"""Benchmark: training-step cost of DeepACEv2's modules over the plain single-level Faster R-CNN.

Both models are built by ``build_deepace`` with the same backbone, anchors and sizes; the baseline
has every switch off (the paper's Single1 network), DeepACEv2 adds HNAS, the Template Module (pull /
push losses) and TNRL (EG-NMS only acts at inference). Each timed step is forward + backward + SGD
on the same simulated metaphase batch; the two models alternate step by step so that machine load
hits both alike, and CPU time of this process is reported beside wall time (robust to other
processes on the cores). Goal (issue 3): the added modules cost <= 15% of the step, i.e. DeepACEv2's
median CPU s/step <= 1.15x the baseline's (the summary row).

Usage: ``python bench/bench_deepace_step.py [--size 512 384] [--backbone resnet18] [--steps 10] [--threads 2]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

from cytobench.data import CocoDetectionDataset
from cytobench.models.deepace import build_deepace
from cytobench.simulate.metaphase import simulate_metaphase

GOAL = 1.15  # DeepACEv2 CPU s/step over the Single1 baseline's, at most
BASELINE, OURS = "Faster R-CNN (Single1)", "DeepACEv2 (HNAS+TM+TNRL)"


def make_batch(size: tuple[int, int], n: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``n`` simulated spreads (46 chromosomes each) as model inputs and targets."""
    with tempfile.TemporaryDirectory() as tmp:
        ann = simulate_metaphase(n, Path(tmp), size=size, seed=0)
        dataset = CocoDetectionDataset(Path(tmp) / "images", ann)
        items = [dataset[i] for i in range(n)]
    return [img for img, _ in items], [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[512, 384], metavar=("W", "H"))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = args.size
    images, targets = make_batch((width, height), args.batch)
    scale = min(width, height) / 1200  # the paper's anchors are for 1200-px spreads
    common = {
        "backbone": args.backbone,
        "min_size": height,
        "max_size": width,
        "anchor_sizes": [max(4, round(s * scale)) for s in (32, 64, 96, 128)],
    }
    models = {
        BASELINE: build_deepace(**common, hnas=False, template=False, tnrl=False, postprocess="nms"),
        OURS: build_deepace(**common, hnas=True, template=True, tnrl=True, postprocess="eg"),
    }
    optimizers = {}
    for name, model in models.items():
        torch.manual_seed(0)
        model.train()
        optimizers[name] = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step(name: str) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        losses = models[name](images, targets)
        optimizers[name].zero_grad()
        sum(losses.values()).backward()
        optimizers[name].step()
        return time.perf_counter() - start, time.process_time() - start_cpu

    for name in models:  # warm-up
        step(name)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.steps):
        for name in models:
            w, c = step(name)
            wall[name].append(w)
            cpu[name].append(c)

    print(
        f"training step, {args.batch} spreads of {width}x{height}, {args.backbone}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), median of {args.steps} alternating steps"
    )
    header = f"{'model':<28} {'wall s/step':>12} {'CPU s/step':>11} {'vs baseline (CPU)':>18}"
    print(header)
    print("-" * len(header))
    base = statistics.median(cpu[BASELINE])
    for name in models:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<28} {w:>12.3f} {c:>11.3f} {c / base:>17.2f}x")
    ours = statistics.median(cpu[OURS])
    print(HEADER)
    row(
        f"DeepACEv2 training step, {args.batch} x {width}x{height}, CPU s/step (baseline: Single1 Faster R-CNN)",
        round(ours, 3),
        round(base, 3),
        ours / base,
        f"<= {GOAL:g}x (modules <= 15% of the step)",
        ours / base <= GOAL,
    )


if __name__ == "__main__":
    main()
