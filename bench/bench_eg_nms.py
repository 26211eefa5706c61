"""Benchmark: Embedding-Guided NMS and Soft-NMS against the paper's per-pair loop (Algorithm 1).

Chromosome-like candidate sets: 46 elongated ground-truth boxes in a 1000 x 1000 metaphase, each
with several jittered proposals, scores in (0, 1) and 1-d embeddings clustered per chromosome (as a
trained Template Module would give). The named baseline, run in the same process, is
``embedding_guided_nms_reference``: Algorithm 1 as a Python loop over box pairs. Also timed: Gaussian
Soft-NMS and EG-NMS capped at the paper's 100 final detections (``max_keep=100``).

Also the Soft-NMS case (the loop with equal embeddings is Gaussian Soft-NMS) and torchvision's hard
NMS as the speed floor (``vs tv NMS`` = how many times slower than hard NMS). ``same as loop``: the kept
indices equal the loop's and the decayed scores agree within ``SCORE_TOL`` (the fast versions compute
in the scores' dtype, float32 here; the loop in Python floats). Goal: >= 20x the loop at N = 300, 1,000
and 2,000 for both; one summary row (bench/summary.py) per N and method.

Usage: ``python bench/bench_eg_nms.py [--sizes 300 1000 2000] [--repeats 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script
from torchvision.ops import boxes as box_ops

from cytobench.ops import embedding_guided_nms, embedding_guided_nms_reference, soft_nms

N_CHROMOSOMES = 46
GOAL = 20.0  # times faster than the loop
SCORE_TOL = 1e-6  # float32 scores against the loop's float64


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
    """Median CPU time of this process for ``fn(*args, **kwargs)`` in milliseconds, after one warm-up.

    CPU time rather than wall time: with one torch thread it is the work done, and other processes
    sharing the cores (a training run, CI) do not inflate it.
    """
    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn(*args, **kwargs)
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 2000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"EG-NMS / Soft-NMS, torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of {args.repeats}"
    )
    print(
        "baselines in the same run: the literal per-pair loop of Algorithm 1 and torchvision's hard NMS (IoU 0.5)"
    )
    header = f"{'N':>6} {'method':<26} {'CPU ms':>10} {'vs loop':>9} {'vs tv NMS':>10} {'same as loop':>13} {'max |ds|':>9}"
    print(header)
    print("-" * len(header))
    summary: list[tuple[str, float, float, float, bool]] = []
    for n in args.sizes:
        boxes, scores, emb = make_candidates(n, torch.Generator().manual_seed(n))
        loop_repeats = max(1, args.repeats // 2)
        t_tv = median_ms(args.repeats, box_ops.nms, boxes, scores, 0.5)
        # (name, fast call, the literal loop it must equal: embeddings for Algorithm 1, None = Soft)
        cases = [
            ("EG-NMS", partial(embedding_guided_nms, boxes, scores, emb), emb),
            ("EG-NMS, top 100 kept", partial(embedding_guided_nms, boxes, scores, emb, max_keep=100), None),
            ("Soft-NMS", partial(soft_nms, boxes, scores), None),
        ]
        for name, fn, loop_emb in cases:
            t = median_ms(args.repeats, fn)
            same, err, ratio = "-", float("nan"), f"{'-':>9}"
            if "top 100" not in name:
                keep, new = fn()
                keep_ref, new_ref = embedding_guided_nms_reference(boxes, scores, loop_emb)
                identical = keep.tolist() == keep_ref.tolist()
                if identical:
                    err = float((new.double() - new_ref.double()).abs().max())
                    identical = err <= SCORE_TOL
                same = str(identical)
                t_loop = median_ms(loop_repeats, embedding_guided_nms_reference, boxes, scores, loop_emb)
                loop_name = "loop (Algorithm 1)" if loop_emb is not None else "loop (Soft-NMS)"
                print(f"{n:>6} {loop_name:<26} {t_loop:>10.1f}")
                ratio = f"{t_loop / t:>8.0f}x"
                summary.append(
                    (
                        f"{name}, N = {n}, CPU ms (baseline: the literal loop)",
                        t,
                        t_loop,
                        t_loop / t,
                        identical,
                    )
                )
            print(f"{n:>6} {name:<26} {t:>10.2f} {ratio} {t / t_tv:>9.1f}x {same:>13} {err:>9.1e}")
        print(f"{n:>6} {'torchvision hard NMS':<26} {t_tv:>10.2f}")
    print(HEADER)
    for measure, t, t_loop, ratio, identical in summary:
        goal = f">= {GOAL:.0f}x the loop, same kept indices, scores within {SCORE_TOL:g}"
        row(measure, round(t, 2), round(t_loop, 1), ratio, goal, ratio >= GOAL and identical)


if __name__ == "__main__":
    main()
