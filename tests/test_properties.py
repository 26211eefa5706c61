"""Property-based tests (hypothesis) of the COCO loader and the evaluators (issue 12).

The loader: random valid datasets load and round-trip through save / load; random corruptions (any json
value put anywhere, a key dropped, random bytes) either load or raise a :class:`BadInputError`, never
another exception, and whatever loads can be scored by ``cytobench eval`` without another exception.
The evaluators (COCO bbox, enumeration, localization) on random valid scenes: metrics in [0, 1] or NaN,
perfect predictions score 1, the order of images and of predictions does not matter, empty images
never crash.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytobench.cli import evaluate_files
from cytobench.errors import BadInputError, CorruptAnnotation
from cytobench.evaluation import CocoEvaluator, EnumerationEvaluator, LocalizationEvaluator
from cytobench.io.coco import load_coco, load_coco_results, save_coco, save_coco_results

#: 40 examples a test keep the file under 30 s; CYTOBENCH_HYPOTHESIS_EXAMPLES=2000 searches harder.
SETTINGS = settings(
    max_examples=int(os.environ.get("CYTOBENCH_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
SIZE = 64  # px, every image of the evaluator scenes
COUNT_KEYS = {"enum/tp", "enum/fp", "enum/fn", "enum/n_images", "enum/overlap_n"}
RATIO_KEYS = {"enum/aer"}  # (FP + FN) / (TP + FN): an error rate, may exceed 1
EVAL_KINDS = ("coco-bbox", "enumeration", "localization")


# ------------------------------------------------------------------------------------------ strategies
@st.composite
def coco_datasets(draw: st.DrawFn) -> dict[str, Any]:
    """A valid COCO dataset: 0-3 images, 1-3 categories (some with keypoints), boxes inside their image,
    optional polygon, keypoints, area and iscrowd."""
    sizes = draw(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), max_size=3))
    images = [
        {"id": i + 1, "file_name": f"im{i}.png", "width": w, "height": h} for i, (w, h) in enumerate(sizes)
    ]
    n_kps = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
    categories = [
        {"id": 10 + c, "name": f"class{c}", **({"keypoints": [f"k{j}" for j in range(k)]} if k else {})}
        for c, k in enumerate(n_kps)
    ]
    annotations = []
    for image in images if images else []:
        for _ in range(draw(st.integers(0, 3))):
            w_img, h_img = image["width"], image["height"]
            fx, fy = draw(st.floats(0, 0.9)), draw(st.floats(0, 0.9))
            fw, fh = draw(st.floats(0.05, 1 - fx)), draw(st.floats(0.05, 1 - fy))
            x, y, w, h = fx * w_img, fy * h_img, fw * w_img, fh * h_img
            category = draw(st.sampled_from(categories))
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image["id"],
                "category_id": category["id"],
                "bbox": [x, y, w, h],
            }
            if draw(st.booleans()):
                ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            if draw(st.booleans()):
                ann.update(area=w * h, iscrowd=0)
            k = len(category.get("keypoints", []))
            if k and draw(st.booleans()):
                ann["keypoints"] = [
                    v for _ in range(k) for v in (x + w / 2, y + h / 2, draw(st.sampled_from([0, 1, 2])))
                ]
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


def json_paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys / indices) to a node below the root of a json value."""
    paths = []
    children = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in children:
        paths.append((*prefix, key))
        paths += json_paths(value, (*prefix, key))
    return paths


@st.composite
def corrupted(draw: st.DrawFn, data: Any) -> Any:
    """``data`` with one node replaced by a random json value or deleted (or the whole file replaced)."""
    data = json.loads(json.dumps(data))
    paths = json_paths(data)
    if not paths or draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    path = draw(st.sampled_from(paths))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return data


def results_for(gt: dict[str, Any]) -> list[dict[str, Any]]:
    """Every annotation of ``gt`` as a detection (perfect predictions in COCO results form)."""
    out = []
    for i, ann in enumerate(gt["annotations"]):
        res = {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"]}
        res["score"] = 1.0 - i / (len(gt["annotations"]) + 1)
        if "keypoints" in ann:
            res["keypoints"] = ann["keypoints"]
        out.append(res)
    return out


@st.composite
def scenes(draw: st.DrawFn, perfect: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """0-4 images of ``SIZE`` px: (gt boxes (N, 4) xyxy, distinct; detections (M, 4); scores (M,)).

    Scores are distinct over the whole scene (ties would make the order of predictions matter); with
    ``perfect`` the detections are the ground truth with scores >= 0.5.
    """
    box = st.tuples(
        st.integers(0, SIZE - 2), st.integers(0, SIZE - 2), st.integers(1, SIZE), st.integers(1, SIZE)
    )
    as_xyxy = [lambda b: (b[0], b[1], min(SIZE, b[0] + b[2]), min(SIZE, b[1] + b[3]))][0]
    images = []
    for _ in range(draw(st.integers(0, 4))):
        gts = draw(st.lists(box.map(as_xyxy), max_size=5, unique=True))
        dets = gts if perfect else draw(st.lists(box.map(as_xyxy), max_size=6))
        images.append(
            (np.array(gts, dtype=np.float64).reshape(-1, 4), np.array(dets, dtype=np.float64).reshape(-1, 4))
        )
    total = sum(len(dets) for _, dets in images)
    low = 0.5 if perfect else 0.0
    scores = draw(st.lists(st.floats(low, 1.0), min_size=total, max_size=total, unique=True))
    out, start = [], 0
    for gts, dets in images:
        out.append((gts, dets, np.array(scores[start : start + len(dets)], dtype=np.float64)))
        start += len(dets)
    return out


def evaluate(
    scene: list[tuple[np.ndarray, np.ndarray, np.ndarray]], ids: list[int] | None = None
) -> dict[str, float]:
    """COCO bbox + enumeration + localization metrics of a scene (image ids 1..N unless given)."""
    ids = ids if ids is not None else list(range(1, len(scene) + 1))
    targets, predictions = [], []
    for image_id, (gts, dets, scores) in zip(ids, scene):
        targets.append(
            {
                "boxes": gts,
                "labels": np.ones(len(gts), dtype=np.int64),
                "image_id": image_id,
                "meta": {"orig_size": (SIZE, SIZE)},
            }
        )
        predictions.append({"boxes": dets, "scores": scores, "labels": np.ones(len(dets), dtype=np.int64)})
    metrics: dict[str, float] = {}
    for evaluator in (CocoEvaluator(categories=["cell"]), EnumerationEvaluator(), LocalizationEvaluator()):
        evaluator.process(targets, predictions)
        metrics.update(evaluator.compute())
    return metrics


def assert_in_range(metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        if key in COUNT_KEYS:
            assert value >= 0 and float(value).is_integer(), (key, value)
        elif key in RATIO_KEYS:
            assert math.isnan(value) or value >= 0, (key, value)
        else:
            assert math.isnan(value) or 0.0 <= value <= 1.0, (key, value)


# ------------------------------------------------------------------------------------------ COCO loader
@SETTINGS
@given(data=coco_datasets())
def test_valid_datasets_load_and_round_trip(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        first = save_coco(Path(tmp) / "a.json", data)
        loaded = load_coco(first)
        assert loaded == data
        assert load_coco(save_coco(Path(tmp) / "b.json", loaded)) == data
        results = results_for(data)
        assert load_coco_results(save_coco_results(Path(tmp) / "r.json", results), data) == results


@SETTINGS
@given(st.data())
def test_corrupted_ground_truth_loads_or_is_bad_input(draw: st.DataObject) -> None:
    """Anything ``load_coco`` accepts, ``cytobench eval`` scores (or refuses with a BadInputError)."""
    gt = draw.draw(coco_datasets())
    bad = draw.draw(corrupted(gt))
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = Path(tmp) / "gt.json"
        gt_path.write_text(json.dumps(bad))
        pred_path = save_coco_results(Path(tmp) / "pred.json", results_for(gt))
        try:
            load_coco(gt_path)
        except BadInputError:
            return
        for kind in EVAL_KINDS:
            try:
                evaluate_files(kind, gt_path, pred_path)
            except BadInputError:
                pass


@SETTINGS
@given(st.data())
def test_corrupted_results_load_or_are_bad_input(draw: st.DataObject) -> None:
    gt = draw.draw(coco_datasets())
    bad = draw.draw(corrupted(results_for(gt)))
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = save_coco(Path(tmp) / "gt.json", gt)
        pred_path = Path(tmp) / "pred.json"
        pred_path.write_text(json.dumps(bad))
        try:
            load_coco_results(pred_path, gt)
        except BadInputError:
            return
        for kind in EVAL_KINDS:
            try:
                evaluate_files(kind, gt_path, pred_path)
            except BadInputError:
                pass


def _ann(data: dict[str, Any]) -> dict[str, Any]:
    return data["annotations"][0]


GT_FAULTS = {
    "negative width": lambda d: _ann(d)["bbox"].__setitem__(2, -_ann(d)["bbox"][2]),
    "zero height": lambda d: _ann(d)["bbox"].__setitem__(3, 0),
    "outside": lambda d: _ann(d)["bbox"].__setitem__(0, 400.0),
    "nan box": lambda d: _ann(d)["bbox"].__setitem__(1, math.nan),
    "unknown image": lambda d: _ann(d).__setitem__("image_id", 99),
    "unknown category": lambda d: _ann(d).__setitem__("category_id", 99),
    "duplicate id": lambda d: d["annotations"].append(dict(_ann(d))),
    "odd polygon": lambda d: _ann(d).__setitem__("segmentation", [[1, 1, 2, 1, 2]]),
    "rle size": lambda d: _ann(d).__setitem__("segmentation", {"size": [1000, 1], "counts": [1000]}),
    "keypoints": lambda d: _ann(d).__setitem__("keypoints", [1, 1, 2, 1]),
    "width": lambda d: d["images"][0].__setitem__("width", -1),
}
RESULT_FAULTS = {
    "nan score": lambda r: r[0].__setitem__("score", math.nan),
    "score 1.7": lambda r: r[0].__setitem__("score", 1.7),
    "score -0.3": lambda r: r[0].__setitem__("score", -0.3),
    "text score": lambda r: r[0].__setitem__("score", "0.5"),
    "unknown image": lambda r: r[0].__setitem__("image_id", 99),
    "zero width": lambda r: r[0]["bbox"].__setitem__(2, 0.0),
    "keypoints": lambda r: r[0].__setitem__("keypoints", [1, 1]),
}


@SETTINGS
@given(data=coco_datasets().filter(lambda d: d["annotations"]), fault=st.sampled_from(sorted(GT_FAULTS)))
def test_known_faults_are_always_refused(data: dict[str, Any], fault: str) -> None:
    GT_FAULTS[fault](data)
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(CorruptAnnotation):
            load_coco(save_coco(Path(tmp) / "gt.json", data))


@SETTINGS
@given(data=coco_datasets().filter(lambda d: d["annotations"]), fault=st.sampled_from(sorted(RESULT_FAULTS)))
def test_known_result_faults_are_always_refused(data: dict[str, Any], fault: str) -> None:
    results = results_for(data)
    RESULT_FAULTS[fault](results)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pred.json"
        path.write_text(json.dumps(results))  # NaN as the bare NaN other tools write
        with pytest.raises(CorruptAnnotation):
            load_coco_results(path, data)


@SETTINGS
@given(content=st.binary(max_size=64))
def test_random_bytes_are_bad_input(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.json"
        path.write_bytes(content)
        for load in (load_coco, load_coco_results):
            try:
                load(path)
            except BadInputError:
                pass


# ------------------------------------------------------------------------------------------- evaluators
@SETTINGS
@given(scene=scenes())
def test_metrics_are_fractions_or_nan(scene: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    metrics = evaluate(scene)
    assert_in_range(metrics)
    assert metrics["enum/n_images"] == len(scene)


@SETTINGS
@given(scene=scenes(perfect=True))
def test_perfect_predictions_score_one(scene: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    metrics = evaluate(scene)
    assert_in_range(metrics)
    if scene:
        assert metrics["enum/wcr"] == 1.0
        assert metrics["enum/fp"] == metrics["enum/fn"] == 0
    if any(len(gts) for gts, _, _ in scene):
        for key in (
            "coco/bbox_AP",
            "coco/bbox_AP50",
            "enum/f1",
            "enum/map",
            "loc/auc@eps1",
            "loc/recall@eps1",
        ):
            assert metrics[key] == pytest.approx(1.0), key


@SETTINGS
@given(scene=scenes(), seed=st.integers(0, 2**32 - 1))
def test_order_of_images_and_predictions_does_not_matter(
    scene: list[tuple[np.ndarray, np.ndarray, np.ndarray]], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    ids = list(range(1, len(scene) + 1))
    order = rng.permutation(len(scene))
    shuffled = []
    for k in order:
        gts, dets, scores = scene[k]
        p = rng.permutation(len(dets))
        shuffled.append((gts, dets[p], scores[p]))
    expected = evaluate(scene, ids)
    assert evaluate(shuffled, [ids[k] for k in order]) == pytest.approx(expected, nan_ok=True, abs=1e-12)


@SETTINGS
@given(n_empty=st.integers(1, 3), scene=scenes())
def test_empty_images_never_crash(
    n_empty: int, scene: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> None:
    empty = (np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0))
    metrics = evaluate([*scene, *[empty] * n_empty])
    assert_in_range(metrics)
    assert metrics["enum/n_images"] == len(scene) + n_empty


def test_no_images_at_all() -> None:
    metrics = evaluate([])
    assert_in_range(metrics)
    assert math.isnan(metrics["coco/bbox_AP"]) and math.isnan(metrics["enum/wcr"])
