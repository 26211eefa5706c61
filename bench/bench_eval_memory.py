"""Benchmark: peak memory of scoring dense mask predictions, streaming loop vs the old gather-then-score loop.

A stand-in model predicts ``--masks`` instance masks per ``--size`` x ``--size`` image as torchvision does
((M, 1, H, W) float probabilities); the dataset gives the same number of ground-truth masks. Both loops
feed a COCO segm evaluator (maxDets 300):

* baseline, ``gather``: the loop before issue 11 (every prediction of the split moved to CPU and kept,
  then ``Evaluator.process`` once); it holds ``n x masks x H x W`` floats, so it is measured on a few
  images and its per-image growth is extrapolated to ``--n``;
* ``streaming``: :func:`cytobench.engine.inference.inference_on_dataset` on all ``--n`` images (each
  batch converted to RLE as it comes).

Each loop runs in a fresh process and reports its peak RSS (``ru_maxrss``). Targets: 200 images of
512 x 512 with 300 masks each under 2 GiB (issue 11), and peak RSS flat in the number of images: 50 vs
200 images within 10% (issue 13).

Usage: ``python bench/bench_eval_memory.py [--n 200] [--n-small 50] [--size 512] [--masks 300] [--baseline-n 2 4]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script
from torch.utils.data import DataLoader, Dataset


def _masks(
    n: int, size: int, seed: int, dtype: torch.dtype, shift: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rectangular masks (n, size, size) and their xyxy boxes, placed by ``seed`` (moved by ``shift`` px)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, size - 42, (n, 2), generator=g) + shift
    wh = torch.randint(8, 40, (n, 2), generator=g)
    masks = torch.zeros(n, size, size, dtype=dtype)
    for i, ((x, y), (w, h)) in enumerate(zip(xy.tolist(), wh.tolist())):
        masks[i, y : y + h, x : x + w] = 1
    boxes = torch.cat([xy, xy + wh], dim=1).float()
    return masks, boxes


class DenseTruth(Dataset):
    def __init__(self, n: int, size: int, masks: int) -> None:
        self.n, self.size, self.masks = n, size, masks

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        masks, boxes = _masks(self.masks, self.size, i, torch.uint8)
        target = {
            "boxes": boxes,
            "labels": torch.ones(self.masks, dtype=torch.int64),
            "masks": masks,
            "image_id": i + 1,
        }
        return torch.zeros(1, self.size, self.size), target


class DenseModel(torch.nn.Module):
    """Predicts the ground truth's masks moved by 2 px, as (M, 1, H, W) float probabilities (torchvision's form)."""

    def __init__(self, size: int, masks: int) -> None:
        super().__init__()
        self.size, self.masks, self.calls = size, masks, 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in images:
            masks, boxes = _masks(self.masks, self.size, self.calls, torch.float32, shift=2)
            self.calls += 1
            out.append(
                {
                    "boxes": boxes,
                    "scores": torch.linspace(1, 0.1, self.masks),
                    "labels": torch.ones(self.masks, dtype=torch.int64),
                    "masks": masks[:, None],
                }
            )
        return out


def run_loop(kind: str, n: int, size: int, masks: int) -> dict[str, float]:
    from cytobench.data.collate import detection_collate
    from cytobench.engine.inference import inference_on_dataset
    from cytobench.evaluation import CocoEvaluator

    loader = DataLoader(DenseTruth(n, size, masks), batch_size=1, collate_fn=detection_collate)
    model = DenseModel(size, masks).eval()
    evaluator = CocoEvaluator(iou_types=("segm",), max_dets=(1, 10, 300))
    start = time.perf_counter()
    if kind == "streaming":
        metrics = inference_on_dataset(model, loader, evaluator)
    else:  # the loop before issue 11: keep every prediction, then score
        targets, predictions = [], []
        with torch.no_grad():
            for images, batch_targets in loader:
                predictions += model(images)
                targets += batch_targets
        evaluator.process(targets, predictions)
        metrics = evaluator.compute()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": time.perf_counter() - start,
        "peak_mib": peak_mib,
        "segm_AP50": metrics["coco/segm_AP50"],
    }


def measure(kind: str, n: int, size: int, masks: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--n",
        str(n),
        "--size",
        str(size),
        "--masks",
        str(masks),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--masks", type=int, default=300)
    parser.add_argument("--n-small", type=int, default=50, help="images of the flatness check (vs --n)")
    parser.add_argument(
        "--baseline-n", type=int, nargs=2, default=[2, 4], help="images for the baseline's slope"
    )
    parser.add_argument("--child", choices=["gather", "streaming"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_loop(args.child, args.n, args.size, args.masks)))
        return
    small, large = (measure("gather", k, args.size, args.masks) for k in args.baseline_n)
    slope = (large["peak_mib"] - small["peak_mib"]) / (args.baseline_n[1] - args.baseline_n[0])
    extrapolated = large["peak_mib"] + slope * (args.n - args.baseline_n[1])
    streaming = measure("streaming", args.n, args.size, args.masks)
    streaming_small = measure("streaming", args.n_small, args.size, args.masks)
    print(
        f"{args.n} images of {args.size} x {args.size}, {args.masks} predicted + {args.masks} true masks each"
    )
    print("| loop | images | peak RSS (MiB) | seconds | segm AP50 |")
    print("|---|---|---|---|---|")
    for name, k, result in (
        ("gather (baseline)", args.baseline_n[0], small),
        ("gather (baseline)", args.baseline_n[1], large),
        ("streaming", args.n_small, streaming_small),
        ("streaming", args.n, streaming),
    ):
        print(
            f"| {name} | {k} | {result['peak_mib']:.0f} | {result['seconds']:.1f} | {result['segm_AP50']:.4f} |"
        )
    print(
        f"| gather (baseline), extrapolated at {slope:.0f} MiB / image | {args.n} | {extrapolated:.0f} | | |"
    )
    verdict = "met" if streaming["peak_mib"] < 2048 else "NOT met"
    print(
        f"streaming peak {streaming['peak_mib']:.0f} MiB vs the 2 GiB target: {verdict}; "
        f"baseline / streaming at {args.n} images: {extrapolated / streaming['peak_mib']:.0f}x"
    )
    growth = streaming["peak_mib"] / streaming_small["peak_mib"]
    flat = "met" if growth <= 1.10 else "NOT met"
    print(f"streaming peak at {args.n} / at {args.n_small} images: {growth:.3f} (goal <= 1.10): {flat}")
    print(HEADER)
    row(
        f"eval peak RSS, {args.n} images x {args.masks} masks, MiB (baseline: the same loop on {args.n_small})",
        round(streaming["peak_mib"]),
        round(streaming_small["peak_mib"]),
        growth,
        "<= 1.1x (flat in the number of images)",
        growth <= 1.10,
    )
    row(
        f"eval peak RSS, {args.n} images, MiB (baseline: gather-then-score, extrapolated)",
        round(streaming["peak_mib"]),
        round(extrapolated),
        extrapolated / streaming["peak_mib"],
        "< 2,048 MiB",
        streaming["peak_mib"] < 2048,
    )


if __name__ == "__main__":
    main()
