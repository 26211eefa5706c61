"""Error analysis of Table 5.11: "w/ gt mask" and "gt matched" on hand-built masks with hand-derived APs.

The scene (40 x 40, all objects COCO-small): image 1 has ground truth A (rows 0-9, cols 0-9) and B (rows
20-29, cols 20-29); predictions p2 = B shifted 5 columns (score 0.95; IoU 1/3, dice 0.5), p1 = A shifted 3
columns (0.9; IoU 7/13 = 0.538, dice 0.7) and p3 = A shifted 2 rows (0.7; IoU 2/3, dice 0.8). Image 2 has
ground truth C (rows 0-9, cols 0-9) and p4 far from it (0.6; no overlap).

COCO AP by hand (101 recall points; a precision p held up to recall R gives p * (#points <= R) / 101):

* image 1, baseline: at IoU 0.5 the order is p2 FP, p1 TP, p3 FP (A taken): precision 1/2 up to recall 1/2
  (51 points): AP50 = 25.5/101. At 0.55-0.65 p1 misses and p3 matches A: precision 1/3 up to 1/2. At
  >= 0.7 nothing matches. AP = (1/2 + 3 * 1/3) * 51 / 1010 = 76.5/1010.
* image 1, w/ gt mask: p2 -> B, p1 -> A, p3 -> A (duplicate, ranked last): precision 1 up to recall 1, AP 1.
* image 1, gt matched (dice >= 0.6): p2 goes; p1 TP then p3 FP at 0.5 (51/101); at 0.55-0.65 p1 FP then
  p3 TP (1/2 * 51/101): AP = (1 + 3/2) * 51 / 1010. With one_per_gt only p3 (best dice with A) stays: TP
  at 0.5-0.65, AP = 4 * 51 / 1010, AP50 = 51/101.
* both images, w/ gt mask: p2, p1 TPs, p3, p4 FPs, 3 objects: precision 1 up to recall 2/3 (67 points),
  AP = AP50 = AP75 = 67/101 (p4 overlaps nothing, so it keeps its own mask and stays a false positive).
"""

from __future__ import annotations

import numpy as np
import pytest

from cytobench.evaluation import ErrorAnalysisEvaluator, evaluate_coco
from cytobench.evaluation.error_analysis import (
    best_dice_match,
    dice_from_iou,
    keep_gt_matched,
    mask_dice,
    matched_subset,
    replace_with_gt_masks,
)
from cytobench.io.coco_convert import coco_gt_from_targets, coco_results_from_predictions

H = W = 40


def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


A, B, C = box(0, 10, 0, 10), box(20, 30, 20, 30), box(0, 10, 0, 10)
P2, P1, P3, P4 = box(20, 30, 25, 35), box(0, 10, 3, 13), box(2, 12, 0, 10), box(30, 36, 30, 36)


def boxes_of(masks: np.ndarray) -> np.ndarray:
    out = []
    for m in masks:
        rows, cols = np.nonzero(m)
        out.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return np.array(out, np.float32).reshape(-1, 4)


def target(image_id: int, masks: list[np.ndarray]) -> dict:
    m = np.stack(masks)
    return {"image_id": image_id, "boxes": boxes_of(m), "labels": np.ones(len(m), np.int64), "masks": m}


def prediction(masks: list[np.ndarray], scores: list[float]) -> dict:
    m = np.stack(masks)
    return {
        "boxes": boxes_of(m),
        "labels": np.ones(len(m), np.int64),
        "scores": np.array(scores, np.float32),
        "masks": m,
    }


IMAGE1 = (target(1, [A, B]), prediction([P2, P1, P3], [0.95, 0.9, 0.7]))
IMAGE2 = (target(2, [C]), prediction([P4], [0.6]))


def run(images: list[tuple[dict, dict]], **kwargs) -> dict[str, float]:
    ev = ErrorAnalysisEvaluator(**kwargs)
    ev.process([t for t, _ in images], [p for _, p in images])
    return ev.compute()


# ------------------------------------------------------------------------------------------ the maths


def test_mask_dice_matches_brute_force_and_hand_values() -> None:
    rng = np.random.default_rng(0)
    pred = rng.uniform(size=(5, 1, 12, 9))  # probabilities, foreground > 0.5
    gt = rng.uniform(size=(4, 12, 9)) > 0.6
    gt[1] = False  # an empty object
    got = mask_dice(pred, gt)
    p = pred[:, 0] > 0.5
    for i in range(5):
        for j in range(4):
            total = p[i].sum() + gt[j].sum()
            assert got[i, j] == pytest.approx(2 * (p[i] & gt[j]).sum() / total)
    assert np.all(got[:, 1] == 0)
    hand = mask_dice(np.stack([P2, P1, P3]), np.stack([A, B]))
    np.testing.assert_allclose(hand, [[0, 0.5], [0.7, 0], [0.8, 0]])
    np.testing.assert_allclose(
        dice_from_iou(np.array([1 / 3, 7 / 13, 2 / 3, 0.0, 1.0])), [0.5, 0.7, 0.8, 0, 1]
    )


def test_best_dice_match_ties_and_no_overlap() -> None:
    index, dice = best_dice_match(np.stack([P2, P1, P3, P4]), np.stack([A, B]))
    np.testing.assert_array_equal(index, [1, 0, 0, -1])
    np.testing.assert_allclose(dice, [0.5, 0.7, 0.8, 0.0])
    # two identical objects: the earlier one wins; no objects at all: no match
    assert best_dice_match(A[None], np.stack([B, A, A]))[0].tolist() == [1]
    assert best_dice_match(A[None], np.zeros((0, H, W), np.uint8))[0].tolist() == [-1]


def test_replace_with_gt_masks_keeps_scores_and_unmatched_masks() -> None:
    masks, scores = replace_with_gt_masks(np.stack([A, B]), np.stack([P2, P1, P4]), [0.95, 0.9, 0.6])
    np.testing.assert_array_equal(masks, np.stack([B, A, P4]).astype(bool))
    np.testing.assert_array_equal(scores, [0.95, 0.9, 0.6])


def test_keep_gt_matched_threshold_and_one_per_gt() -> None:
    gt, pred, scores = np.stack([A, B]), np.stack([P2, P1, P3]), [0.95, 0.9, 0.7]
    masks, kept_scores, kept = keep_gt_matched(gt, pred, scores, dice_thr=0.6)
    assert kept.tolist() == [1, 2]
    np.testing.assert_array_equal(masks, np.stack([P1, P3]).astype(bool))
    np.testing.assert_allclose(kept_scores, [0.9, 0.7])
    assert keep_gt_matched(gt, pred, scores, dice_thr=0.5)[2].tolist() == [0, 1, 2]  # dice 0.5 counts
    assert keep_gt_matched(gt, pred, scores, dice_thr=0.6, one_per_gt=True)[2].tolist() == [2]
    with pytest.raises(ValueError, match="dice_thr"):
        keep_gt_matched(gt, pred, scores, dice_thr=0.0)


def test_matched_subset_one_per_gt_breaks_ties_by_score_then_order() -> None:
    index = np.array([0, 0, 0, 1, -1])
    dice = np.array([0.9, 0.9, 0.9, 0.6, 0.0])
    assert matched_subset(index, dice, np.array([0.2, 0.8, 0.8, 0.1, 0.9]), 0.5, True).tolist() == [1, 3]
    assert matched_subset(index, dice, np.zeros(5), 0.5, False).tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ the evaluator


def test_evaluator_hand_derived_aps_one_image() -> None:
    out = run([IMAGE1], dice_thr=0.6)
    assert out["coco/segm_AP50"] == pytest.approx(25.5 / 101, abs=1e-12)
    assert out["coco/segm_AP"] == pytest.approx(76.5 / 1010, abs=1e-12)
    assert out["coco/segm_AP75"] == 0.0
    for key in ("AP", "AP50", "AP75", "APs"):
        assert out[f"gt_mask/segm_{key}"] == pytest.approx(1.0, abs=1e-12)
    assert out["gt_matched/segm_AP50"] == pytest.approx(51 / 101, abs=1e-12)
    assert out["gt_matched/segm_AP"] == pytest.approx(2.5 * 51 / 1010, abs=1e-12)
    assert np.isnan(out["coco/segm_APm"]) and np.isnan(out["gt_mask/segm_APl"])  # no such objects: undefined
    strict = run([IMAGE1], dice_thr=0.6, one_per_gt=True)
    assert strict["gt_matched/segm_AP"] == pytest.approx(4 * 51 / 1010, abs=1e-12)
    assert strict["gt_matched/segm_AP50"] == pytest.approx(51 / 101, abs=1e-12)
    assert strict["coco/segm_AP"] == out["coco/segm_AP"]


def test_evaluator_hand_derived_aps_two_images() -> None:
    out = run([IMAGE1, IMAGE2], dice_thr=0.6)
    for key in ("AP", "AP50", "AP75"):
        assert out[f"gt_mask/segm_{key}"] == pytest.approx(67 / 101, abs=1e-12)
    assert out["coco/segm_AP50"] == pytest.approx(0.5 * 34 / 101, abs=1e-12)
    assert out["gt_matched/segm_AP50"] == pytest.approx(34 / 101, abs=1e-12)  # p1 TP, then p3 FP; p4 gone


def test_baseline_equals_coco_on_the_same_json_and_keys_are_namespaced() -> None:
    images = [IMAGE1, IMAGE2]
    out = run(images, max_dets=(1, 10, 100))
    gt = coco_gt_from_targets([t for t, _ in images])
    res = coco_results_from_predictions([p for _, p in images], [1, 2])
    ref = evaluate_coco(gt, res, "segm")
    assert {k: out[f"coco/segm_{k}"] for k in ref} == pytest.approx(ref, nan_ok=True, abs=1e-15)
    assert {k.split("/")[0] for k in out} == {"coco", "gt_mask", "gt_matched"}
    without = run(images, include_baseline=False, gt_mask_prefix="gm", gt_matched_prefix="gd")
    assert {k.split("/")[0] for k in without} == {"gm", "gd"}
    assert without["gm/segm_AP"] == out["gt_mask/segm_AP"]
    with pytest.raises(ValueError, match="distinct"):
        ErrorAnalysisEvaluator(prefix="x", gt_mask_prefix="x")


def test_state_merge_equals_one_pass() -> None:
    one = ErrorAnalysisEvaluator(dice_thr=0.6)
    one.process([IMAGE1[0], IMAGE2[0]], [IMAGE1[1], IMAGE2[1]])
    ranks = [ErrorAnalysisEvaluator(dice_thr=0.6) for _ in range(2)]
    ranks[0].process([IMAGE1[0]], [IMAGE1[1]])
    ranks[1].process([IMAGE2[0]], [IMAGE2[1]])
    merged = ErrorAnalysisEvaluator(dice_thr=0.6)
    merged.load_states([r.state() for r in ranks])
    assert merged.compute() == pytest.approx(one.compute(), nan_ok=True)


def test_crowd_regions_are_never_the_match() -> None:
    t = target(1, [A, B])
    t["iscrowd"] = np.array([1, 0])
    out = run([(t, prediction([P1], [0.9]))])
    # P1's only overlap is the crowd region A: no match, so "w/ gt mask" keeps P1 (it matches nothing: AP 0)
    assert out["gt_mask/segm_AP"] == 0.0
    assert out["gt_matched/segm_AP"] == 0.0


def test_rle_matching_equals_the_numpy_matching() -> None:
    """The evaluator's matching (IoU on RLEs -> dice) picks the objects :func:`best_dice_match` picks."""
    from cytobench.evaluation.error_analysis import _rle_best_match
    from cytobench.io.coco_convert import prediction_to_coco, target_to_coco

    rng = np.random.default_rng(3)
    corners = rng.integers(0, 25, (6, 2))
    sides = rng.integers(3, 9, (6, 2))
    gt = np.stack(
        [box(r, r + h, c, c + w) for (r, c), (h, w) in zip(corners, sides)]
    )  # within rows/cols < 33
    pred = np.stack([np.roll(gt[i % 6], rng.integers(-3, 4, 2), (0, 1)) for i in range(9)])
    pred[8] = box(36, 40, 36, 40)  # overlaps nothing
    t, p = target(1, list(gt)), prediction(list(pred), list(rng.uniform(size=9)))
    _, anns = target_to_coco(t)
    index, dice = _rle_best_match(prediction_to_coco(p, 1), anns)
    want_index, want_dice = best_dice_match(pred, gt)
    assert index == want_index.tolist()
    np.testing.assert_allclose(dice, want_dice, atol=1e-12)
