"""Benchmark: dense COCO mask evaluation under LIVECell's protocol, cytobench vs pycocotools vs faster-coco-eval.

The dense case of issue 16: ``--n-images`` (default 200) images of 512 x 512 with ~300 ground-truth cells
(polygons) and ~400 predicted masks (RLE) each, the data of ``bench_eval_cli.py`` (its
``make_dense_case``), scored in memory with LIVECell's parameters: maxDets (100, 500, 2000) and area
ranges small < 18^2, medium 18^2 - 31^2, large > 31^2. Tools, each timed from the in-memory dicts to the
accumulated precision / recall arrays (on fresh deep copies made outside the timer):

1. pycocotools' ``COCOeval`` with those parameters (the baseline; run once, it is slow: ~280 s on 200 images
   of a loaded 2-core machine, so by default it scores the first ``--pycocotools-images`` (40) images and its
   time is scaled to all of them by the image count; its per-image matching and its accumulation are both
   linear in the images. The 12 numbers are compared on that subset, where cytobench scores it too.
   ``--pycocotools-images 0`` runs it on every image and compares the full numbers);
2. faster-coco-eval's ``COCOeval_faster`` used directly with the same parameters;
3. ``cytobench.evaluation.evaluate_coco`` with ``max_dets=LIVECELL_MAX_DETS``,
   ``area_ranges=LIVECELL_AREA_RANGES`` (input validation and copies included).

All three are summarised with the same reduction (``summarize_coco``: AP at maxDets 2000, pycocotools'
``summarize`` would use 100) and must agree to 1e-12 on all 12 numbers. Goal: cytobench >= 10x faster than
pycocotools.

Usage: ``python bench/bench_dense_segm_eval.py [--n-images 200] [--repeats 3] [--seed 0]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from typing import Any

import numpy as np
from bench_coco_eval import timed  # bench/ is on sys.path when a bench runs as a script
from bench_eval_cli import make_dense_case
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from summary import HEADER, row

from cytobench.evaluation import LIVECELL_AREA_RANGES, LIVECELL_MAX_DETS, evaluate_coco, summarize_coco

GOAL = 10.0  # times faster than pycocotools, at least
LABELS = ["all", *LIVECELL_AREA_RANGES]
AREA_RNG = [[0.0, 1e5**2], *[list(r) for r in LIVECELL_AREA_RANGES.values()]]


def _configure(params: Any) -> None:
    params.maxDets = list(LIVECELL_MAX_DETS)
    params.areaRng = [list(r) for r in AREA_RNG]
    params.areaRngLbl = list(LABELS)


def _stats(ev: Any) -> dict[str, float]:
    arrays = {
        "precision": np.asarray(ev.eval["precision"]),
        "recall": np.asarray(ev.eval["recall"]),
        "iou_thrs": np.asarray(ev.params.iouThrs),
        "area_labels": LABELS,
        "max_dets": list(LIVECELL_MAX_DETS),
    }
    return summarize_coco(arrays, "segm")


def run_pycocotools(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "segm")
        _configure(ev.params)
        ev.evaluate()
        ev.accumulate()
    return _stats(ev)


def run_faster(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    quiet = lambda *a, **k: None  # noqa: E731
    coco_gt = FasterCOCO(gt, print_function=quiet)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "segm", print_function=quiet)
    _configure(ev.params)
    ev.evaluate()
    ev.accumulate()
    return _stats(ev)


def run_cytobench(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    return evaluate_coco(gt, results, "segm", LIVECELL_MAX_DETS, LIVECELL_AREA_RANGES)


def first_images(
    gt: dict[str, Any], results: list[dict[str, Any]], k: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Deep copies of the ground truth and results of the first ``k`` images."""
    import copy

    ids = {img["id"] for img in gt["images"][:k]}
    sub_gt = {
        **gt,
        "images": gt["images"][:k],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
    }
    return copy.deepcopy(sub_gt), copy.deepcopy([r for r in results if r["image_id"] in ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of faster-coco-eval and cytobench (median)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pycocotools-images",
        type=int,
        default=40,
        help="images pycocotools scores (its time scaled to --n-images); 0: all of them",
    )
    args = parser.parse_args()

    start = time.perf_counter()
    gt, results = make_dense_case(args.n_images, np.random.default_rng(args.seed))
    print(
        f"{args.n_images} images 512x512, {len(gt['annotations'])} cells, {len(results)} predicted masks "
        f"(made in {time.perf_counter() - start:.1f} s); maxDets {list(LIVECELL_MAX_DETS)}, LIVECell area ranges"
    )
    warm_gt, warm_res = make_dense_case(2, np.random.default_rng(1))  # imports and first-call costs
    for fn in (run_pycocotools, run_faster, run_cytobench):
        timed(fn, warm_gt, warm_res, repeats=1)

    t_fast, fast = timed(run_faster, gt, results, repeats=args.repeats)
    t_ours, ours = timed(run_cytobench, gt, results, repeats=args.repeats)
    k = args.pycocotools_images if 0 < args.pycocotools_images < args.n_images else args.n_images
    if k < args.n_images:  # the baseline on the first k images, scaled to all; the numbers compared there
        sub_gt, sub_res = first_images(gt, results, k)
        t_py_k, ref = timed(run_pycocotools, sub_gt, sub_res, repeats=1)
        t_py = t_py_k * args.n_images / k
        fast, ours = run_faster(*first_images(gt, results, k)), run_cytobench(*first_images(gt, results, k))
        print(f"pycocotools on the first {k} images: {t_py_k:.2f} s, scaled to {args.n_images}: {t_py:.2f} s")
    else:
        t_py, ref = timed(run_pycocotools, gt, results, repeats=1)

    keys = list(ref)
    ref_arr = np.array([ref[k] for k in keys])
    diffs = {
        name: float(np.nanmax(np.abs(np.array([out[k] for k in keys]) - ref_arr)))
        for name, out in (("faster-coco-eval", fast), ("cytobench", ours))
    }
    same_nan = all(
        np.array_equal(np.isnan([out[k] for k in keys]), np.isnan(ref_arr)) for out in (fast, ours)
    )
    print()
    print(f"{'tool':<18} {'s':>9} {'vs pycocotools':>15} {'max |diff|':>11}")
    print(f"{'pycocotools':<18} {t_py:>9.2f} {1.0:>14.1f}x {0.0:>11.1e}")
    print(
        f"{'faster-coco-eval':<18} {t_fast:>9.2f} {t_py / t_fast:>14.1f}x {diffs['faster-coco-eval']:>11.1e}"
    )
    print(f"{'cytobench':<18} {t_ours:>9.2f} {t_py / t_ours:>14.1f}x {diffs['cytobench']:>11.1e}")
    print("pycocotools:", {key: round(v, 4) for key, v in ref.items()})
    print("cytobench:  ", {key: round(v, 4) for key, v in ours.items()})
    same = same_nan and max(diffs.values()) <= 1e-12
    print()
    print(HEADER)
    measure = f"dense COCO segm eval (LIVECell protocol), {args.n_images} images x ~300 cells x ~400 masks, s"
    scaled = f", scaled from {k} images" if k < args.n_images else ""
    row(
        f"{measure} (baseline: pycocotools{scaled})",
        round(t_ours, 2),
        round(t_py, 2),
        t_py / t_ours,
        f">= {GOAL:g}x pycocotools, same 12 numbers",
        same and t_py / t_ours >= GOAL,
    )
    row(
        f"{measure} (baseline: faster-coco-eval)",
        round(t_ours, 2),
        round(t_fast, 2),
        t_ours / t_fast,
        "report (faster-coco-eval underneath), same 12 numbers",
        same,
    )
    if not same:
        raise SystemExit(f"numbers differ from pycocotools: {diffs}")


if __name__ == "__main__":
    main()
