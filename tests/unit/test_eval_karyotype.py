"""Karyotyping metrics on hand-computed cases: per-class P/R/F1, AP50, confusion, Denver groups, cells."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cytobench.evaluation import KaryotypeEvaluator, karyotype_metrics
from cytobench.evaluation.karyotype import (
    denver_same_group,
    greedy_match,
    is_normal_karyotype,
    prf_from_counts,
    sensitivity_specificity,
)
from cytobench.reporting.karyotype_plots import plot_confusion_matrix

NAN = float("nan")
NORMAL_XY = sorted(
    [c for c in range(1, 23) for _ in range(2)] + [23, 24]
)  # 46,XY; 21s at 40-41, 22s at 42-43
NORMAL_XX = sorted([c for c in range(1, 23) for _ in range(2)] + [23, 23])


def _boxes(n: int, start: int = 0) -> np.ndarray:
    """``n`` disjoint 10 x 30 boxes in a row (IoU 0 between any two, 1 with themselves)."""
    x = 12.0 * np.arange(start, start + n)
    return np.stack([x, np.zeros(n), x + 10.0, np.full(n, 30.0)], axis=1)


def _cell(true_labels, pred_labels=None, scores=None, extra=()):
    """One image: truth ``true_labels`` at disjoint boxes, a detection on each box labelled ``pred_labels``
    (None: the truth; a 0 drops that detection), plus ``extra`` (label, score) detections on empty boxes."""
    gl = np.asarray(true_labels, dtype=np.int64)
    gt = _boxes(len(gl))
    pl = gl.copy() if pred_labels is None else np.asarray(pred_labels, dtype=np.int64)
    sc = np.full(len(gl), 0.9) if scores is None else np.asarray(scores, dtype=np.float64)
    keep = pl > 0
    det, dl, ds = gt[keep], pl[keep], sc[keep]
    if extra:
        det = np.concatenate([det, _boxes(len(extra), start=len(gl) + 5)])
        dl = np.concatenate([dl, [label for label, _ in extra]])
        ds = np.concatenate([ds, [score for _, score in extra]])
    return gt, gl, det, dl, ds


def _run(cells, **kwargs):
    return karyotype_metrics(*(list(part) for part in zip(*cells)), **kwargs)


# ------------------------------------------------------------------------------------------------ matching
def test_greedy_match_higher_score_first_and_falls_back_to_the_next_best_truth() -> None:
    gt = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], dtype=float)  # the two truths overlap (IoU 2/3)
    det = np.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10]], dtype=float)
    # det 1: IoU 9.5/10.5 = 0.905 with truth 0, 8.5/11.5 = 0.739 with truth 1; det 0 (higher score) takes truth 0
    d2g, g2d = greedy_match(gt, det, np.array([0.9, 0.8]))
    assert d2g.tolist() == [0, 1] and g2d.tolist() == [0, 1]
    d2g, _ = greedy_match(gt, det, np.array([0.8, 0.9]))  # det 1 first: truth 0 (0.905), det 0 falls back
    assert d2g.tolist() == [1, 0]
    d2g, _ = greedy_match(gt, det, np.array([0.5, 0.5]))  # equal scores: the earlier detection first
    assert d2g.tolist() == [0, 1]
    d2g, _ = greedy_match(gt[:1], det, np.array([0.9, 0.8]))  # one truth: the second is a duplicate
    assert d2g.tolist() == [0, -1]
    d2g, _ = greedy_match(gt, det, np.array([0.9, 0.8]), iou_thr=0.95)  # only det 0 / truth 0 reaches 0.95
    assert d2g.tolist() == [0, -1]


def test_greedy_match_per_class_only_pairs_equal_labels() -> None:
    gt, det = _boxes(2), _boxes(2)
    scores = np.array([0.9, 0.8])
    d2g, g2d = greedy_match(gt, det, scores, gt_labels=[21, 22], det_labels=[22, 22])
    assert d2g.tolist() == [-1, 1] and g2d.tolist() == [-1, 1]
    d2g, _ = greedy_match(gt, det, scores)  # class-agnostic: both pair up
    assert d2g.tolist() == [0, 1]
    with pytest.raises(ValueError, match="both"):
        greedy_match(gt, det, scores, gt_labels=[21, 22])
    empty = greedy_match(np.zeros((0, 4)), det, scores)
    assert empty[0].tolist() == [-1, -1] and empty[1].shape == (0,)


def test_thresholded_counts_equal_matching_only_the_kept_detections() -> None:
    """Per-class flags come from one matching over all detections; on the kept ones they must equal a
    matching run on the kept detections alone (they lead the score ranking)."""
    rng = np.random.default_rng(3)
    gt = _boxes(30)
    gl = rng.integers(1, 4, 30)
    det = np.concatenate([gt, gt]) + rng.normal(0, 2.0, (60, 4))
    dl = rng.integers(1, 4, 60)
    s = rng.uniform(0, 1, 60)
    res = _run([(gt, gl, det, dl, s)], score_thr=0.5)
    kept = s >= 0.5
    d2g, g2d = greedy_match(gt, det[kept], s[kept], 0.5, gl, dl[kept])
    tp = np.bincount(dl[kept][d2g >= 0] - 1, minlength=24)
    fn = np.bincount(gl[g2d < 0] - 1, minlength=24)
    assert res.tp.tolist() == tp.tolist() and res.fn.tolist() == fn.tolist()
    assert res.fp.sum() == kept.sum() - tp.sum()


# ------------------------------------------------------------------------------------------ per-class P/R/F1
def test_per_class_precision_recall_f1_by_hand() -> None:
    # truth: 1 @ box0, 1 @ box1, 2 @ box2
    # detections: 1 @ box0 (0.9, TP), 2 @ box1 (0.8, wrong class), 2 @ box2 (0.7, TP),
    #             3 @ an empty box (0.6, FP), 1 @ another empty box (0.3, below score_thr)
    gt = _boxes(3)
    gl = np.array([1, 1, 2])
    det = np.concatenate([gt, _boxes(2, start=10)])
    dl = np.array([1, 2, 2, 3, 1])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.3])
    res = _run([(gt, gl, det, dl, s)])
    # class 1: TP 1, FP 0, FN 1; class 2: TP 1, FP 1, FN 0; class 3: TP 0, FP 1, FN 0
    assert (
        res.tp[:3].tolist() == [1, 1, 0]
        and res.fp[:3].tolist() == [0, 1, 1]
        and res.fn[:3].tolist() == [1, 0, 0]
    )
    np.testing.assert_allclose(res.precision[:3], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(res.recall[:3], [0.5, 1.0, NAN])
    np.testing.assert_allclose(res.f1[:3], [2 / 3, 2 / 3, 0.0])
    assert np.isnan(res.f1[3:]).all()
    m = res.summary()
    assert m["precision"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["recall"] == pytest.approx((0.5 + 1) / 2)
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert m["micro_precision"] == pytest.approx(2 / 4)  # TP 2, FP 2, FN 1
    assert m["micro_recall"] == pytest.approx(2 / 3)
    assert m["micro_f1"] == pytest.approx(4 / 7)
    assert m["f1_1"] == pytest.approx(2 / 3) and m["f1_2"] == pytest.approx(2 / 3) and math.isnan(m["f1_X"])
    # class-agnostic: (1 -> 1), (1 -> 2), (2 -> 2) matched; the class-3 detection is false; nothing missed
    assert res.confusion.sum() == 3
    assert res.confusion[0, 0] == 1 and res.confusion[0, 1] == 1 and res.confusion[1, 1] == 1
    assert res.false_detections[2] == 1 and res.false_detections.sum() == 1 and res.missed.sum() == 0
    assert m["class_accuracy"] == pytest.approx(2 / 3)
    assert m["denver_accuracy"] == 1.0  # 1 -> 2 stays in group A
    # AP50: class 1 ranks TP (0.9), FP (0.3) over 2 truths -> 0.5; class 2 ranks FP, TP over 1 truth -> 0.5
    np.testing.assert_allclose(res.ap50[:3], [0.5, 0.5, NAN])
    assert m["mAP50"] == pytest.approx(0.5)
    # best class-mean F1 over the classes with truth (1 and 2), thresholds 0.9, 0.8, 0.7, 0.3:
    # mean F1 (2/3 + 0) / 2, (2/3 + 0) / 2, (2/3 + 2/3) / 2, (1/2 + 2/3) / 2 -> 0.7 wins
    assert m["best_f1"] == pytest.approx(2 / 3) and m["best_f1_conf"] == 0.7
    assert m["best_f1_precision"] == pytest.approx((1 + 0.5) / 2)
    assert m["best_f1_recall"] == pytest.approx((0.5 + 1) / 2)


def test_prf_from_counts_nan_where_undefined() -> None:
    p, r, f = prf_from_counts(np.array([3, 0, 0]), np.array([1, 2, 0]), np.array([1, 0, 0]))
    np.testing.assert_allclose(p, [0.75, 0.0, NAN])
    np.testing.assert_allclose(r, [0.75, NAN, NAN])
    np.testing.assert_allclose(f, [0.75, 0.0, NAN])


def test_ap50_over_images_counts_detections_below_the_score_threshold() -> None:
    # class 7, one truth per image. Image A: TP 0.9, duplicate FP 0.8; image B: TP at 0.4 (< score_thr)
    # ranking TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    gt = _boxes(1)
    a = (gt, [7], np.concatenate([gt, gt]), [7, 7], [0.9, 0.8])
    b = (gt, [7], gt, [7], [0.4])
    res = _run([a, b])
    assert res.ap50[6] == pytest.approx(5 / 6)
    assert res.summary()["mAP50"] == pytest.approx(5 / 6)
    assert res.recall[6] == pytest.approx(0.5)  # thresholded: image B's detection does not count
    assert res.precision[6] == pytest.approx(0.5)  # the duplicate at 0.8 does


# --------------------------------------------------------------------------------- confusion and Denver groups
def test_confusion_matrix_of_a_21_22_swap() -> None:
    pred = list(NORMAL_XY)
    pred[40], pred[42] = 22, 21  # one 21 called 22, one 22 called 21
    res = _run([_cell(NORMAL_XY, pred)])
    expected = np.diag(np.bincount(np.array(NORMAL_XY) - 1, minlength=24))
    expected[20, 20] = expected[21, 21] = 1
    expected[20, 21] = expected[21, 20] = 1
    np.testing.assert_array_equal(res.confusion, expected)
    assert res.missed.sum() == 0 and res.false_detections.sum() == 0
    m = res.summary()
    assert m["class_accuracy"] == pytest.approx(44 / 46)
    assert m["denver_accuracy"] == 1.0  # 21 and 22 are both group G
    assert m["exact_match"] == 0.0  # two chromosomes classed wrong
    assert m["count_match"] == 1.0  # ... but the counts, and so the karyotype, are right
    assert res.pred_karyotype == res.true_karyotype == ["46,XY"]
    # per-class: class 21 TP 1 FP 1 FN 1 -> F1 = 2 / 4; same for 22; every other class F1 = 1
    assert m["f1_21"] == pytest.approx(0.5) and m["f1_22"] == pytest.approx(0.5) and m["f1_Y"] == 1.0
    assert m["f1"] == pytest.approx((22 + 0.5 + 0.5) / 24)


def test_denver_accuracy_a_mistake_inside_the_group_vs_one_leaving_it() -> None:
    pred = list(NORMAL_XY)
    pred[40] = 22  # 21 -> 22: stays in G
    pred[0] = 6  # 1 -> 6: leaves A for C
    m = _run([_cell(NORMAL_XY, pred)]).summary()
    assert m["class_accuracy"] == pytest.approx(44 / 46)
    assert m["denver_accuracy"] == pytest.approx(45 / 46)
    assert denver_same_group([21, 21, 23, 1, 13, 23], [22, 24, 6, 4, 21, 24]).tolist() == [
        True, True, True, False, False, False
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- whole cells
def test_exact_match_perfect_cell_vs_cells_with_one_mistake() -> None:
    wrong_class = list(NORMAL_XY)
    wrong_class[10] = 7  # a 6 called 7
    missed = list(NORMAL_XY)
    missed[3] = 0  # a 2 not detected
    cells = [
        _cell(NORMAL_XY),  # perfect
        _cell(NORMAL_XY, extra=[(5, 0.2)]),  # a spurious detection below score_thr: still perfect
        _cell(NORMAL_XY, wrong_class),
        _cell(NORMAL_XY, missed),
        _cell(NORMAL_XY, extra=[(5, 0.7)]),  # a false detection
    ]
    res = _run(cells)
    assert res.exact.tolist() == [True, True, False, False, False]
    assert res.summary()["exact_match"] == pytest.approx(2 / 5)
    assert res.missed[1] == 1 and res.false_detections[4] == 1


def test_aneuploidy_sensitivity_specificity_on_four_cells() -> None:
    trisomy = sorted([*NORMAL_XY, 21])
    turner = [c for c in NORMAL_XX if c != 23] + [23]  # 45,X
    missed_5 = list(NORMAL_XX)
    missed_5[8] = 0  # a 5 not detected
    cells = [
        _cell(NORMAL_XY),  # normal, called normal (true negative)
        _cell(trisomy),  # 47,XY,+21 detected (true positive)
        _cell(turner, extra=[(23, 0.8)]),  # 45,X with a spurious X: called 46,XX (false negative)
        _cell(NORMAL_XX, missed_5),  # 46,XX with a missed 5: called 45,XX,-5 (false positive)
    ]
    res = _run(cells)
    assert res.true_karyotype == ["46,XY", "47,XY,+21", "45,X", "46,XX"]
    assert res.pred_karyotype == ["46,XY", "47,XY,+21", "46,XX", "45,XX,-5"]
    assert res.true_abnormal.tolist() == [False, True, True, False]
    assert res.pred_abnormal.tolist() == [False, True, False, True]
    m = res.summary()
    assert m["aneuploidy_sensitivity"] == 0.5 and m["aneuploidy_specificity"] == 0.5
    # Wilson, k = 1, n = 2, z = 1.95996: centre 0.5, half-width z sqrt(1/8 + z^2/16) / (1 + z^2/2) = 0.40547
    for key in ("aneuploidy_sensitivity", "aneuploidy_specificity"):
        assert m[f"{key}_lo"] == pytest.approx(0.09453, abs=1e-5)
        assert m[f"{key}_hi"] == pytest.approx(0.90547, abs=1e-5)
    assert m["aneuploidy_n_abnormal"] == 2 and m["aneuploidy_n_normal"] == 2
    assert m["exact_match"] == 0.5 and m["count_match"] == 0.5


def test_is_normal_karyotype() -> None:
    assert is_normal_karyotype(NORMAL_XY) and is_normal_karyotype(NORMAL_XX)
    assert not is_normal_karyotype(sorted([*NORMAL_XY, 21]))  # 47,XY,+21
    assert not is_normal_karyotype([c for c in NORMAL_XY if c != 24])  # 45,X
    assert not is_normal_karyotype([*NORMAL_XX[:-2], 24, 24])  # 46,YY
    assert not is_normal_karyotype([])
    with pytest.raises(ValueError, match="1-24"):
        is_normal_karyotype([0, 1])


def test_sensitivity_specificity_all_right_and_undefined() -> None:
    out = sensitivity_specificity([True, True, False], [True, True, False])
    assert out["sensitivity"] == 1.0 and out["sensitivity_hi"] == 1.0 and out["sensitivity_lo"] < 1.0
    assert out["specificity"] == 1.0
    out = sensitivity_specificity([False, False], [True, False])
    assert math.isnan(out["sensitivity"]) and math.isnan(out["sensitivity_lo"])
    assert out["specificity"] == 0.5


# ---------------------------------------------------------------------------------------------- empty cases
def test_empty_predictions() -> None:
    res = _run([_cell(NORMAL_XY, [0] * 46)])
    m = res.summary()
    assert np.isnan(res.precision).all() and math.isnan(m["precision"]) and math.isnan(m["micro_precision"])
    assert m["recall"] == 0.0 and m["f1"] == 0.0 and m["mAP50"] == 0.0
    assert res.missed.tolist() == np.bincount(np.array(NORMAL_XY) - 1, minlength=24).tolist()
    assert res.confusion.sum() == 0 and math.isnan(m["denver_accuracy"]) and math.isnan(m["class_accuracy"])
    assert m["exact_match"] == 0.0 and res.pred_abnormal.tolist() == [True]
    assert m["aneuploidy_specificity"] == 0.0 and math.isnan(m["aneuploidy_sensitivity"])


def test_empty_truth() -> None:
    spurious = (np.zeros((0, 4)), [], _boxes(2), [3, 3], [0.9, 0.6])
    nothing = (np.zeros((0, 4)), [], np.zeros((0, 4)), [], [])
    res = _run([spurious, nothing])
    m = res.summary()
    assert res.fp[2] == 2 and res.false_detections[2] == 2 and res.precision[2] == 0.0
    assert math.isnan(m["recall"]) and m["f1"] == 0.0 and math.isnan(m["mAP50"])
    assert res.exact.tolist() == [False, True]
    m = karyotype_metrics([], [], [], [], []).summary()  # no image at all
    assert m["n_images"] == 0 and math.isnan(m["exact_match"]) and math.isnan(m["f1"])


# ---------------------------------------------------------------------------------------------- evaluator
def _pairs(n: int) -> list[tuple[dict, dict]]:
    """Noisy 24-class predictions of random cells: jittered boxes, some wrong labels, dropped and extra boxes."""
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        labels = np.array(NORMAL_XY if i % 3 else sorted([*NORMAL_XX, 18]), dtype=np.int64)
        boxes = _boxes(len(labels)).astype(np.float32)
        keep = rng.random(len(labels)) > 0.05
        pred_labels = np.where(rng.random(len(labels)) < 0.1, rng.integers(1, 25, len(labels)), labels)[keep]
        pred_boxes = boxes[keep] + rng.normal(0, 1.0, (int(keep.sum()), 4)).astype(np.float32)
        extra = int(rng.integers(0, 3))
        pred_boxes = np.concatenate([pred_boxes, _boxes(extra, start=60).astype(np.float32)])
        pred_labels = np.concatenate([pred_labels, rng.integers(1, 25, extra)])
        target = {"boxes": boxes, "labels": labels, "image_id": i + 1}
        pred = {"boxes": pred_boxes, "labels": pred_labels, "scores": rng.uniform(0.2, 1.0, len(pred_labels))}
        pairs.append((target, pred))
    return pairs


def test_evaluator_keys_and_two_states_merge_to_the_single_pass() -> None:
    pairs = _pairs(8)
    whole = KaryotypeEvaluator()
    whole.process([t for t, _ in pairs], [p for _, p in pairs])
    ranks = [KaryotypeEvaluator(), KaryotypeEvaluator()]
    for rank, evaluator in enumerate(ranks):
        shard = pairs[rank::2]
        evaluator.process([t for t, _ in shard], [p for _, p in shard])
    merged = KaryotypeEvaluator()
    merged.load_states([r.state() for r in ranks])
    expected, got = whole.compute(), merged.compute()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key
    np.testing.assert_array_equal(whole.result().confusion, merged.result().confusion)
    for key in ("precision", "recall", "f1", "mAP50", "denver_accuracy", "exact_match",
                "aneuploidy_sensitivity", "aneuploidy_specificity_lo", "aneuploidy_specificity_hi",
                "f1_1", "f1_X", "f1_Y"):  # fmt: skip
        assert f"karyo/{key}" in expected
    assert all(isinstance(v, float) for v in expected.values())
    rows = merged.karyotypes()
    assert len(rows) == 8 and sorted(r["image_id"] for r in rows) == list(range(1, 9))
    assert rows[0]["true"] == "47,XX,+18"


def test_evaluator_matches_the_function_and_drops_crowd_truths() -> None:
    gt, gl, det, dl, s = _cell(NORMAL_XY)
    evaluator = KaryotypeEvaluator(score_thr=0.3)
    crowd = np.zeros(47, np.int64)
    crowd[-1] = 1
    target = {
        "boxes": np.concatenate([gt, _boxes(1, start=80)]),
        "labels": np.append(gl, 5),
        "iscrowd": crowd,
    }
    evaluator.process([target], [{"boxes": det, "labels": dl, "scores": s}])
    m = evaluator.compute()
    assert m["karyo/exact_match"] == 1.0 and m["karyo/mAP50"] == 1.0 and m["karyo/f1"] == 1.0
    assert evaluator.karyotypes() == [
        {"image_id": None, "true": "46,XY", "predicted": "46,XY", "exact": True}
    ]
    with pytest.raises(ValueError, match="1-24"):
        evaluator.process(
            [{"boxes": gt[:1], "labels": [0]}], [{"boxes": det[:1], "labels": [1], "scores": [1.0]}]
        )
        evaluator.compute()


# ------------------------------------------------------------------------------------------------------ plot
def test_confusion_plot_writes_a_png(tmp_path) -> None:
    pred = list(NORMAL_XY)
    pred[40], pred[42] = 22, 21
    res = _run([_cell(NORMAL_XY, pred)])
    path = tmp_path / "confusion.png"
    fig = plot_confusion_matrix(res.confusion, path, title="21 <-> 22")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-2:] == ["X", "Y"]
    small = tmp_path / "small.png"
    plot_confusion_matrix(np.array([[2, 1], [0, 3]]), small, class_names=["a", "b"])
    assert small.exists()
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.zeros((2, 3)))
