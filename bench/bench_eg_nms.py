"""Benchmark: vectorised Embedding-Guided NMS against the paper's per-pair loop (Algorithm 1).

Chromosome-like candidate sets: 46 elongated ground-truth boxes in a 1000 x 1000 metaphase, each
with several jittered proposals, scores in (0, 1) and 1-d embeddings clustered per chromosome (as a
trained Template Module would give). The named baseline, run in the same process, is
``embedding_guided_nms_reference``: Algorithm 1 as a Python loop over box pairs. Also timed: Gaussian
Soft-NMS and EG-NMS capped at the paper's 100 final detections (``max_keep=100``).

Usage: ``python bench/bench_eg_nms.py [--sizes 300 1000] [--repeats 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from cytobench.ops import embedding_guided_nms, embedding_guided_nms_reference, soft_nms

N_CHROMOSOMES = 46


def make_candidates(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` proposals around 46 chromosome boxes: (n, 4) xyxy float32, (n,) scores, (n,) embeddings."""
    xy = torch.rand(N_CHROMOSOMES, 2, generator=generator) * 900
    long_side = 30 + torch.rand(N_CHROMOSOMES, generator=generator) * 90
    short_side = 10 + torch.rand(N_CHROMOSOMES, generator=generator) * 15
    vertical = torch.rand(N_CHROMOSOMES, generator=generator) < 0.5
    wh = torch.stack(
        [torch.where(vertical, short_side, long_side), torch.where(vertical, long_side, short_side)], 1
    )
    gt = torch.cat([xy, xy + wh], 1)
    owner = torch.arange(n) % N_CHROMOSOMES
    jitter = torch.randn(n, 4, generator=generator) * 0.08 * wh[owner].repeat(1, 2)
    boxes = gt[owner] + jitter
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    scores = torch.rand(n, generator=generator) * 0.9 + 0.05
    centres = torch.rand(N_CHROMOSOMES, generator=generator) * 4
    embeddings = centres[owner] + torch.randn(n, generator=generator) * 0.05
    return boxes, scores, embeddings


def median_ms(repeats: int, fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Median wall time of ``fn(*args, **kwargs)`` in milliseconds, after one warm-up call."""
    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    header = (
        f"{'N':>6} {'loop (ms)':>11} {'EG-NMS (ms)':>12} {'speed-up':>9} {'EG top-100':>11} "
        f"{'Soft-NMS':>9} {'same order':>10} {'max |ds|':>9}"
    )
    print(f"EG-NMS, torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        boxes, scores, emb = make_candidates(n, torch.Generator().manual_seed(n))
        keep, new = embedding_guided_nms(boxes, scores, emb)
        keep_ref, new_ref = embedding_guided_nms_reference(boxes, scores, emb)
        same = keep.tolist() == keep_ref.tolist()
        err = float((new.double() - new_ref.double()).abs().max()) if same else float("nan")
        problem = (boxes, scores, emb)
        t_ref = median_ms(max(1, args.repeats // 2), embedding_guided_nms_reference, *problem)
        t_vec = median_ms(args.repeats, embedding_guided_nms, *problem)
        t_top = median_ms(args.repeats, embedding_guided_nms, *problem, max_keep=100)
        t_soft = median_ms(args.repeats, soft_nms, boxes, scores)
        print(
            f"{n:>6} {t_ref:>11.1f} {t_vec:>12.2f} {t_ref / t_vec:>8.0f}x {t_top:>11.2f} "
            f"{t_soft:>9.2f} {str(same):>10} {err:>9.1e}"
        )


if __name__ == "__main__":
    main()
