"""Benchmark: peak memory of one SEU-Net training step (forward + backward + Adam step) at 512 x 512, batch 4.

Each configuration runs in a fresh process that reports its peak RSS (``ru_maxrss``) and the seconds of the
step; the process's RSS just before the step (model, optimizer and batch built, torch loaded) is reported
beside it. Rows: the 4-head model with decoupled decoders (the claim: it fits a 16 GiB machine, i.e. peak
RSS under 8 GiB at the bench's width), against the base model (one head, one decoder) as the named baseline:
the cost of the three extra decoders. With ``--device cuda`` the peak is ``torch.cuda.max_memory_allocated``.

Usage: ``python bench/bench_seunet_memory.py [--size 512] [--batch 4] [--width 16] [--depth 4] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

GOAL_GIB = 8.0
FOUR_HEAD = ["cytoplasm", "nuclei", "border", "background"]


def _rss_gib() -> float:
    """Peak RSS of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(args: argparse.Namespace) -> None:
    """One training step; prints ``{"before_gib", "peak_gib", "seconds"}`` as json."""
    import torch

    from cytobench.models.seunet import build_seunet

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_seunet(heads=args.heads, decoder=args.decoder, width=args.width, depth=args.depth).to(
        device
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, args.size, args.size, generator=g).to(device) for _ in range(args.batch)]
    targets = [
        {"semantic": torch.randint(0, 4, (args.size, args.size), generator=g).to(device)}
        for _ in range(args.batch)
    ]
    model.train()
    before = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else _rss_gib()
    start = time.perf_counter()
    loss = sum(model(images, targets).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else _rss_gib()
    print(json.dumps({"before_gib": before, "peak_gib": peak, "seconds": seconds}))


def measure(args: argparse.Namespace, heads: list[str], decoder: str) -> dict[str, float]:
    """Run :func:`child` for one configuration in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        *("--size", str(args.size), "--batch", str(args.batch), "--width", str(args.width)),
        *("--depth", str(args.depth), "--device", args.device, "--decoder", decoder, "--heads", *heads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=16, help="SEU-Net width (32 is the config default)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--heads", nargs="+", default=FOUR_HEAD, help=argparse.SUPPRESS)
    parser.add_argument("--decoder", default="decoupled", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    what = "peak CUDA memory" if args.device.startswith("cuda") else "peak RSS"
    print(
        f"one training step, batch {args.batch} x 2 planes x {args.size} x {args.size}, width {args.width}, depth {args.depth}"
    )
    four = measure(args, FOUR_HEAD, "decoupled")
    base = measure(args, ["cytoplasm"], "shared")
    for name, result in (("4-head, decoupled", four), ("base (1 head)", base)):
        print(
            f"{name}: {what} {result['peak_gib']:.2f} GiB (before the step {result['before_gib']:.2f} GiB), "
            f"step {result['seconds']:.1f} s"
        )
    print(HEADER)
    row(
        f"SEU-Net 4-head training step, {what} GiB ({args.device}, {args.size} px, batch {args.batch}, width "
        f"{args.width}; baseline: base model)",
        round(four["peak_gib"], 2),
        round(base["peak_gib"], 2),
        base["peak_gib"] / four["peak_gib"],
        f"< {GOAL_GIB:g} GiB",
        four["peak_gib"] < GOAL_GIB,
    )


if __name__ == "__main__":
    main()
