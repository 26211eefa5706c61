"""Benchmark: all DeepACEv2 enumeration metrics on a test-set-sized problem.

275 images x 46 ground-truth boxes (a human metaphase), ~55 detections per image (hits,
duplicates, mislocalised and spurious boxes). Times ``enumeration_metrics`` (and the
``EnumerationEvaluator`` fed with torch tensors) against a named baseline in the same run:
a straightforward per-pair Python-loop implementation of the same rules. Goal: < 50 ms (median of
``--repeats`` calls), with the loop's numbers; one summary row (bench/summary.py).

Usage: ``python bench/bench_enumeration.py [--images 275] [--repeats 20]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

from cytobench.evaluation import EnumerationEvaluator, enumeration_metrics

GOAL_MS = 50.0


def make_problem(
    n_images: int, n_gt: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Random metaphase-like boxes: 46 elongated boxes per 1000 x 1000 image, some overlapping."""
    gts, dets, scores = [], [], []
    for _ in range(n_images):
        xy = rng.uniform(0, 900, (n_gt, 2))
        wh = rng.uniform(15, 90, (n_gt, 2))
        g = np.concatenate([xy, xy + wh], 1)
        hit = g[rng.uniform(size=n_gt) < 0.97] + rng.normal(0, 2.0, (1, 4))
        dup = g[rng.integers(0, n_gt, 4)] + rng.normal(0, 6.0, (4, 4))
        off = g[rng.integers(0, n_gt, 3)] + rng.normal(0, 25.0, (3, 4))
        p = rng.uniform(0, 950, (3, 2))
        spurious = np.concatenate([p, p + rng.uniform(10, 50, (3, 2))], 1)
        d = np.concatenate([hit, dup, off, spurious])
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        s = np.concatenate([rng.uniform(0.6, 1.0, len(hit)), rng.uniform(0.05, 0.7, len(d) - len(hit))])
        gts.append(g)
        dets.append(d)
        scores.append(s)
    return gts, dets, scores


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def loop_baseline(
    gts: list[np.ndarray], dets: list[np.ndarray], scores: list[np.ndarray], thr: float = 0.5
) -> dict[str, float]:
    """The same rules written as nested Python loops over box pairs (the baseline)."""
    ranked: list[tuple[float, int, bool]] = []
    tp_sum = fp_sum = fn_sum = correct = 0
    n_gt_total = 0
    for k, (g_arr, d_arr, s_arr) in enumerate(zip(gts, dets, scores)):
        g, d, s = g_arr.tolist(), d_arr.tolist(), s_arr.tolist()
        n_gt_total += len(g)
        assigned = []
        for box in d:
            best, best_iou = -1, -1.0
            for j, gbox in enumerate(g):
                v = _iou(box, gbox)
                if v > best_iou:
                    best, best_iou = j, v
            assigned.append(best if best_iou >= 0.5 else -1)
        order = sorted(range(len(d)), key=lambda i: -s[i])
        taken: set[int] = set()
        tp = [False] * len(d)
        for i in order:
            if assigned[i] >= 0 and assigned[i] not in taken:
                taken.add(assigned[i])
                tp[i] = True
        for i in range(len(d)):
            ranked.append((s[i], k, tp[i]))
        n_tp = sum(1 for i in range(len(d)) if tp[i] and s[i] >= thr)
        n_fp = sum(1 for i in range(len(d)) if not tp[i] and s[i] >= thr)
        tp_sum, fp_sum, fn_sum = tp_sum + n_tp, fp_sum + n_fp, fn_sum + len(g) - n_tp
        correct += n_fp == 0 and len(g) == n_tp
    ranked.sort(key=lambda r: -r[0])  # stable
    cum_tp = cum_fp = 0
    rec, prec, fppi = [], [], []
    for _, _, is_tp in ranked:
        cum_tp += is_tp
        cum_fp += not is_tp
        rec.append(cum_tp / n_gt_total)
        prec.append(cum_tp / (cum_tp + cum_fp))
        fppi.append(cum_fp / len(gts))
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])
    logs = []
    for ref in np.logspace(-2.0, 0.0, 9).tolist():
        idx = [i for i, f in enumerate(fppi) if f <= ref]
        logs.append(math.log(max(1.0 - rec[idx[-1]] if idx else 1.0, 1e-10)))
    return {
        "wcr": correct / len(gts),
        "aer": (fp_sum + fn_sum) / (tp_sum + fn_sum),
        "acc": tp_sum / (tp_sum + fp_sum + fn_sum),
        "map": ap,
        "mr2": math.exp(sum(logs) / len(logs)),
    }


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=275)
    parser.add_argument("--gt-per-image", type=int, default=46)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gts, dets, scores = make_problem(args.images, args.gt_per_image, np.random.default_rng(args.seed))
    n_det = sum(len(d) for d in dets)
    ours = enumeration_metrics(gts, dets, scores)
    base = loop_baseline(gts, dets, scores)
    same = all(math.isclose(ours[k], v, rel_tol=1e-12, abs_tol=1e-12) for k, v in base.items())

    targets = [{"boxes": torch.from_numpy(g), "labels": torch.ones(len(g), dtype=torch.int64), "image_id": i}
               for i, g in enumerate(gts)]  # fmt: skip
    preds = [{"boxes": torch.from_numpy(d), "scores": torch.from_numpy(s), "labels": torch.ones(len(d))}
             for d, s in zip(dets, scores)]  # fmt: skip

    def run_evaluator() -> dict[str, float]:
        evaluator = EnumerationEvaluator()
        for i in range(0, len(targets), 8):
            evaluator.process(targets[i : i + 8], preds[i : i + 8])
        return evaluator.compute()

    t_ours = median_ms(lambda: enumeration_metrics(gts, dets, scores), args.repeats)
    t_eval = median_ms(run_evaluator, args.repeats)
    t_base = median_ms(lambda: loop_baseline(gts, dets, scores), max(3, args.repeats // 5))

    print(
        f"{args.images} images, {args.gt_per_image} gt boxes each, {n_det} detections ({n_det / args.images:.1f}/image)"
    )
    print(f"metrics: wcr={ours['wcr']:.4f} aer={ours['aer']:.4f} acc={ours['acc']:.4f} f1={ours['f1']:.4f} "
          f"map={ours['map']:.4f} mr2={ours['mr2']:.4f} overlap_n={ours['overlap_n']:.0f}")  # fmt: skip
    print(f"same numbers as the loop baseline (wcr, aer, acc, map, mr2): {same}")
    print()
    print(f"{'implementation':<52} {'median ms':>10} {'vs baseline':>12}")
    print(f"{'baseline: per-pair Python loops':<52} {t_base:>10.1f} {1.0:>11.1f}x")
    print(f"{'cytobench enumeration_metrics (all metrics)':<52} {t_ours:>10.1f} {t_base / t_ours:>11.1f}x")
    print(
        f"{'cytobench EnumerationEvaluator (torch in, batches 8)':<52} {t_eval:>10.1f} {t_base / t_eval:>11.1f}x"
    )
    print(
        f"goal < {GOAL_MS:.0f} ms for all metrics: {'met' if t_ours < GOAL_MS else 'MISSED'} ({t_ours:.1f} ms)"
    )
    print(HEADER)
    row(
        f"enumeration metrics, {args.images} images x {args.gt_per_image} boxes, ms (baseline: per-pair loops)",
        round(t_ours, 1),
        round(t_base, 1),
        t_base / t_ours,
        f"< {GOAL_MS:.0f} ms, the loop's numbers",
        t_ours < GOAL_MS and same,
    )
    if not same:
        raise SystemExit("metrics differ from the baseline")


if __name__ == "__main__":
    main()
