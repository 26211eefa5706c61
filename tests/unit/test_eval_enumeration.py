"""DeepACEv2 enumeration metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cytobench.evaluation import (
    EnumerationEvaluator,
    LocalizationEvaluator,
    average_precision,
    box_iog,
    box_iou,
    enumeration_metrics,
    log_average_miss_rate,
    match_detections,
    miss_rate_fppi,
    overlapping_subset,
    pr_curve,
)

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 0.0, 30.0, 10.0]
FAR = [50.0, 50.0, 60.0, 60.0]


def arr(*boxes: list[float]) -> np.ndarray:
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def test_box_iou_and_iog_by_hand() -> None:
    a = arr([0, 0, 10, 10])
    b = arr([5, 0, 15, 10], [0, 0, 5, 5], [20, 20, 30, 30], [3, 3, 3, 8])  # last one is empty
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 25 / 100, 0.0, 0.0]])
    np.testing.assert_allclose(box_iog(a, b), [[0.5, 1.0, 0.0, 0.0]])  # / area of b
    np.testing.assert_allclose(box_iog(b, a).T, [[0.5, 0.25, 0.0, 0.0]])  # / area of a
    assert box_iou(arr(), a).shape == (0, 1) and box_iog(a, arr()).shape == (1, 0)


def test_match_tp_duplicate_and_unassigned() -> None:
    gts = arr(A, B)
    dets = arr(A, [1, 0, 11, 10], B, FAR)
    tp, assigned, detected = match_detections(gts, dets, np.array([0.9, 0.8, 0.7, 0.95]))
    assert tp.tolist() == [True, False, True, False]
    assert assigned.tolist() == [0, 0, 1, -1]  # the duplicate keeps its assignment, the far box has none
    assert detected.tolist() == [True, True]


def test_match_highest_score_wins_not_highest_iou() -> None:
    gts = arr(A)
    tp, _, _ = match_detections(gts, arr(A, [1, 0, 11, 10]), np.array([0.6, 0.9]))
    assert tp.tolist() == [False, True]


def test_match_has_no_fallback_to_second_best_gt() -> None:
    """A detection whose best ground truth is taken stays FP even if it overlaps another one well."""
    gts = arr(A, [2, 0, 12, 10])
    dets = arr(A, [0.5, 0, 10.5, 10])  # IoU with A 0.905, with the second gt 0.739
    tp, assigned, detected = match_detections(gts, dets, np.array([0.9, 0.8]))
    assert tp.tolist() == [True, False] and assigned.tolist() == [0, 0]
    assert detected.tolist() == [True, False]


def test_match_ties_are_deterministic() -> None:
    gts = arr(A, [2, 0, 12, 10])
    det = arr([1, 0, 11, 10])  # IoU 9/11 with both ground truths -> the lowest index
    _, assigned, _ = match_detections(gts, det, np.array([0.5]))
    assert assigned.tolist() == [0]
    tp, _, _ = match_detections(
        arr(A), arr(A, A, A), np.array([0.7, 0.9, 0.9])
    )  # equal scores -> earlier one
    assert tp.tolist() == [False, True, False]


def test_match_iou_threshold_is_inclusive() -> None:
    tp, assigned, _ = match_detections(arr(A), arr([0, 0, 10, 5], [0, 0, 10, 4.9]), np.array([0.9, 0.8]))
    assert tp.tolist() == [True, False] and assigned.tolist() == [0, -1]


def test_match_empty_inputs() -> None:
    tp, assigned, detected = match_detections(arr(), arr(A, B), np.array([0.5, 0.4]))
    assert tp.tolist() == [False, False] and assigned.tolist() == [-1, -1] and detected.size == 0
    tp, assigned, detected = match_detections(arr(A, B), arr(), np.array([]))
    assert tp.size == 0 and assigned.size == 0 and detected.tolist() == [False, False]


def three_images() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Image 0 perfect; image 1 misses one of two objects; image 2 has one extra detection (score 0.6)."""
    gts = [arr(A, B), arr(A, B), arr(A)]
    dets = [arr(A, B), arr(A), arr(A, FAR)]
    scores = [np.array([0.9, 0.8]), np.array([0.9]), np.array([0.9, 0.6])]
    return gts, dets, scores


def test_counts_wcr_aer_acc_f1_by_hand() -> None:
    m = enumeration_metrics(*three_images())
    assert (m["tp"], m["fp"], m["fn"], m["n_images"]) == (4, 1, 1, 3)
    assert m["wcr"] == pytest.approx(1 / 3)
    assert m["aer"] == pytest.approx(2 / 5)  # (FP + FN) / (TP + FN)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(0.8) and m["recall"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.8)
    # ranked: 0.9 TP, 0.9 TP, 0.9 TP, 0.8 TP, 0.6 FP with 5 gts -> AP = 0.8
    assert m["map"] == pytest.approx(0.8)


def test_score_threshold_effects() -> None:
    m = enumeration_metrics(*three_images(), score_thr=0.7)  # the extra detection (0.6) is dropped
    assert (m["tp"], m["fp"], m["fn"]) == (4, 0, 1) and m["wcr"] == pytest.approx(2 / 3)
    m = enumeration_metrics(*three_images(), score_thr=0.85)  # B of image 0 (0.8) becomes a miss
    assert (m["tp"], m["fp"], m["fn"]) == (3, 0, 2) and m["wcr"] == pytest.approx(1 / 3)
    m = enumeration_metrics(*three_images(), score_thr=0.9)  # inclusive threshold
    assert m["tp"] == 3
    base = enumeration_metrics(*three_images())
    assert m["map"] == base["map"] and m["mr2"] == base["mr2"]  # threshold-free metrics


def test_threshold_does_not_change_tp_flags() -> None:
    """Flags from all detections, masked by the threshold, equal the rule applied to the kept ones."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        xy = rng.uniform(0, 50, (6, 2))
        gts = np.concatenate([xy, xy + rng.uniform(5, 15, (6, 2))], 1)
        dets = gts[rng.integers(0, 6, 12)] + rng.normal(0, 2, (12, 4))
        scores = rng.choice([0.2, 0.4, 0.5, 0.7, 0.9], 12)
        tp_all, _, _ = match_detections(gts, dets, scores)
        for thr in (0.3, 0.5, 0.8):
            keep = scores >= thr
            tp_kept, _, _ = match_detections(gts, dets[keep], scores[keep])
            assert tp_all[keep].tolist() == tp_kept.tolist()


def test_empty_images_and_no_ground_truth() -> None:
    m = enumeration_metrics([arr(), arr()], [arr(), arr()], [np.array([]), np.array([])])
    assert m["wcr"] == 1.0 and m["tp"] == m["fp"] == m["fn"] == 0
    for key in ("aer", "acc", "f1", "precision", "recall", "map", "mr2"):
        assert math.isnan(m[key]), key
    m = enumeration_metrics([arr()], [arr(A)], [np.array([0.9])])  # only a false positive
    assert m["wcr"] == 0.0 and m["precision"] == 0.0 and math.isnan(m["recall"]) and m["acc"] == 0.0
    m = enumeration_metrics([arr(A, B)], [arr()], [np.array([])])  # no detections
    assert m["recall"] == 0.0 and math.isnan(m["precision"]) and m["f1"] == 0.0 and m["aer"] == 1.0
    assert m["map"] == 0.0 and m["mr2"] == 1.0
    m = enumeration_metrics([], [], [])
    assert m["n_images"] == 0 and math.isnan(m["wcr"])


def test_all_point_average_precision_by_hand() -> None:
    recall, precision, thresholds = pr_curve(np.array([1, 0, 1, 0, 1], bool), np.array([5, 4, 3, 2, 1.0]), 4)
    np.testing.assert_allclose(recall, [0.25, 0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(thresholds, [5, 4, 3, 2, 1])
    # envelope: 1 on (0, .25], 2/3 on (.25, .5], 3/5 on (.5, .75], nothing beyond
    assert average_precision(recall, precision) == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 3 / 5)
    assert average_precision(np.array([]), np.array([])) == 0.0


def test_log_average_miss_rate_by_hand() -> None:
    """Eight images, four objects; ranked TP, TP, FP, TP, FP; one object never found."""
    gts = [arr(A), arr(A), arr(), arr(A), arr(), arr(A), arr(), arr()]
    dets = [arr(A), arr(A), arr(A), arr(A), arr(A), arr(), arr(), arr()]
    scores = [np.array([s]) for s in (0.9, 0.8, 0.7, 0.6, 0.5)] + [np.array([])] * 3
    m = enumeration_metrics(gts, dets, scores)
    # fppi 0, 0, .125, .125, .25; miss rate .75, .5, .5, .25, .25
    # refs 0.01 .. 0.1 (5 of them) -> 0.5; refs 0.178 .. 1 (4) -> 0.25
    assert m["mr2"] == pytest.approx(0.5 ** (5 / 9) * 0.25 ** (4 / 9))
    fppi, mr = miss_rate_fppi(np.array([1, 1, 0, 1, 0], bool), np.array([0.9, 0.8, 0.7, 0.6, 0.5]), 4, 8)
    np.testing.assert_allclose(fppi, [0, 0, 0.125, 0.125, 0.25])
    np.testing.assert_allclose(mr, [0.75, 0.5, 0.5, 0.25, 0.25])


def test_log_average_miss_rate_without_low_fppi_point_and_zero_miss() -> None:
    """One image: FP first (fppi 1 at once) then TP: eight refs get 1.0, ref 1.0 gets 0 -> 1e-10."""
    fppi, mr = miss_rate_fppi(np.array([False, True]), np.array([0.9, 0.8]), 1, 1)
    assert log_average_miss_rate(fppi, mr) == pytest.approx(10 ** (-10 / 9))
    assert log_average_miss_rate(np.array([]), np.array([])) == 1.0


def test_overlapping_subset_by_hand() -> None:
    """Middle box covered 0.3 from each side: each IoG is below tau, their sum (0.6) is not."""
    left, middle, right = [3, 0, 13, 10], [10, 0, 20, 10], [17, 0, 27, 10]
    assert overlapping_subset(arr(left, middle, right), 0.5).tolist() == [False, True, False]
    assert overlapping_subset(arr(left, middle, right), 0.3).tolist() == [True, True, True]
    assert overlapping_subset(arr(left, middle, right), 0.61).tolist() == [False, False, False]
    assert overlapping_subset(arr(middle), 0.5).tolist() == [False]


def test_overlap_metrics_by_hand() -> None:
    left, middle, right = [3, 0, 13, 10], [10, 0, 20, 10], [17, 0, 27, 10]
    gts = [arr(left, middle, right)]
    dup = [11, 0, 21, 10]  # best gt: middle (in S_o) -> counted FP of the subset
    dets = [arr(middle, dup, FAR, left)]
    m = enumeration_metrics(gts, dets, [np.array([0.9, 0.8, 0.7, 0.6])])
    assert m["overlap_n"] == 1
    assert m["overlap_precision"] == 0.5 and m["overlap_recall"] == 1.0
    assert m["overlap_f1"] == pytest.approx(2 / 3) and m["overlap_acc"] == 0.5
    m = enumeration_metrics(gts, [arr(left, right)], [np.array([0.9, 0.8])])  # middle missed
    assert m["overlap_recall"] == 0.0 and m["overlap_acc"] == 0.0 and math.isnan(m["overlap_precision"])


def per_image_reference(
    gts: list[np.ndarray],
    dets: list[np.ndarray],
    scores: list[np.ndarray],
    score_thr: float,
    iou_thr: float,
    tau: float,
) -> dict[str, float]:
    """enumeration_metrics written image by image from match_detections and overlapping_subset."""
    tp_sum = fp_sum = fn_sum = correct = 0
    over = [0, 0, 0, 0]
    flags = []
    for g, d, s in zip(gts, dets, scores):
        tp, assigned, _ = match_detections(g, d, s, iou_thr)
        flags.append(tp)
        kept = s >= score_thr
        n_tp = int((tp & kept).sum())
        n_fp, n_fn = int(kept.sum()) - n_tp, len(g) - n_tp
        tp_sum, fp_sum, fn_sum, correct = (
            tp_sum + n_tp,
            fp_sum + n_fp,
            fn_sum + n_fn,
            correct + (n_fp == n_fn == 0),
        )
        if len(g) < 2:
            continue
        in_so = overlapping_subset(g, tau)
        detected = np.zeros(len(g), dtype=bool)
        detected[assigned[tp & kept]] = True
        iou = box_iou(d, g)
        fp = kept & ~tp
        best = iou[fp].argmax(axis=1) if fp.any() else np.zeros(0, dtype=int)
        so_fp = int((in_so[best] & (iou[fp][np.arange(len(best)), best] > 0)).sum())
        over = [over[0] + int((detected & in_so).sum()), over[1] + so_fp, over[2] + int((~detected & in_so).sum()),
                over[3] + int(in_so.sum())]  # fmt: skip
    n_gt = sum(len(g) for g in gts)
    tp_all, s_all = np.concatenate(flags), np.concatenate(scores)
    recall, precision, _ = pr_curve(tp_all, s_all, n_gt)
    fppi, mr = miss_rate_fppi(tp_all, s_all, n_gt, len(gts))
    return {
        "wcr": correct / len(gts),
        "aer": (fp_sum + fn_sum) / (tp_sum + fn_sum),
        "acc": tp_sum / (tp_sum + fp_sum + fn_sum),
        "tp": tp_sum,
        "fp": fp_sum,
        "fn": fn_sum,
        "map": average_precision(recall, precision),
        "mr2": log_average_miss_rate(fppi, mr),
        "overlap_tp_fp_fn_n": over,
    }


@pytest.mark.parametrize("seed", range(4))
def test_all_images_at_once_equal_image_by_image(seed: int) -> None:
    """Uneven images (none to many boxes), tied scores and IoUs: the same numbers, exactly."""
    rng = np.random.default_rng(seed)
    gts, dets, scores = [], [], []
    for _ in range(40):
        n, m = int(rng.integers(0, 14)), int(rng.integers(0, 40))
        xy = np.round(rng.uniform(0, 60, (n, 2)))
        g = np.concatenate([xy, xy + np.round(rng.uniform(1, 25, (n, 2)))], 1)
        d = g[rng.integers(0, n, m)] + rng.integers(-3, 4, (m, 4)) if n else rng.uniform(0, 60, (m, 4))
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        gts.append(g)
        dets.append(d.astype(float))
        scores.append(np.round(rng.uniform(0, 1, m), 1))  # many equal scores
    for score_thr, iou_thr, tau in ((0.5, 0.5, 0.5), (0.0, 0.3, 0.2), (0.7, 0.0, 0.0)):
        ours = enumeration_metrics(gts, dets, scores, score_thr, iou_thr, tau)
        ref = per_image_reference(gts, dets, scores, score_thr, iou_thr, tau)
        for key in ("wcr", "aer", "acc", "tp", "fp", "fn", "map", "mr2"):
            assert ours[key] == ref[key], key
        n_over = [ours["overlap_n"]]
        assert ref["overlap_tp_fp_fn_n"][3] == n_over[0]
        tp, fp, fn, _ = ref["overlap_tp_fp_fn_n"]
        np.testing.assert_equal(ours["overlap_precision"], tp / (tp + fp) if tp + fp else np.nan)
        np.testing.assert_equal(ours["overlap_recall"], tp / (tp + fn) if tp + fn else np.nan)


def test_scores_must_match_detections() -> None:
    with pytest.raises(ValueError, match="image 1: 2 detected boxes but 1 scores"):
        enumeration_metrics([arr(A), arr(A)], [arr(A), arr(A, B)], [np.array([0.9]), np.array([0.9])])


def test_evaluator_with_torch_tensors() -> None:
    gts, dets, scores = three_images()
    evaluator = EnumerationEvaluator(score_thr=0.5)
    targets = [
        {
            "boxes": torch.tensor(g, dtype=torch.float32),
            "labels": torch.ones(len(g), dtype=torch.int64),
            "image_id": i,
        }
        for i, g in enumerate(gts)
    ]
    preds = [
        {
            "boxes": torch.tensor(d, dtype=torch.float32),
            "scores": torch.tensor(s),
            "labels": torch.full((len(d),), 2),
        }
        for d, s in zip(dets, scores)
    ]
    evaluator.process(targets[:2], preds[:2])
    evaluator.process(targets[2:], preds[2:])
    metrics = evaluator.compute()
    expected = enumeration_metrics(gts, dets, scores)
    assert sorted(metrics) == sorted(f"enum/{k}" for k in expected)
    for key, value in expected.items():
        np.testing.assert_equal(metrics[f"enum/{key}"], value)
    assert metrics["enum/wcr"] == pytest.approx(1 / 3)  # labels (2 vs 1) are ignored
    evaluator.reset()
    assert evaluator.compute()["enum/n_images"] == 0


def test_crowd_annotations_are_not_counted_as_missed() -> None:
    from cytobench.evaluation import EnumerationEvaluator

    evaluator = EnumerationEvaluator()
    target = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float), "iscrowd": np.array([0, 1])}
    pred = {"boxes": np.array([[0, 0, 10, 10]], float), "scores": np.array([0.9])}
    evaluator.process([target], [pred])
    metrics = evaluator.compute()
    assert (metrics["enum/tp"], metrics["enum/fn"], metrics["enum/wcr"]) == (1, 0, 1.0)


@pytest.mark.parametrize("make", [EnumerationEvaluator, LocalizationEvaluator])
def test_one_score_per_detection_is_checked_at_process(make: type) -> None:
    target = {"boxes": np.array([[0, 0, 10, 10]], float), "image_id": 7}
    pred = {"boxes": np.array([[0, 0, 10, 10], [1, 1, 5, 5]], float), "scores": np.array([0.9])}
    with pytest.raises(ValueError, match="image 7: 2 detections but 1 scores"):
        make().process([target], [pred])
