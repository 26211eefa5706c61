"""Where do Embedding-Guided NMS and Soft-NMS count a spread differently, and which one is right there?

WCR only moves when a spread's count of detections above the score threshold changes. This script runs
one checkpoint over a test set under both post-processings (one backbone pass) and, per image, compares
the two counts with the truth: where EG keeps more boxes than Soft-NMS, a count closer to the truth
means an overlapped chromosome kept, a count farther from it a duplicate kept (and the reverse where
EG keeps fewer). It also counts duplicates directly: kept boxes whose best
ground-truth match (IoU >= 0.5) is already taken by a higher-scoring kept box.

Usage:
    python experiments/deepace/eg_vs_soft_counts.py RUN/checkpoints/best.pt              # the run's val set
    python experiments/deepace/eg_vs_soft_counts.py RUN/checkpoints/best.pt --n-test 200 # held-out spreads
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from cytobench.io.checkpoint import load_checkpoint
from cytobench.reproduce.deepace_eval import evaluate_checkpoint_modes, held_out_test_set, load_test_data


def kept(pred: dict, score_thr: float) -> tuple[np.ndarray, np.ndarray]:
    keep = pred["scores"] >= score_thr
    order = np.argsort(-pred["scores"][keep], kind="stable")
    return pred["boxes"][keep][order], pred["scores"][keep][order]


def duplicates(boxes: np.ndarray, gt: np.ndarray, iou_thr: float = 0.5) -> int:
    """Kept boxes (score order) whose best ground truth (IoU >= iou_thr) an earlier box already took."""
    if len(boxes) == 0 or len(gt) == 0:
        return 0
    iou = box_iou(torch.as_tensor(boxes, dtype=torch.float64), torch.as_tensor(gt, dtype=torch.float64))
    best_iou, best = iou.max(dim=1)
    taken: set[int] = set()
    dup = 0
    for ok, g in zip((best_iou >= iou_thr).tolist(), best.tolist()):
        if ok:
            dup += g in taken
            taken.add(g)
    return dup


def compare(targets: list[dict], soft: list[dict], eg: list[dict], score_thr: float) -> dict[str, int]:
    """Per-spread counts (boxes above ``score_thr``) of both post-processings against the truth."""
    out = dict.fromkeys(
        ["images", "soft_count_right", "eg_count_right", "soft_duplicates", "eg_duplicates"], 0
    )
    for change in ("more", "fewer"):
        for effect in ("closer", "farther", "as_far"):
            out[f"eg_{change}_{effect}"] = 0
    for target, p_soft, p_eg in zip(targets, soft, eg):
        gt = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
        b_soft, _ = kept(p_soft, score_thr)
        b_eg, _ = kept(p_eg, score_thr)
        n_true, n_soft, n_eg = len(gt), len(b_soft), len(b_eg)
        out["images"] += 1
        out["soft_count_right"] += n_soft == n_true
        out["eg_count_right"] += n_eg == n_true
        out["soft_duplicates"] += duplicates(b_soft, gt)
        out["eg_duplicates"] += duplicates(b_eg, gt)
        if n_eg != n_soft:
            gap_eg, gap_soft = abs(n_eg - n_true), abs(n_soft - n_true)
            effect = "closer" if gap_eg < gap_soft else "farther" if gap_eg > gap_soft else "as_far"
            out[f"eg_{'more' if n_eg > n_soft else 'fewer'}_{effect}"] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument(
        "--n-test", type=int, default=0, help="held-out simulated spreads (0: the run's val set)"
    )
    parser.add_argument("--test-seed", type=int, help="default: the training seed + 10000 (as table2)")
    parser.add_argument("--score-thr", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    data = load_checkpoint(args.checkpoint)["data_config"]
    if args.n_test:  # the same cached set as `cytobench reproduce deepace/table2 --n-test N`
        ann, images, _ = held_out_test_set(data, args.n_test, args.test_seed)
    else:
        ann, images = Path(data["dir"]) / "val.json", Path(data["dir"]) / "images"
    results = evaluate_checkpoint_modes(
        args.checkpoint, ann, images, ["soft", "eg"], args.device, {"score_thr": args.score_thr}
    )
    targets, _ = load_test_data(ann, images)
    summary = compare(targets, results["soft"][1], results["eg"][1], args.score_thr)
    n = summary["images"]
    print(f"{args.checkpoint} on {n} spreads ({ann})")
    print(
        f"  count right (WCR also needs every box matched): SOFT {summary['soft_count_right']}, EG {summary['eg_count_right']}"
    )
    for change in ("more", "fewer"):
        closer, farther, as_far = (summary[f"eg_{change}_{e}"] for e in ("closer", "farther", "as_far"))
        print(
            f"  EG keeps {change} boxes than SOFT on {closer + farther + as_far} spreads: "
            f"closer to the true count {closer}, farther {farther}, as far {as_far}"
        )
    print(f"  duplicate detections kept: SOFT {summary['soft_duplicates']}, EG {summary['eg_duplicates']}")
    for mode in ("soft", "eg"):
        m = results[mode][0]
        print(
            f"  {mode:4s} WCR {100 * m['enum/wcr']:.2f}  precision {100 * m['enum/precision']:.2f}  "
            f"recall {100 * m['enum/recall']:.2f}  S_o recall {100 * m['enum/overlap_recall']:.2f}"
        )


if __name__ == "__main__":
    main()
