"""Which chromosomes does a karyotype model never find? Misses by crowding, size class and near-misses.

A whole cell is exactly right only if none of its ~46 chromosomes is missed, so the misses decide the
exact-match rate. For one checkpoint on a held-out test set this counts, class-agnostically (a chromosome
is *found* when a detection scored >= ``--score-thr`` covers it at box IoU >= 0.5, greedy one-to-one as
the karyotype evaluator matches), the truths left unmatched and splits them:

* by crowding: the largest box IoU of the chromosome with another chromosome of the same cell
  (0: free-standing; (0, 0.1]: touching; > 0.1: overlapping);
* by Denver group (A-G, X/Y apart), since size is the main cue of the class;
* by why: a kept detection covers it at IoU >= 0.5 but went to a neighbour (one box for two
  chromosomes); only detections scored below the threshold cover it; the best box on it reaches IoU
  0.1-0.5 (a merged pair or a part); nothing reaches 0.1 (never seen).

    python experiments/karyotype/missed_chromosomes.py \
        --checkpoint RUN/checkpoints/best.pt --test-json OUT/test_data/<set>/annotations.json

``--test-json``: a held-out set that ``cytobench reproduce karyotype/...`` wrote under its ``--out``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch

CROWDING = ("free-standing", "touching (IoU <= 0.1)", "overlapping (> 0.1)")
WHY_MISSED = (
    "its box went to a neighbour",
    "boxed below the score threshold",
    "boxed badly (IoU 0.1-0.5)",
    "never seen (IoU < 0.1)",
)


def crowding(gt_boxes: np.ndarray) -> np.ndarray:
    """(N,) the largest box IoU of each truth box with another one of the same image (0 alone)."""
    from cytobench.evaluation.boxes import box_iou

    if len(gt_boxes) < 2:
        return np.zeros(len(gt_boxes))
    iou = box_iou(gt_boxes, gt_boxes)
    np.fill_diagonal(iou, 0.0)
    return iou.max(axis=1)


def crowding_class(value: float) -> str:
    """The :data:`CROWDING` row of a chromosome whose largest box IoU with a neighbour is ``value``."""
    return CROWDING[0] if value == 0.0 else CROWDING[1] if value <= 0.1 else CROWDING[2]


def why_missed(ious: np.ndarray, kept: np.ndarray) -> int:
    """The :data:`WHY_MISSED` index of a missed truth from the IoUs of every detection with it."""
    covers = ious >= 0.5
    if (covers & kept).any():
        return 0
    if covers.any():
        return 1
    return 2 if ious.max(initial=0.0) >= 0.1 else 3


def image_records(
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    score_thr: float,
) -> list[dict[str, float]]:
    """One record per truth of an image: class, found (bool), crowding and, if missed, why
    (an index into :data:`WHY_MISSED`; -1 when found)."""
    from cytobench.evaluation.boxes import box_iou
    from cytobench.evaluation.karyotype import greedy_match

    kept = det_scores >= score_thr
    _, gt_to_det = greedy_match(gt_boxes, det_boxes[kept], det_scores[kept])
    iou = box_iou(det_boxes, gt_boxes) if len(det_boxes) else np.zeros((0, len(gt_boxes)))
    crowd = crowding(gt_boxes)
    records = []
    for index, (cls, match) in enumerate(zip(gt_classes, gt_to_det)):
        why = -1 if match >= 0 else why_missed(iou[:, index], kept)
        records.append(
            {"class": int(cls), "found": bool(match >= 0), "crowding": float(crowd[index]), "why": why}
        )
    return records


def collect(checkpoint: Path, test_json: Path, images: Path, score_thr: float) -> list[dict[str, float]]:
    """The records of every truth of the test set under ``checkpoint``'s predictions."""
    from cytobench.engine.predict import load_model_from_checkpoint
    from cytobench.evaluation.base import to_numpy
    from cytobench.reproduce.base import TestSet
    from cytobench.reproduce.karyotype_models import truth_class_map

    net, _ = load_model_from_checkpoint(checkpoint, "cpu")
    net.eval()
    test_set = TestSet(test_json, images, -1)
    truth_map = truth_class_map(test_set)
    records: list[dict[str, float]] = []
    with torch.no_grad():
        for batch_images, targets in test_set.loader(1, True):
            for pred, target in zip(net(list(batch_images)), targets):
                classes = np.array([truth_map[int(v)] for v in to_numpy(target["labels"]).ravel()])
                records += image_records(
                    to_numpy(target["boxes"]).astype(np.float64).reshape(-1, 4),
                    classes,
                    to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4),
                    to_numpy(pred["scores"]).astype(np.float64).ravel(),
                    score_thr,
                )
    return records


def denver_group(class_id: int) -> str:
    """``A``-``G`` for autosomes 1-22, ``X`` / ``Y`` for 23 / 24."""
    from cytobench.simulate.chromosomes import CLASSES

    spec = CLASSES[class_id - 1]
    return spec.name if spec.name in ("X", "Y") else spec.group


def miss_table(records: list[dict[str, float]]) -> list[tuple[str, int, int]]:
    """``(row, truths, missed)`` rows: all, by crowding, by Denver group, and the misses by reason."""
    rows = [("all", len(records), sum(not r["found"] for r in records))]
    for name in CROWDING:
        part = [r for r in records if crowding_class(r["crowding"]) == name]
        rows.append((name, len(part), sum(not r["found"] for r in part)))
    totals = Counter(denver_group(int(r["class"])) for r in records)
    missed = Counter(denver_group(int(r["class"])) for r in records if not r["found"])
    rows += [(f"group {g}", totals[g], missed[g]) for g in sorted(totals)]
    misses = [r["why"] for r in records if not r["found"]]
    rows += [(f"missed: {name}", len(misses), misses.count(why)) for why, name in enumerate(WHY_MISSED)]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from cytobench.reproduce.karyotype_models import add_held_out_arguments, held_out_images

    add_held_out_arguments(parser)
    parser.add_argument("--score-thr", type=float, default=0.5)
    args = parser.parse_args(argv)
    images = held_out_images(args)
    records = collect(args.checkpoint, args.test_json, images, args.score_thr)
    print("| chromosomes | n | missed | miss rate |\n|---|---|---|---|")
    for name, total, missed in miss_table(records):
        rate = f"{missed / total:.3f}" if total else "-"
        print(f"| {name} | {total} | {missed} | {rate} |")


if __name__ == "__main__":
    main()
