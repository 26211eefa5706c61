"""LIVECell-protocol COCO evaluation: maxDets / area ranges / class-agnostic / amodal truth against pycocotools.

The reference is pycocotools' ``COCOeval`` with the same ``maxDets`` / ``areaRng`` (and ``useCats = 0`` for
class-agnostic, as LIVECell's own evaluation), summarised from its ``eval['precision' / 'recall']`` arrays
at the last maxDets (pycocotools' ``summarize`` hard-codes 100). Inputs: seeded random dense images (~50
objects, ~80 predictions each, two classes, sizes across the 18^2 / 31^2 area limits), built as json here
with pycocotools' own RLE encoder, independently of cytobench's converters.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cytobench.errors import BadInputError
from cytobench.evaluation import LIVECELL_AREA_RANGES, LIVECELL_MAX_DETS, CocoEvaluator, class_agnostic_coco

H, W = 96, 112
CONF = Path(__file__).resolve().parents[2] / "conf" / "evaluator" / "livecell_segm.yaml"
SMALL_DETS = (5, 20, 60)  # below the ~80 predictions per image: the cut-offs matter


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def dense_scene(seed: int, n_images: int = 3) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Targets (visible ``masks`` and ``amodal_masks``) and predictions of a few dense random images."""
    rng = np.random.default_rng(seed)
    out = []
    for image_id in range(1, n_images + 1):
        amodal, labels = [], []
        for _ in range(rng.integers(45, 56)):
            side = rng.integers(6, 45, 2)  # areas from 36 to ~2000: small, medium and large
            r, c = rng.integers(0, H - side[0]), rng.integers(0, W - side[1])
            m = np.zeros((H, W), bool)
            m[r : r + side[0], c : c + side[1]] = True
            amodal.append(m)
            labels.append(int(rng.integers(1, 3)))
        amodal_arr = np.stack(amodal)
        visible = amodal_arr.copy()
        for i in range(len(visible) - 1):  # later objects lie on top of earlier ones
            visible[i] &= ~amodal_arr[i + 1 :].any(axis=0)
        keep = visible.reshape(len(visible), -1).any(axis=1)  # objects hidden entirely are not annotated
        amodal_arr, visible, labels_arr = amodal_arr[keep], visible[keep], np.array(labels)[keep]
        target = {
            "image_id": image_id,
            "boxes": np.array([_box(m) for m in visible], np.float32),
            "labels": labels_arr,
            "masks": visible.astype(np.uint8),
            "amodal_masks": amodal_arr.astype(np.uint8),
        }
        preds, scores, plabels = [], [], []
        for _ in range(rng.integers(75, 86)):
            if rng.uniform() < 0.75:  # a jittered object (either outline), sometimes with the wrong class
                j = int(rng.integers(len(visible)))
                m = np.roll(
                    amodal_arr[j] if rng.uniform() < 0.5 else visible[j], rng.integers(-3, 4, 2), (0, 1)
                )
                label = int(labels_arr[j]) if rng.uniform() < 0.8 else 3 - int(labels_arr[j])
            else:  # a false positive
                side = rng.integers(4, 30, 2)
                r, c = rng.integers(0, H - side[0]), rng.integers(0, W - side[1])
                m = np.zeros((H, W), bool)
                m[r : r + side[0], c : c + side[1]] = True
                label = int(rng.integers(1, 3))
            if not m.any():
                continue
            preds.append(m)
            scores.append(float(rng.uniform()))
            plabels.append(label)
        pred = {
            "boxes": np.array([_box(m) for m in preds], np.float32),
            "scores": np.array(scores, np.float32),
            "labels": np.array(plabels, np.int64),
            "masks": np.stack(preds).astype(np.uint8),
        }
        out.append((target, pred))
    return out


def reference_json(scene: list, truth: str = "masks") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    images, anns, results = [], [], []
    for target, pred in scene:
        image_id = target["image_id"]
        images.append({"id": image_id, "height": H, "width": W})
        for m, label in zip(target[truth], target["labels"]):
            x0, y0, x1, y1 = _box(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": _rle(m),
                    "area": float(m.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
        for m, label, score in zip(pred["masks"], pred["labels"], pred["scores"]):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": _rle(m),
                    "score": float(score),
                }
            )
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}, results


def pycocotools_stats(
    gt: dict[str, Any], results: list[dict[str, Any]], max_dets: tuple[int, ...], use_cats: bool = True
) -> dict[str, float]:
    """COCOeval with LIVECell's area ranges and ``max_dets``, summarised at the last maxDets by hand."""
    gt = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}  # pycocotools writes into both
    results = [dict(r) for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "segm")
        ev.params.maxDets = list(max_dets)
        ev.params.areaRng = [[0, 1e5**2], [0, 18**2], [18**2, 31**2], [31**2, 1e5**2]]
        ev.params.areaRngLbl = ["all", "small", "medium", "large"]
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
    precision, recall, thrs = ev.eval["precision"], ev.eval["recall"], ev.params.iouThrs

    def mean(s: np.ndarray) -> float:
        s = s[s > -1]
        return float(np.mean(s)) if s.size else float("nan")

    out = {
        "AP": mean(precision[..., 0, -1]),
        "AP50": mean(precision[thrs == 0.5][..., 0, -1]),
        "AP75": mean(precision[thrs == 0.75][..., 0, -1]),
    }
    for a, tag in enumerate("sml", start=1):
        out[f"AP{tag}"] = mean(precision[:, :, :, a, -1])
    for m, n in enumerate(max_dets):
        out[f"AR{n}"] = mean(recall[:, :, 0, m])
    for a, tag in enumerate("sml", start=1):
        out[f"AR{tag}"] = mean(recall[:, :, a, -1])
    return out


def ours(scene: list, prefix: str = "coco", **kwargs: Any) -> dict[str, float]:
    ev = CocoEvaluator(iou_types=("segm",), area_ranges=LIVECELL_AREA_RANGES, prefix=prefix, **kwargs)
    ev.process([t for t, _ in scene], [p for _, p in scene])
    return {k.split("_", 1)[1]: v for k, v in ev.compute().items()}


@pytest.fixture(scope="module")
def scene() -> list:
    return dense_scene(0)


@pytest.mark.parametrize("max_dets", [LIVECELL_MAX_DETS, SMALL_DETS], ids=["livecell", "cut"])
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_area_ranges_and_max_dets_match_pycocotools(scene: list, max_dets: tuple, backend: str) -> None:
    gt, results = reference_json(scene)  # results without boxes: pycocotools measures them by their masks
    ref = pycocotools_stats(gt, results, max_dets)
    got = ours(scene, max_dets=max_dets, backend=backend, segm_det_area="mask")
    assert list(got) == list(ref)
    assert got == pytest.approx(ref, abs=1e-12, nan_ok=True)
    # the data exercise every range, and the cut-offs bite
    assert all(0 < ref[k] < 1 for k in ("APs", "APm", "APl"))
    if max_dets == SMALL_DETS:
        assert ref["AR5"] < ref["AR20"] < ref["AR60"]


def test_segm_det_area_box_is_the_libraries_default(scene: list) -> None:
    """With boxes in the results both libraries measure a detection by its box: the default, unchanged."""
    gt, results = reference_json(scene)
    boxed = [dict(r, bbox=mask_utils.toBbox(r["segmentation"]).tolist()) for r in results]
    ref_box = pycocotools_stats(gt, boxed, LIVECELL_MAX_DETS)
    ref_mask = pycocotools_stats(gt, results, LIVECELL_MAX_DETS)
    assert ours(scene, max_dets=LIVECELL_MAX_DETS) == pytest.approx(ref_box, abs=1e-12, nan_ok=True)
    assert ref_box["AP"] == ref_mask["AP"] and ref_box["APl"] != pytest.approx(ref_mask["APl"], abs=1e-3)
    with pytest.raises(ValueError, match="segm_det_area"):
        CocoEvaluator(segm_det_area="polygon")


@pytest.mark.parametrize("max_dets", [LIVECELL_MAX_DETS, SMALL_DETS], ids=["livecell", "cut"])
def test_class_agnostic_is_use_cats_0(scene: list, max_dets: tuple) -> None:
    gt, results = reference_json(scene)
    ref = pycocotools_stats(gt, results, max_dets, use_cats=False)
    got = ours(scene, max_dets=max_dets, class_agnostic=True, segm_det_area="mask")
    assert got == pytest.approx(ref, abs=1e-12, nan_ok=True)
    per_class = ours(scene, max_dets=max_dets, segm_det_area="mask")
    assert got["AP50"] > per_class["AP50"]  # a fifth of the predictions carry the wrong class
    # the json helper gives the same numbers
    pooled_gt, pooled_res = class_agnostic_coco(gt, results)
    assert pooled_gt["categories"] == [{"id": 1, "name": "object"}]
    assert (
        {a["category_id"] for a in pooled_gt["annotations"]} == {r["category_id"] for r in pooled_res} == {1}
    )
    assert gt["annotations"][0]["category_id"] in (1, 2) and len(gt["categories"]) == 2  # inputs untouched
    assert pycocotools_stats(pooled_gt, pooled_res, max_dets) == pytest.approx(ref, nan_ok=True)


def test_amodal_truth_scores_against_whole_objects(scene: list) -> None:
    visible_gt, results = reference_json(scene, "masks")
    amodal_gt, _ = reference_json(scene, "amodal_masks")
    got_visible = ours(scene, max_dets=LIVECELL_MAX_DETS, segm_det_area="mask")
    got_amodal = ours(scene, max_dets=LIVECELL_MAX_DETS, truth_masks="amodal_masks", segm_det_area="mask")
    assert got_visible == pytest.approx(
        pycocotools_stats(visible_gt, results, LIVECELL_MAX_DETS), nan_ok=True
    )
    assert got_amodal == pytest.approx(pycocotools_stats(amodal_gt, results, LIVECELL_MAX_DETS), nan_ok=True)
    assert got_amodal["AP"] != pytest.approx(got_visible["AP"], abs=1e-3)
    # the object's area (area ranges) is the amodal mask's, whatever area the target carries
    with_area = [({**t, "area": t["masks"].reshape(len(t["masks"]), -1).sum(1)}, p) for t, p in scene]
    assert ours(
        with_area, max_dets=LIVECELL_MAX_DETS, truth_masks="amodal_masks", segm_det_area="mask"
    ) == pytest.approx(got_amodal, nan_ok=True)


def test_amodal_truth_needs_amodal_masks_and_a_known_key(scene: list) -> None:
    target, pred = scene[0]
    ev = CocoEvaluator(iou_types=("segm",), truth_masks="amodal_masks")
    with pytest.raises(BadInputError, match="amodal_masks"):
        ev.process_image({k: v for k, v in target.items() if k != "amodal_masks"}, pred)
    with pytest.raises(ValueError, match="truth_masks"):
        CocoEvaluator(truth_masks="outline")
    # bbox-only evaluation does not read masks, so it needs none
    CocoEvaluator(iou_types=("bbox",), truth_masks="amodal_masks").process_image(
        {k: v for k, v in target.items() if k != "amodal_masks"}, pred
    )


def test_defaults_unchanged_by_the_new_options(scene: list) -> None:
    plain = CocoEvaluator(iou_types=("bbox", "segm"))
    explicit = CocoEvaluator(iou_types=("bbox", "segm"), class_agnostic=False, truth_masks="masks")
    for ev in (plain, explicit):
        ev.process([t for t, _ in scene], [p for _, p in scene])
    a, b = plain.compute(), explicit.compute()
    assert list(a) == list(b) and np.array_equal(list(a.values()), list(b.values()), equal_nan=True)
    assert plain.coco_gt() == explicit.coco_gt()


def test_livecell_config_is_the_protocol() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ev = instantiate(OmegaConf.load(CONF))
    assert isinstance(ev, CocoEvaluator)
    assert ev.iou_types == ("segm",) and ev.max_dets == LIVECELL_MAX_DETS
    assert {k: tuple(v) for k, v in ev.area_ranges.items()} == LIVECELL_AREA_RANGES
    assert ev.class_agnostic and ev.truth_masks == "masks" and ev.prefix == "coco"
    assert ev.segm_det_area == "mask"
