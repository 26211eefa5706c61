"""Benchmark: the ``cytobench eval coco-segm`` command against a plain faster-coco-eval script.

The dense case of microscopy instance segmentation: ``--n-images`` (default 200) images of 512 x 512,
each with about 300 ground-truth cells (polygons) and about 400 predicted masks (RLE, maxDets 2000),
written to json files. Each tool runs as its own process from the json files to the printed numbers,
so the times include interpreter start-up, imports and json loading; the peak memory is the process's
maximum resident set size (``wait4``). The named baseline, in the same run: a plain script that loads
the two files with faster-coco-eval and runs ``evaluate / accumulate / summarize`` (what a user would
write without cytobench). Both must give the same AP / AR numbers. Also checked: the command imports
neither torch nor any model code.

Goal: the command's wall time and peak memory within 1.1x of the plain script's.

Usage: ``python bench/bench_eval_cli.py [--n-images 200] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from summary import HEADER, row  # bench/ is on sys.path when a bench runs as a script

SIZE = 512
MAX_DETS = (1, 100, 2000)
GOAL = 1.1

PLAIN_SCRIPT = """
import json, sys
from faster_coco_eval import COCO, COCOeval_faster
gt = COCO(sys.argv[1])
ev = COCOeval_faster(gt, gt.loadRes(sys.argv[2]), "segm", print_function=lambda *a, **k: None)
ev.params.maxDets = [int(m) for m in sys.argv[3].split(",")]
ev.evaluate(); ev.accumulate()
p, r = ev.eval["precision"][:, :, :, 0, -1], ev.eval["recall"][:, :, 0, :]  # area "all"; AP at the last maxDets
mean = lambda a: float(a[a > -1].mean())
print(json.dumps([mean(p), mean(p[0]), mean(p[5])] + [mean(r[..., m]) for m in range(r.shape[-1])]))
"""

CYTOBENCH_CMD = """
import sys
from cytobench.cli import main
main(sys.argv[1:])
"""


def ellipse_polygon(cx: float, cy: float, a: float, b: float, theta: float, k: int = 16) -> list[float]:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    x = cx + a * np.cos(t) * np.cos(theta) - b * np.sin(t) * np.sin(theta)
    y = cy + a * np.cos(t) * np.sin(theta) + b * np.sin(t) * np.cos(theta)
    return np.stack([np.clip(x, 0, SIZE - 1), np.clip(y, 0, SIZE - 1)], 1).ravel().round(2).tolist()


def make_dense_case(n_images: int, rng: np.random.Generator) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """~300 cells per image (polygons) and ~400 predictions (RLE: 300 jittered hits + 100 false ones)."""
    images, anns, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": SIZE, "width": SIZE})
        n_cells = int(rng.integers(280, 321))
        centres = rng.uniform(8, SIZE - 8, (n_cells, 2))
        axes = rng.uniform(5, 14, (n_cells, 2))
        theta = rng.uniform(0, np.pi, n_cells)
        for (cx, cy), (a, b), th in zip(centres, axes, theta):
            poly = ellipse_polygon(cx, cy, a, b, th)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], SIZE, SIZE))
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": [poly],
                    "bbox": [x, y, w, h],
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": 0,
                }
            )
        fake = int(rng.integers(80, 121))
        pred_centres = np.concatenate(
            [centres + rng.normal(0, 1.5, centres.shape), rng.uniform(8, SIZE - 8, (fake, 2))]
        )
        pred_axes = np.concatenate(
            [axes * rng.uniform(0.85, 1.15, axes.shape), rng.uniform(5, 14, (fake, 2))]
        )
        pred_theta = np.concatenate([theta + rng.normal(0, 0.1, n_cells), rng.uniform(0, np.pi, fake)])
        polys = [
            ellipse_polygon(cx, cy, a, b, th)
            for (cx, cy), (a, b), th in zip(pred_centres, pred_axes, pred_theta)
        ]
        for poly, score in zip(polys, rng.uniform(0.05, 1.0, len(polys))):
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], SIZE, SIZE))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {"image_id": image_id, "category_id": 1, "segmentation": rle, "score": round(float(score), 4)}
            )
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    return gt, results


def run_process(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB (the process's own, from ``wait4``) and stdout of one run."""
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        proc.stdout.close()
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{argv[:3]} failed ({proc.returncode}): {err.read().strip()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = Path(tmp, "gt.json"), Path(tmp, "pred.json")
        gt, results = make_dense_case(args.n_images, np.random.default_rng(args.seed))
        gt_path.write_text(json.dumps(gt))
        pred_path.write_text(json.dumps(results))
        n_gt, n_pred = len(gt["annotations"]), len(results)
        del gt, results
        print(
            f"{args.n_images} images of {SIZE} x {SIZE}: {n_gt} cells, {n_pred} predicted masks, maxDets {MAX_DETS}"
        )

        dets = ",".join(map(str, MAX_DETS))
        plain = [sys.executable, "-c", PLAIN_SCRIPT, str(gt_path), str(pred_path), dets]
        ours = [sys.executable, "-c", CYTOBENCH_CMD, "eval", "coco-segm", "--gt", str(gt_path),
                "--pred", str(pred_path), "--max-dets", *map(str, MAX_DETS)]  # fmt: skip
        probe = [sys.executable, "-c", "import sys; from cytobench.cli import main; main(sys.argv[1:]); "
                 "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('cytobench.models')); "
                 "sys.exit(f'imported: {bad}' if bad else 0)", *ours[3:]]  # fmt: skip
        run_process(probe)  # raises if the command imported torch or model code
        print("cytobench eval imports neither torch nor model code: yes")

        timings: dict[str, list[tuple[float, float]]] = {"plain": [], "ours": []}
        outputs: dict[str, str] = {}
        for _ in range(args.repeats):  # interleaved, so that load on the machine hits both alike
            for name, argv in (("plain", plain), ("ours", ours)):
                wall, rss, out = run_process(argv)
                timings[name].append((wall, rss))
                outputs[name] = out
    plain_stats = json.loads(outputs["plain"])
    ours_all = {k.rsplit("_", 1)[-1]: v for k, v in json.loads(outputs["ours"]).items()}
    ours_stats = [ours_all[k] for k in ("AP", "AP50", "AP75", *(f"AR{m}" for m in MAX_DETS))]
    same = np.allclose(plain_stats, ours_stats, rtol=0, atol=1e-12)
    wall = {k: statistics.median(t for t, _ in v) for k, v in timings.items()}
    rss = {k: statistics.median(m for _, m in v) for k, v in timings.items()}
    print(f"{'tool':<34} {'wall s':>8} {'peak MiB':>9}")
    print(f"{'plain faster-coco-eval script':<34} {wall['plain']:>8.2f} {rss['plain']:>9.0f}")
    print(f"{'cytobench eval coco-segm':<34} {wall['ours']:>8.2f} {rss['ours']:>9.0f}")
    print(f"same AP, AP50, AP75, AR{MAX_DETS} (1e-12): {same}; AP = {ours_stats[0]:.4f}")
    print(HEADER)
    goal = f"<= {GOAL}x the plain script, same numbers"
    r_wall, r_rss = wall["ours"] / wall["plain"], rss["ours"] / rss["plain"]
    row("eval coco-segm dense, wall s (baseline: plain faster-coco-eval)", round(wall["ours"], 2),
        round(wall["plain"], 2), r_wall, goal, r_wall <= GOAL and same)  # fmt: skip
    row("eval coco-segm dense, peak MiB (baseline: plain faster-coco-eval)", round(rss["ours"]),
        round(rss["plain"]), r_rss, goal, r_rss <= GOAL and same)  # fmt: skip


if __name__ == "__main__":
    main()
