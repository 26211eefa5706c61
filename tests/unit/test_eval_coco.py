"""COCO evaluation: parity with pycocotools' COCOeval and the evaluator / json round trip."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cytobench.errors import BadInputError
from cytobench.evaluation import (
    CocoEvaluator,
    coco_gt_from_targets,
    coco_results_from_predictions,
    evaluate_coco,
)
from cytobench.evaluation.coco import COCO_KPT_SIGMAS, DEFAULT_KPT_SIGMA

DET_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
KPT_KEYS = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
H, W = 96, 128


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def random_coco(
    seed: int, n_images: int = 30, max_objects: int = 12, seg: str = "polygon", n_kpts: int = 3
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Random 2-class ground truth (with crowd, all area sizes, keypoints) and noisy results."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "height": H, "width": W})
        for _ in range(rng.integers(0, max_objects + 1)):
            w, h = rng.uniform(2, 90), rng.uniform(2, 80)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            poly = [x, y, x + w, y, x + w, y + h, x + 0.3 * w, y + h]
            if seg == "rle" or (seg == "mixed" and rng.uniform() < 0.5):
                segmentation: Any = _rle(mask_utils.decode(mask_utils.frPyObjects([poly], H, W)[0]))
            else:
                segmentation = [poly]
            kp = np.stack(
                [rng.uniform(x, x + w, n_kpts), rng.uniform(y, y + h, n_kpts), rng.integers(0, 3, n_kpts)], 1
            )
            cat = int(rng.integers(1, 3))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": float(0.65 * w * h),
                    "iscrowd": int(rng.uniform() < 0.05),
                    "segmentation": segmentation,
                    "keypoints": kp.ravel().tolist(),
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                }
            )
            for _ in range(rng.integers(0, 3)):
                b = np.array([x, y, w, h]) + rng.normal(0, 3, 4)
                b[2:] = np.abs(b[2:]) + 1
                m = np.zeros((H, W), np.uint8)
                m[max(int(b[1]), 0) : int(b[1] + b[3]), max(int(b[0]), 0) : int(b[0] + b[2])] = 1
                kd = kp.copy()
                kd[:, :2] += rng.normal(0, 2, (n_kpts, 2))
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": cat if rng.uniform() < 0.9 else 3 - cat,
                        "bbox": b.tolist(),
                        "segmentation": _rle(m),
                        "keypoints": kd.ravel().tolist(),
                        "score": float(rng.uniform()),
                    }
                )
        for _ in range(rng.integers(0, 3)):  # pure false positives
            b = [*rng.uniform(0, 60, 2), *rng.uniform(3, 40, 2)]
            m = np.zeros((H, W), np.uint8)
            m[int(b[1]) : int(b[1] + b[3]), int(b[0]) : int(b[0] + b[2])] = 1
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 3)),
                    "bbox": b,
                    "segmentation": _rle(m),
                    "keypoints": np.stack(
                        [rng.uniform(0, W, n_kpts), rng.uniform(0, H, n_kpts), np.ones(n_kpts)], 1
                    )
                    .ravel()
                    .tolist(),
                    "score": float(rng.uniform()),
                }
            )
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}, results


def only(results: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Results carrying only the field of one iou type (plus ids and score)."""
    return [{k: v for k, v in r.items() if k in ("image_id", "category_id", "score", key)} for r in results]


def pycoco(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    iou_type: str,
    max_dets: list[int] | None = None,
    area: tuple[list[list[float]], list[str]] | None = None,
    sigmas: np.ndarray | None = None,
) -> COCOeval:
    """Reference run of pycocotools on deep copies; summarize() is called too."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if max_dets is not None:
            ev.params.maxDets = max_dets
        if area is not None:
            ev.params.areaRng, ev.params.areaRngLbl = area
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def ref_mean(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def as_array(stats: dict[str, float], keys: list[str]) -> np.ndarray:
    return np.array([stats[k] for k in keys])


def nan_for_minus_one(stats: np.ndarray) -> np.ndarray:
    return np.where(stats == -1, np.nan, stats)


@pytest.mark.parametrize(
    "iou_type,seg", [("bbox", "polygon"), ("segm", "polygon"), ("segm", "rle"), ("segm", "mixed")]
)
def test_parity_default_params(iou_type: str, seg: str) -> None:
    gt, results = random_coco(seed=1, seg=seg)
    res = only(results, "bbox" if iou_type == "bbox" else "segmentation")
    ref = nan_for_minus_one(pycoco(gt, res, iou_type).stats)
    exact = evaluate_coco(gt, res, iou_type, backend="pycocotools")
    assert list(exact) == DET_KEYS
    np.testing.assert_array_equal(as_array(exact, DET_KEYS), ref)
    fast = evaluate_coco(gt, res, iou_type, backend="faster")
    np.testing.assert_allclose(as_array(fast, DET_KEYS), ref, rtol=0, atol=1e-12)
    assert 0.05 < exact["AP"] < 0.95  # a non-trivial case


def test_parity_with_both_fields_in_results() -> None:
    """Results holding bbox and segmentation (detectron2 style) are scored exactly as pycocotools does."""
    gt, results = random_coco(seed=2)
    for iou_type in ("bbox", "segm"):
        ref = nan_for_minus_one(pycoco(gt, results, iou_type).stats)
        np.testing.assert_array_equal(
            as_array(evaluate_coco(gt, results, iou_type, backend="pycocotools"), DET_KEYS), ref
        )
        np.testing.assert_allclose(as_array(evaluate_coco(gt, results, iou_type), DET_KEYS), ref, atol=1e-12)


def test_parity_dense_custom_max_dets() -> None:
    """Images with > 100 objects: maxDets (1, 10, 300) changes AP, and AP uses the last maxDets."""
    gt, results = random_coco(seed=3, n_images=2, max_objects=250)
    for item in gt["annotations"] + results:
        item["category_id"] = 1
    res = only(results, "bbox")
    ev = pycoco(gt, res, "bbox", max_dets=[1, 10, 300])
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR300", "ARs", "ARm", "ARl"]
    for backend, atol in (("pycocotools", 0.0), ("faster", 1e-12)):
        ours = evaluate_coco(gt, res, "bbox", max_dets=(1, 10, 300), backend=backend)
        assert list(ours) == keys
        # pycocotools' summarize() takes AP at maxDets=100 (-> -1 here); the other stats use maxDets[2]=300
        np.testing.assert_allclose(
            as_array(ours, keys)[1:], nan_for_minus_one(ev.stats[1:]), rtol=0, atol=atol
        )
        assert ev.stats[0] == -1
        np.testing.assert_allclose(
            ours["AP"], ref_mean(ev.eval["precision"][:, :, :, 0, 2]), rtol=0, atol=atol
        )
    default = evaluate_coco(gt, res, "bbox")
    assert ours["AR300"] > default["AR100"] and ours["AP"] > default["AP"]


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_parity_custom_area_ranges(backend: str) -> None:
    gt, results = random_coco(seed=4)
    res = only(results, "segmentation")
    ranges = {"small": (0.0, 16.0**2), "medium": (16.0**2, 40.0**2), "large": (40.0**2, 1e5**2)}
    area = ([[0.0, 1e10], *[list(r) for r in ranges.values()]], ["all", "small", "medium", "large"])
    ref = nan_for_minus_one(pycoco(gt, res, "segm", area=area).stats)
    ours = evaluate_coco(gt, res, "segm", area_ranges=ranges, backend=backend)
    np.testing.assert_allclose(
        as_array(ours, DET_KEYS), ref, rtol=0, atol=0.0 if backend == "pycocotools" else 1e-12
    )
    assert ours["APs"] != evaluate_coco(gt, res, "segm", backend=backend)["APs"]


def test_custom_area_labels_name_the_keys() -> None:
    gt, results = random_coco(seed=5)
    res = only(results, "bbox")
    ranges = {"tiny": (0.0, 20.0**2), "rest": (20.0**2, 1e5**2), "huge": (1e6, 1e10)}
    ours = evaluate_coco(gt, res, "bbox", area_ranges=ranges, backend="pycocotools")
    assert list(ours) == [
        "AP", "AP50", "AP75", "AP_tiny", "AP_rest", "AP_huge", "AR1", "AR10", "AR100", "AR_tiny", "AR_rest", "AR_huge"
    ]  # fmt: skip
    area = ([[0.0, 1e10], *[list(r) for r in ranges.values()]], ["all", *ranges])
    ev = pycoco(gt, res, "bbox", area=area)
    assert ours["AP_tiny"] == ref_mean(ev.eval["precision"][:, :, :, 1, 2])
    assert ours["AR_rest"] == ref_mean(ev.eval["recall"][:, :, 2, 2])
    assert np.isnan(ours["AP_huge"]) and np.isnan(ours["AR_huge"])  # no ground truth: NaN, never -1


@pytest.mark.parametrize("n_kpts", [17, 2])
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_parity_keypoints(n_kpts: int, backend: str) -> None:
    gt, results = random_coco(seed=6, n_kpts=n_kpts)
    res = only(results, "keypoints")
    sigmas = COCO_KPT_SIGMAS if n_kpts == 17 else np.full(n_kpts, DEFAULT_KPT_SIGMA)
    ref = nan_for_minus_one(pycoco(gt, res, "keypoints", sigmas=sigmas).stats)
    ours = evaluate_coco(gt, res, "keypoints", backend=backend)
    assert list(ours) == KPT_KEYS
    np.testing.assert_allclose(
        as_array(ours, KPT_KEYS), ref, rtol=0, atol=0.0 if backend == "pycocotools" else 1e-12
    )
    assert ours["AP"] > 0.05
    custom = evaluate_coco(gt, res, "keypoints", max_dets=(50,), kpt_oks_sigmas=np.full(n_kpts, 0.2))
    assert custom["AP"] > ours["AP"]  # looser sigmas, more detections


def test_empty_results_give_zero_or_nan() -> None:
    gt, _ = random_coco(seed=7)
    gt["annotations"] = [a for a in gt["annotations"] if 32**2 <= a["area"] < 96**2]  # medium objects only
    for backend in ("faster", "pycocotools"):
        stats = evaluate_coco(gt, [], "bbox", backend=backend)
        undefined = ("APs", "ARs", "APl", "ARl")
        assert all(np.isnan(stats[k]) for k in undefined)
        assert all(v == 0.0 for k, v in stats.items() if k not in undefined)
    no_gt = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
    assert all(np.isnan(v) for v in evaluate_coco(no_gt, [], "segm").values())


def test_perfect_results_score_one() -> None:
    gt, _ = random_coco(seed=8)
    gt["annotations"] = [dict(a, iscrowd=0) for a in gt["annotations"]]
    res = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    stats = evaluate_coco(gt, res, "bbox", max_dets=(1, 10, 20))
    assert stats["AP"] == pytest.approx(1.0) and stats["AR20"] == pytest.approx(1.0)


def test_unknown_image_id_raises_bad_input() -> None:
    gt, results = random_coco(seed=9, n_images=3)
    res = only(results, "bbox") + [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(BadInputError, match="predictions.*999"):
        evaluate_coco(gt, res, "bbox")
    with pytest.raises(BadInputError, match="segmentation"):
        evaluate_coco(gt, only(results, "bbox"), "segm")


def test_missing_iscrowd_and_area_are_filled() -> None:
    gt, results = random_coco(seed=13, n_images=8)
    stripped, filled = copy.deepcopy(gt), copy.deepcopy(gt)
    for ann in stripped["annotations"]:
        del ann["iscrowd"], ann["area"]
    for ann in filled["annotations"]:
        ann["iscrowd"] = 0
        ann["area"] = float(
            mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], H, W)))
        )
    for iou_type in ("bbox", "segm"):
        np.testing.assert_equal(
            evaluate_coco(stripped, results, iou_type), evaluate_coco(filled, results, iou_type)
        )


def test_inputs_are_not_modified() -> None:
    gt, results = random_coco(seed=10, n_images=5)
    gt_before, res_before = copy.deepcopy(gt), copy.deepcopy(results)
    for iou_type in ("bbox", "segm", "keypoints"):
        for backend in ("faster", "pycocotools"):
            evaluate_coco(gt, results, iou_type, backend=backend)
    assert gt == gt_before and results == res_before


def _kps(boxes: np.ndarray, k: int = 2) -> np.ndarray:
    """(N, k, 3) visible keypoints 2 px inside the top-left corner of each xyxy box."""
    xy = boxes[:, None, :2].repeat(k, 1) + 2
    return np.concatenate([xy, np.ones((len(boxes), k, 1))], -1)


def _torch_pair(rng: np.random.Generator, image_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One image as torch target / prediction: predictions are jittered copies of some objects plus extras."""
    n = int(rng.integers(0, 8))
    gboxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        x0, y0 = rng.integers(0, W - 30), rng.integers(0, H - 30)
        gboxes[i] = (x0, y0, x0 + rng.integers(3, 30), y0 + rng.integers(3, 30))
    kept = gboxes[rng.uniform(size=n) < 0.8] + rng.integers(-2, 3, (1, 4)).astype(np.float32)
    extra = rng.integers(0, 60, (int(rng.integers(0, 3)), 2)).astype(np.float32)
    pboxes = np.clip(np.concatenate([kept, np.concatenate([extra, extra + 10], 1)]), 0, [W, H, W, H])
    pboxes[:, 2:] = np.maximum(pboxes[:, 2:], pboxes[:, :2] + 2)
    m = len(pboxes)
    gmask = np.zeros((n, H, W), np.uint8)
    pmask = np.zeros((m, 1, H, W), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(gboxes.astype(int)):
        gmask[i, y0:y1, x0:x1] = 1
    for i, (x0, y0, x1, y1) in enumerate(pboxes.astype(int)):
        pmask[i, 0, y0:y1, x0:x1] = rng.uniform(0.3, 1.0, (y1 - y0, x1 - x0))
    target = {
        "boxes": torch.from_numpy(gboxes),
        "labels": torch.from_numpy(np.where(rng.uniform(size=n) < 0.9, 1, 2)),
        "masks": torch.from_numpy(gmask),
        "keypoints": torch.from_numpy(_kps(gboxes).astype(np.float32)),
        "image_id": torch.tensor(image_id),
        "meta": {"file_name": f"img{image_id}.png", "orig_size": (H, W)},
    }
    pred = {
        "boxes": torch.from_numpy(pboxes),
        "scores": torch.from_numpy(rng.uniform(0, 1, m).astype(np.float32)),
        "labels": torch.from_numpy(np.where(rng.uniform(size=m) < 0.9, 1, 2)),
        "masks": torch.from_numpy(pmask),
        "keypoints": torch.from_numpy(_kps(pboxes).astype(np.float32)),
    }
    return target, pred


def _hand_json(targets: list[dict[str, Any]], preds: list[dict[str, Any]]) -> tuple[dict, list]:
    """The COCO json of the torch pairs, written out independently of coco_format."""
    images, anns, results = [], [], []
    for t, p in zip(targets, preds):
        iid = int(t["image_id"])
        images.append({"id": iid, "height": H, "width": W})
        for b, lab, msk, kp in zip(
            t["boxes"].numpy(), t["labels"].numpy(), t["masks"].numpy(), t["keypoints"].numpy()
        ):
            x0, y0, x1, y1 = (float(v) for v in b)
            anns.append(
                {"id": len(anns) + 1, "image_id": iid, "category_id": int(lab), "bbox": [x0, y0, x1 - x0, y1 - y0],
                 "area": float(msk.sum()), "iscrowd": 0, "segmentation": _rle(msk), "keypoints": kp.ravel().tolist(),
                 "num_keypoints": int((kp[:, 2] > 0).sum())}
            )  # fmt: skip
        for b, s, lab, msk, kp in zip(
            *(p[key].numpy() for key in ("boxes", "scores", "labels", "masks", "keypoints"))
        ):
            x0, y0, x1, y1 = (float(v) for v in b)
            results.append(
                {"image_id": iid, "category_id": int(lab), "score": float(s), "bbox": [x0, y0, x1 - x0, y1 - y0],
                 "segmentation": _rle(msk[0] > 0.5), "keypoints": kp.ravel().tolist()}
            )  # fmt: skip
    return {"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}, results


def test_evaluator_with_torch_equals_evaluate_coco_on_json() -> None:
    rng = np.random.default_rng(11)
    pairs = [_torch_pair(rng, image_id) for image_id in range(1, 26)]
    targets, preds = [p[0] for p in pairs], [p[1] for p in pairs]
    evaluator = CocoEvaluator(iou_types=("bbox", "segm", "keypoints"), max_dets=(1, 10, 300))
    for i in range(0, len(pairs), 4):  # batches of 4
        evaluator.process(targets[i : i + 4], preds[i : i + 4])
    metrics = evaluator.compute()
    gt, results = _hand_json(targets, preds)
    for iou_type in ("bbox", "segm", "keypoints"):
        expected = evaluate_coco(gt, results, iou_type, max_dets=(1, 10, 300))
        for key, value in expected.items():
            np.testing.assert_equal(metrics[f"coco/{iou_type}_{key}"], value)
    assert "coco/bbox_AR300" in metrics and 0.0 < metrics["coco/segm_AP"] < 1.0
    evaluator.reset()
    assert all(np.isnan(v) for v in evaluator.compute().values())


def test_public_converters_round_trip_through_json() -> None:
    rng = np.random.default_rng(12)
    pairs = [_torch_pair(rng, image_id) for image_id in (3, 7, 9)]
    targets, preds = [p[0] for p in pairs], [p[1] for p in pairs]
    gt = json.loads(json.dumps(coco_gt_from_targets(targets, categories=["a", "b"])))
    results = json.loads(json.dumps(coco_results_from_predictions(preds, [3, 7, 9])))
    assert gt["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert gt["images"][0] == {"id": 3, "height": H, "width": W, "file_name": "img3.png"}
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    hand_gt, hand_res = _hand_json(targets, preds)
    for iou_type in ("bbox", "segm"):
        assert evaluate_coco(gt, results, iou_type) == pytest.approx(
            evaluate_coco(hand_gt, hand_res, iou_type), nan_ok=True
        )
    evaluator = CocoEvaluator()
    evaluator.process(targets[:1], preds[:1])
    with pytest.raises(BadInputError, match="image_id 3"):
        evaluator.process(targets[:1], preds[:1])


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_chunked_matching_gives_the_arrays_of_one_call(iou_type: str, monkeypatch) -> None:
    """Images matched in chunks (memory flat in the number of images): precision / recall bit-equal."""
    from cytobench.evaluation import accumulate_coco, coco_backends

    gt, results = random_coco(seed=11, n_images=23, seg="mixed")
    res = only(results, {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type])
    whole = accumulate_coco(gt, res, iou_type, max_dets=(1, 10, 300))
    chunks = []

    def spy(*args):
        chunks.append(image_chunks(*args))
        return chunks[-1]

    image_chunks = coco_backends.image_chunks
    monkeypatch.setattr(coco_backends, "image_chunks", spy)
    monkeypatch.setattr(coco_backends, "EVAL_CHUNK_PAIRS", 200)  # a few images per chunk
    chunked = accumulate_coco(gt, res, iou_type, max_dets=(1, 10, 300))
    assert len(chunks) == 1 and len(chunks[0]) > 3  # matched in several chunks, accumulated once
    for key in ("precision", "recall"):
        assert np.array_equal(whole[key], chunked[key])
    assert (whole["precision"] > 0).any()


def test_image_chunks_keep_order_and_the_pair_budget() -> None:
    """Consecutive images per chunk; an image over the budget alone gets its own chunk."""
    from cytobench.evaluation.coco_backends import image_chunks

    pairs = {1: 5, 2: 5, 3: 20, 4: 1}
    assert image_chunks([1, 2, 3, 4, 5], pairs, 10) == [[1, 2], [3], [4, 5]]
    assert image_chunks([1, 2, 3, 4, 5], pairs, 100) == [[1, 2, 3, 4, 5]]
