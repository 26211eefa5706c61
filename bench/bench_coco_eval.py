"""Benchmark: cytobench ``evaluate_coco`` against pycocotools (baseline) and faster-coco-eval.

A randomised 2-class set (default 5,000 images, polygon ground truth, RLE results) is
evaluated for bbox and segm by (1) pycocotools' COCOeval, the baseline, (2) faster-coco-eval
used directly, (3) ``cytobench.evaluation.evaluate_coco`` (faster-coco-eval underneath, plus
input validation, copies and its own summary). Each timing covers building the COCO
objects from in-memory dicts through the 12 summary numbers. The script checks that
cytobench's numbers equal pycocotools' (exactly, or to 1e-12: faster-coco-eval's precision
may differ by one ulp, see ``cytobench.evaluation.coco``).

Usage: ``python bench/bench_coco_eval.py [--n-images 5000] [--seed 0]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from typing import Any

import numpy as np
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

from cytobench.evaluation import evaluate_coco

H, W = 256, 256
GOAL = 1.1  # times faster-coco-eval's wall time, at most


def make_dataset(n_images: int, rng: np.random.Generator) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth with polygons (all COCO area ranges, a few crowd boxes) and noisy RLE results."""
    images, anns, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "height": H, "width": W})
        for _ in range(rng.integers(0, 11)):
            w, h = rng.uniform(4, 150, 2)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            poly = [x, y, x + w, y, x + w, y + 0.7 * h, x + 0.5 * w, y + h, x, y + h]
            cat = int(rng.integers(1, 3))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": float(0.85 * w * h),
                    "iscrowd": int(rng.uniform() < 0.02),
                    "segmentation": [poly],
                }
            )
            for _ in range(rng.integers(0, 3)):
                dx, dy, sw, sh = rng.normal(0, 0.08, 4)
                bx, by, bw, bh = x + dx * w, y + dy * h, w * (1 + sw), h * (1 + sh)
                dpoly = [bx, by, bx + bw, by, bx + bw, by + 0.7 * bh, bx + 0.5 * bw, by + bh, bx, by + bh]
                rle = mask_utils.frPyObjects([dpoly], H, W)[0]
                rle["counts"] = rle["counts"].decode("ascii")
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": cat if rng.uniform() < 0.95 else 3 - cat,
                        "bbox": [bx, by, bw, bh],
                        "segmentation": rle,
                        "score": float(rng.uniform()),
                    }
                )
    cats = [{"id": 1, "name": "class_1"}, {"id": 2, "name": "class_2"}]
    return {"images": images, "annotations": anns, "categories": cats}, results


def only(results: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k != ("segmentation" if key == "bbox" else "bbox")} for r in results
    ]


def run_pycocotools(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def run_faster(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> np.ndarray:
    coco_gt = FasterCOCO(gt)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(results), iou_type, print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12])


def evaluate_coco_owned(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> dict[str, float]:
    return evaluate_coco(gt, results, iou_type, copy_inputs=False)


def timed(fn: Any, *args: Any, repeats: int = 3) -> tuple[float, Any]:
    """Median wall time over ``repeats`` calls (each on fresh deep copies of the arguments)."""
    times, out = [], None
    for _ in range(repeats):
        fresh = copy.deepcopy(args)
        start = time.perf_counter()
        out = fn(*fresh)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gt, results = make_dataset(args.n_images, np.random.default_rng(args.seed))
    print(f"{args.n_images} images, {len(gt['annotations'])} gt objects, {len(results)} results, 2 classes")
    print()
    header = f"{'iou':<5} {'pycocotools s':>14} {'faster-coco-eval s':>19} {'cytobench s':>12} {'vs pycocotools':>15}"
    header += (
        f" {'vs faster':>10} {'owned s':>8} {'owned vs faster':>16} {'max |diff|':>11} {'identical':>10}"
    )
    print(header)
    failed = False
    rows = []
    for iou_type in ("bbox", "segm"):
        res = only(results, "bbox" if iou_type == "bbox" else "segmentation")
        warm_gt, warm_res = make_dataset(20, np.random.default_rng(1))  # imports and first-call costs
        warm_res = only(warm_res, "bbox" if iou_type == "bbox" else "segmentation")
        run_pycocotools(copy.deepcopy(warm_gt), copy.deepcopy(warm_res), iou_type)
        run_faster(copy.deepcopy(warm_gt), copy.deepcopy(warm_res), iou_type)
        evaluate_coco(warm_gt, warm_res, iou_type)
        # every tool gets fresh copies made outside the timer; the libraries write into their inputs
        t_py, ref = timed(run_pycocotools, gt, res, iou_type)
        t_fast, fast = timed(run_faster, gt, res, iou_type)
        t_ours, ours = timed(evaluate_coco, gt, res, iou_type)  # copies again inside: the safe default
        # consuming its inputs, as `cytobench eval` does with json it has just read
        t_owned, owned = timed(evaluate_coco_owned, gt, res, iou_type)
        assert owned == ours or np.allclose(list(owned.values()), list(ours.values()), equal_nan=True)
        ours_arr = np.array(list(ours.values()))
        ref_nan = np.where(ref == -1, np.nan, ref)
        diff = float(np.nanmax(np.abs(ours_arr - ref_nan)))
        identical = bool(np.array_equal(ours_arr, ref_nan, equal_nan=True))
        failed |= diff > 1e-12 or not np.array_equal(np.isnan(ours_arr), np.isnan(ref_nan))
        print(
            f"{iou_type:<5} {t_py:>14.2f} {t_fast:>19.2f} {t_ours:>12.2f} {t_py / t_ours:>14.1f}x"
            f" {t_fast / t_ours:>9.2f}x {t_owned:>8.2f} {t_fast / t_owned:>15.2f}x {diff:>11.1e} {identical!s:>10}"
        )
        print("      pycocotools:", np.round(ref, 4).tolist())
        print("      cytobench:  ", np.round(ours_arr, 4).tolist())
        assert np.allclose(fast, ref, rtol=0, atol=1e-12)
        same = diff <= 1e-12
        rows.append(
            (
                f"COCO {iou_type} eval, {args.n_images} images, s (baseline: faster-coco-eval)",
                t_ours,
                t_fast,
                same,
            )
        )
        rows.append(
            (f"COCO {iou_type} eval, {args.n_images} images, s (baseline: pycocotools)", t_ours, t_py, same)
        )
    print()
    print("ratios: time of the named tool / time of cytobench (> 1 means cytobench is faster)")
    print(HEADER)
    for measure, ours, base, same in rows:
        ratio = ours / base  # time ratio: < 1 means cytobench is faster
        goal = f"<= {GOAL}x, same 12 numbers" if "faster" in measure else "faster, same 12 numbers"
        held = same and (ratio <= GOAL if "faster" in measure else ratio < 1)
        row(measure, round(ours, 2), round(base, 2), ratio, goal, held)
    if failed:
        raise SystemExit("cytobench numbers differ from pycocotools by more than 1e-12")


if __name__ == "__main__":
    main()
