"""Benchmark: SEU-Net sliding-window inference on one 1080 x 1080 brightfield image (thesis: 512 px windows,
256 px overlap, probabilities averaged).

Compared in the same run against a named baseline, the straightforward loop: each window run alone (batch 1)
and accumulated one at a time into a sum canvas and a count canvas. Ours
(:func:`cytobench.models.seunet.sliding.sliding_window_inference`, the path ``SEUNet`` takes in eval mode)
runs the windows in batches of ``--batch-size`` and divides by one precomputed coverage map. Both must give the
same probabilities (checked). On the CPU, batched convolutions cost more CPU time than windows one at a time
(1.4x here with 4 windows of 512 px), so SEU-Net's default there is one window per pass and the claim is parity
(the coverage map instead of a count canvas); on a GPU the batched windows fill the device (``--device cuda``).

Usage: ``python bench/bench_seunet_sliding.py [--size 1080] [--width 16] [--depth 4] [--heads cytoplasm]
[--batch-size N] [--repeats 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

from cytobench.models.seunet import build_seunet
from cytobench.models.seunet.sliding import sliding_window_inference, window_starts


def per_window_loop(forward, image: torch.Tensor, window: int, overlap: int) -> torch.Tensor:
    """The baseline: every window alone, its output and a count of ones added to two canvases."""
    height, width = image.shape[-2:]
    total = count = None
    for y in window_starts(height, window, overlap):
        for x in window_starts(width, window, overlap):
            out = forward(image[None, :, y : y + window, x : x + window])[0]
            if total is None:
                total = out.new_zeros((out.shape[0], height, width))
                count = out.new_zeros((height, width))
            total[:, y : y + window, x : x + window] += out
            count[y : y + window, x : x + window] += 1
    return total / count


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``repeats`` calls (after a warm-up on CUDA) and the last result.

    CPU seconds (this process, all threads) are robust to other processes sharing the cores.
    """
    if device.type == "cuda":
        fn()
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return sorted(wall)[len(wall) // 2], sorted(cpu)[len(cpu) // 2], out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1080, help="image side in px")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=256)
    parser.add_argument("--width", type=int, default=16, help="SEU-Net width (32 is the config default)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", nargs="+", default=["cytoplasm"])
    parser.add_argument("--decoder", default="shared")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="windows per forward pass (ours); default: SEU-Net's"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch_size = args.batch_size or (1 if device.type == "cpu" else 4)  # SEU-Net's default
    torch.manual_seed(0)
    model = build_seunet(
        heads=args.heads,
        decoder=args.decoder,
        width=args.width,
        depth=args.depth,
        window=args.window,
        window_overlap=args.overlap,
        window_batch_size=args.batch_size,
    )
    model = model.to(device).eval()
    image = torch.rand(2, args.size, args.size, device=device)
    normed = model.normalize(image)
    n_windows = len(window_starts(args.size, args.window, args.overlap)) ** 2
    print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads")
    print(
        f"SEU-Net width {args.width}, depth {args.depth}, heads {args.heads} ({args.decoder}); image "
        f"{args.size} x {args.size}: {n_windows} windows of {args.window} px, overlap {args.overlap}, "
        f"{batch_size} per pass"
    )
    with torch.no_grad():
        forward = model._window_probabilities
        base_s, base_cpu, base = timed(
            lambda: per_window_loop(forward, normed, args.window, args.overlap), args.repeats, device
        )
        ours_s, ours_cpu, ours = timed(
            lambda: sliding_window_inference(forward, normed, args.window, args.overlap, batch_size),
            args.repeats,
            device,
        )
        model_s, _, via_model = timed(lambda: model([image])[0]["maps"], args.repeats, device)
    diff = float((ours - base).abs().max())
    model_diff = max(float((via_model[h] - ours[i]).abs().max()) for i, h in enumerate(model.heads))
    print(
        f"per-window loop: {base_s:.2f} s ({base_cpu:.2f} CPU-s); batched (ours): {ours_s:.2f} s "
        f"({ours_cpu:.2f} CPU-s); model(images) end to end: {model_s:.2f} s"
    )
    print(f"max |ours - loop| = {diff:.2e}; max |model - ours| = {model_diff:.2e}")
    print(f"load average (1 min) during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(HEADER)
    equal = diff < 1e-4 and model_diff < 1e-4
    # on a shared CPU, CPU seconds are the robust measure; on a GPU, wall-clock time
    on_cpu = device.type == "cpu"
    ours_t, base_t = (ours_cpu, base_cpu) if on_cpu else (ours_s, base_s)
    row(
        f"SEU-Net sliding windows, {'CPU-s' if on_cpu else 's'} per {args.size} px image ({device.type}, "
        f"width {args.width}; baseline: per-window loop)",
        round(ours_t, 3),
        round(base_t, 3),
        base_t / ours_t,
        "same maps, >= 0.9x the loop" if on_cpu else "same maps, faster than the loop",
        equal and base_t / ours_t >= (0.9 if on_cpu else 1.0),
    )


if __name__ == "__main__":
    main()
