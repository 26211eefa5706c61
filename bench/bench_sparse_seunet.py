"""Benchmark: SparseSEU-Net on the CPU at 512 x 512: inference speed against Mask R-CNN, and the peak memory
of training steps at the thesis' setting (N = 100 predictions, batch 2).

**Claim 1 (report): inference images/s.** Ours: ``conf/model/sparse_seunet.yaml``'s model (SEU-Net depth 4,
width 32, N = 100, branches of 64 channels, single-level; ``--aggregation multi`` for the other variant) in
eval mode on one 2-plane 512 x 512 image per call, post-processing included (scores, binarised masks, boxes).
Baseline, timed in the same run on the same images: torchvision's ``maskrcnn_resnet50_fpn`` with random
weights (nothing downloaded), two classes, ``box_detections_per_img`` raised to 500 for dense images, its
transform fixed at 512 px (``min_size = max_size = 512``, so it does not upscale to 800) and the two planes
plus their mean as its three channels. With random weights Mask R-CNN's class scores hover near 0.5, so it
keeps up to 500 boxes and runs its mask head on all of them: the cost of a dense image (the number of
detections is printed). ``--repeats`` calls each, alternating, after one warm-up call; the median wall time
counts. Torch uses its default threads (``--threads`` sets them).

**Claim 2: peak RSS of SparseSEU-Net training at 512 px, N = 100, batch 2, within 24 GiB** (the thesis needed
28 GB on a GPU at this setting and added gradient accumulation). A fresh process builds the model and an Adam
optimiser, makes a batch of two images with ``--cells`` random overlapping elliptical cells each (amodal
masks, so the matching and the mask losses have real work), runs ``--steps`` full training steps (forward,
matching, losses, backward, Adam) and reports its peak RSS (``VmHWM``), its RSS before the first step and
the seconds per step. What keeps it small: the Hungarian matching runs without gradient; the mask losses
are computed only on the matched masks (K <= N) of each image's own extent; the instance features are
``(A I^T) / sum(A)`` so the normalised maps ``A'`` are never stored for backward; the branches have 64
channels (the thesis' 256 is ``--branch-channels 256``).

Usage: ``python bench/bench_sparse_seunet.py [--size 512] [--repeats 5] [--steps 2] [--batch 2] [--cells 60]
[--num-instances 100] [--branch-channels 64] [--aggregation single] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

ROOT = Path(__file__).resolve().parents[1]
GOAL_GIB = 24.0
THESIS_GPU_GB = 28.0


def _rss_gib() -> float:
    """Peak RSS of this process so far, GiB: ``VmHWM`` of ``/proc/self/status`` where there is one (it starts
    afresh at ``exec``; ``ru_maxrss`` can carry the high-water mark of the process that forked the child),
    else ``ru_maxrss`` (Linux reports KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_ours(args: argparse.Namespace) -> Any:
    """The config's SparseSEU-Net (``conf/model/sparse_seunet.yaml``) with the bench's overrides."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.load(ROOT / "conf" / "model" / "sparse_seunet.yaml")
    config.num_instances = args.num_instances
    config.branch_channels = config.kernel_dim = args.branch_channels
    config.aggregation = args.aggregation
    torch.manual_seed(0)
    return instantiate(config, num_classes=2)


def random_cells(size: int, count: int, seed: int) -> Any:
    """(count, size, size) uint8 elliptical cell masks (radii 12-40 px, random angles; they overlap)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    masks = np.zeros((count, size, size), dtype=np.uint8)
    for k in range(count):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(12, 40, 2)
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
        masks[k] = (u / rx) ** 2 + (v / ry) ** 2 <= 1
    return torch.from_numpy(masks)


# ------------------------------------------------------------------------------------------ claim 2
def child(args: argparse.Namespace) -> None:
    """``--steps`` training steps; prints ``{"before_gib", "peak_gib", "seconds"}`` (seconds per step) as json."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_ours(args).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, args.size, args.size, generator=g) for _ in range(args.batch)]
    targets = []
    for i in range(args.batch):
        amodal = random_cells(args.size, args.cells, seed=i)
        targets.append({"amodal_masks": amodal, "labels": torch.ones(len(amodal), dtype=torch.int64)})
    before = _rss_gib()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"before_gib": before, "peak_gib": _rss_gib(), "seconds": statistics.median(times)}))


def training_memory(args: argparse.Namespace) -> dict[str, float]:
    """Run :func:`child` in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        *("--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)),
        *("--cells", str(args.cells), "--num-instances", str(args.num_instances)),
        *("--branch-channels", str(args.branch_channels), "--aggregation", args.aggregation),
        *("--threads", str(args.threads)),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ claim 1
def inference_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds per 512 px image of ours and of Mask R-CNN, alternating, and Mask R-CNN's detections."""
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    if args.threads:
        torch.set_num_threads(args.threads)
    ours = build_ours(args).eval()
    ours.score_threshold = 0.0  # keep all N: random weights score below the default 0.05
    torch.manual_seed(0)
    baseline = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=2,
        box_detections_per_img=500,
        min_size=args.size,
        max_size=args.size,
    ).eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, args.size, args.size, generator=g) for _ in range(args.repeats + 1)]
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    detections = {"ours": [], "baseline": []}
    with torch.inference_mode():
        for i, image in enumerate(images):
            rgb = torch.cat([image, image.mean(0, keepdim=True)])
            for name, model, inputs in (("ours", ours, [image]), ("baseline", baseline, [rgb])):
                start = time.perf_counter()
                pred = model(inputs)[0]
                elapsed = time.perf_counter() - start
                if i:  # the first image warms up
                    times[name].append(elapsed)
                    detections[name].append(len(pred["scores"]))
    return {
        "ours_s": statistics.median(times["ours"]),
        "baseline_s": statistics.median(times["baseline"]),
        "ours_detections": statistics.median(detections["ours"]),
        "baseline_detections": statistics.median(detections["baseline"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="timed inference calls per model")
    parser.add_argument("--steps", type=int, default=2, help="training steps in the memory child")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cells", type=int, default=60, help="cells per training image")
    parser.add_argument("--num-instances", type=int, default=100)
    parser.add_argument("--branch-channels", type=int, default=64)
    parser.add_argument("--aggregation", default="single", choices=["single", "multi"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory claim")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    setting = (
        f"{args.size} px, N = {args.num_instances}, branches {args.branch_channels} ch, "
        f"{args.aggregation}-level"
    )
    memory = training_memory(args)  # first, while this process is small
    speed = None
    if not args.skip_speed:
        speed = inference_speed(args)
        print(
            f"inference ({setting}), median of {args.repeats}: SparseSEU-Net {speed['ours_s']:.2f} s/image "
            f"({speed['ours_detections']:g} instances kept), Mask R-CNN R50-FPN {speed['baseline_s']:.2f} s/image "
            f"({speed['baseline_detections']:g} detections)"
        )
    print(
        f"training, batch {args.batch} x {args.cells} cells ({setting}): peak RSS {memory['peak_gib']:.2f} GiB "
        f"(before the first step {memory['before_gib']:.2f} GiB), {memory['seconds']:.1f} s/step over "
        f"{args.steps} steps; thesis: {THESIS_GPU_GB:g} GB on a GPU"
    )
    print(HEADER)
    if speed is not None:
        ours_ips, base_ips = 1.0 / speed["ours_s"], 1.0 / speed["baseline_s"]
        row(
            f"SparseSEU-Net inference, CPU images/s ({setting}; baseline: Mask R-CNN R50-FPN, random init, "
            f"500 dets)",
            round(ours_ips, 3),
            round(base_ips, 3),
            ours_ips / base_ips,
            "report",
            True,
        )
    row(
        f"SparseSEU-Net training peak RSS, GiB (CPU, batch {args.batch}, {setting}; baseline: the "
        f"{GOAL_GIB:g} GiB goal)",
        round(memory["peak_gib"], 2),
        GOAL_GIB,
        memory["peak_gib"] / GOAL_GIB,
        f"< {GOAL_GIB:g} GiB",
        memory["peak_gib"] < GOAL_GIB,
    )


if __name__ == "__main__":
    main()
