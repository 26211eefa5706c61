"""COCO evaluation (bbox, segm, keypoints) with configurable ``maxDets`` and area ranges.

:func:`evaluate_coco` runs the per-image matching and accumulation of faster-coco-eval
(``backend="faster"``, default) or pycocotools (``backend="pycocotools"``) and then
summarises the precision / recall arrays itself, so that custom ``maxDets`` (dense images
have hundreds of objects) and custom area ranges are reported correctly: pycocotools'
``summarize()`` hard-codes ``maxDets=100`` for AP (-1 for ``maxDets=(1, 10, 300)``) and
``maxDets=20`` for keypoints.

Parity: with ``backend="pycocotools"`` the numbers are bit-identical to ``COCOeval`` with
the same parameters, summarised as ``COCOeval._summarize`` does (mean of the entries > -1).
With ``backend="faster"`` the per-image matching is identical but faster-coco-eval computes
precision as ``tp / (tp + fp)`` where pycocotools divides by ``tp + fp + eps``; the two
differ only when the best operating point is a single leading true positive (1.0 against
1 - 2.2e-16), so the summary numbers agree to ~1e-16 (tests use ``atol=1e-12``).

Undefined metrics: where pycocotools reports -1 (no ground truth in an area range / category
set) this module returns NaN, so it can never be mistaken for a score. An empty results
list is evaluated normally: 0.0 wherever ground truth exists.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytobench.errors import BadInputError
from cytobench.evaluation.base import Evaluator
from cytobench.evaluation.coco_backends import gc_paused, run_faster, run_pycocotools
from cytobench.evaluation.coco_prepare import prepare_gt, prepare_results
from cytobench.io.coco_convert import (
    coco_gt_from_targets,
    coco_results_from_predictions,
    image_size,
    make_categories,
    prediction_to_coco,
    target_to_coco,
)
from cytobench.types import Prediction, Target

IOU_TYPES = ("bbox", "segm", "keypoints")
#: COCO person-keypoint OKS sigmas (17 keypoints).
COCO_KPT_SIGMAS: np.ndarray = (
    np.array(
        [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
    )
    / 10.0
)
#: Sigma used for every keypoint when K != 17 and no sigmas are given: the mean COCO sigma.
DEFAULT_KPT_SIGMA: float = float(COCO_KPT_SIGMAS.mean())
ALL_AREA = (0.0, 1e5**2)
DET_AREA_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
KPT_AREA_RANGES: dict[str, tuple[float, float]] = {"medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
#: LIVECell's protocol (Edlund et al. 2021, their ``coco_evaluation.py``): cells are small and dense, so the
#: area ranges are small < 18^2, medium 18^2 - 31^2, large > 31^2 pixels, and up to 2000 detections per image
#: count (AP at the last maxDets); categories are pooled (``useCats = 0``), which is ``class_agnostic=True``.
LIVECELL_AREA_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 18.0**2),
    "medium": (18.0**2, 31.0**2),
    "large": (31.0**2, 1e5**2),
}
LIVECELL_MAX_DETS: tuple[int, ...] = (100, 500, 2000)
#: Target keys :class:`CocoEvaluator` can score predictions against (``truth_masks``).
TRUTH_MASK_KEYS = ("masks", "amodal_masks")
#: How a segm result's area (for the area ranges) is measured (``segm_det_area``): ``"box"``, what both COCO
#: libraries do with results that carry a ``bbox`` (its w * h), or ``"mask"``, its mask's pixel count.
SEGM_DET_AREAS = ("box", "mask")
#: The one category every object gets when categories are pooled (``class_agnostic``).
AGNOSTIC_CATEGORY: dict[str, Any] = {"id": 1, "name": "object"}
_AREA_TAGS = {"small": "s", "medium": "m", "large": "l"}


def _area_tag(label: str) -> str:
    """Key suffix of an area range: small/medium/large -> s/m/l, any other label -> ``_label``."""
    return _AREA_TAGS.get(label, f"_{label}")


def default_max_dets(iou_type: str) -> tuple[int, ...]:
    """COCO's maxDets: (1, 10, 100) for bbox / segm, (20,) for keypoints."""
    return (20,) if iou_type == "keypoints" else (1, 10, 100)


def _kpt_sigmas(gt: Mapping[str, Any], sigmas: Sequence[float] | None) -> np.ndarray:
    lengths = {len(a["keypoints"]) // 3 for a in gt["annotations"]}
    if len(lengths) > 1:
        raise BadInputError(
            "ground truth", f"annotations have different numbers of keypoints: {sorted(lengths)}"
        )
    k = lengths.pop() if lengths else len(sigmas) if sigmas is not None else 17
    if sigmas is None:
        return COCO_KPT_SIGMAS.copy() if k == 17 else np.full(k, DEFAULT_KPT_SIGMA)
    arr = np.asarray(sigmas, dtype=np.float64).ravel()
    if arr.size != k:
        raise ValueError(f"kpt_oks_sigmas has {arr.size} values but annotations have {k} keypoints")
    return arr


def accumulate_coco(
    gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    max_dets: Sequence[int] | None = None,
    area_ranges: Mapping[str, tuple[float, float]] | None = None,
    backend: str = "faster",
    kpt_oks_sigmas: Sequence[float] | None = None,
    copy_inputs: bool = True,
) -> dict[str, Any]:
    """Run COCO matching and accumulation; return the raw precision / recall arrays.

    Args: see :func:`evaluate_coco`.

    Returns:
        ``{"precision": (T, R, K, A, M), "recall": (T, K, A, M), "iou_thrs": (T,),
        "rec_thrs": (R,), "area_labels": [A labels, "all" first], "max_dets": [M, ascending]}``
        with pycocotools' layout (-1 where undefined); T = 10 IoU / OKS thresholds 0.5:0.95,
        R = 101 recall thresholds, K = categories.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if backend not in ("faster", "pycocotools"):
        raise ValueError(f"backend must be 'faster' or 'pycocotools', got {backend!r}")
    dets = sorted({int(m) for m in (max_dets if max_dets is not None else default_max_dets(iou_type))})
    if not dets or dets[0] < 1:
        raise ValueError(f"max_dets must be positive integers, got {max_dets}")
    ranges = (
        dict(area_ranges)
        if area_ranges is not None
        else (dict(KPT_AREA_RANGES) if iou_type == "keypoints" else dict(DET_AREA_RANGES))
    )
    all_range = ranges.pop("all", ALL_AREA)
    labels = ["all", *ranges]
    area_rng = [[float(lo), float(hi)] for lo, hi in [all_range, *ranges.values()]]

    if backend == "faster" and importlib.util.find_spec("faster_coco_eval") is None:
        warnings.warn(
            "faster-coco-eval is not installed; using pycocotools (same numbers, slower)", stacklevel=2
        )
        backend = "pycocotools"
    run = run_faster if backend == "faster" else run_pycocotools
    with gc_paused():
        gt_data = prepare_gt(gt, iou_type, copy_inputs)
        res = prepare_results(results, {img["id"] for img in gt_data["images"]}, iou_type, copy_inputs)
        sigmas = _kpt_sigmas(gt_data, kpt_oks_sigmas) if iou_type == "keypoints" else None
        n_gt = Counter(ann["image_id"] for ann in gt_data["annotations"])
        pairs = {image_id: n * n_gt[image_id] for image_id, n in Counter(r["image_id"] for r in res).items()}
        configure = functools.partial(_set_params, max_dets=dets, area_rng=area_rng, labels=labels)
        ev = run(gt_data, res, iou_type, sigmas, configure, pairs)
    return {
        "precision": np.asarray(ev.eval["precision"]),
        "recall": np.asarray(ev.eval["recall"]),
        "iou_thrs": np.asarray(ev.params.iouThrs),
        "rec_thrs": np.asarray(ev.params.recThrs),
        "area_labels": labels,
        "max_dets": dets,
    }


def _set_params(params: Any, max_dets: list[int], area_rng: list[list[float]], labels: list[str]) -> None:
    params.maxDets = list(max_dets)
    params.areaRng = area_rng
    params.areaRngLbl = list(labels)


def _mean_valid(values: np.ndarray) -> float:
    """pycocotools' ``_summarize`` reduction: mean of the entries > -1, NaN if there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def summarize_coco(arrays: Mapping[str, Any], iou_type: str = "bbox") -> dict[str, float]:
    """Summary statistics of :func:`accumulate_coco` arrays, named after their parameters.

    bbox / segm: ``AP, AP50, AP75`` and ``AP{area}`` per area range at the last maxDets;
    ``AR{m}`` for every maxDets m; ``AR{area}`` at the last maxDets. Keypoints: ``AP, AP50,
    AP75, AP{area}, AR, AR50, AR75, AR{area}``, all at the last maxDets. ``{area}`` is s / m / l
    for small / medium / large, ``_label`` for other range names.
    """
    precision, recall = arrays["precision"], arrays["recall"]
    iou_thrs, labels, dets = arrays["iou_thrs"], arrays["area_labels"], arrays["max_dets"]
    last = len(dets) - 1

    def ap(area: int = 0, iou: float | None = None) -> float:
        s = precision if iou is None else precision[np.where(iou == iou_thrs)[0]]
        return _mean_valid(s[:, :, :, area, last])

    def ar(area: int = 0, m: int = last, iou: float | None = None) -> float:
        s = recall if iou is None else recall[np.where(iou == iou_thrs)[0]]
        return _mean_valid(s[:, :, area, m])

    out = {"AP": ap(), "AP50": ap(iou=0.5), "AP75": ap(iou=0.75)}
    for a, label in enumerate(labels[1:], start=1):
        out[f"AP{_area_tag(label)}"] = ap(area=a)
    if iou_type == "keypoints":
        out.update({"AR": ar(), "AR50": ar(iou=0.5), "AR75": ar(iou=0.75)})
    else:
        for m, n_det in enumerate(dets):
            out[f"AR{n_det}"] = ar(m=m)
    for a, label in enumerate(labels[1:], start=1):
        out[f"AR{_area_tag(label)}"] = ar(area=a)
    return out


def evaluate_coco(
    gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    max_dets: Sequence[int] | None = None,
    area_ranges: Mapping[str, tuple[float, float]] | None = None,
    backend: str = "faster",
    kpt_oks_sigmas: Sequence[float] | None = None,
    copy_inputs: bool = True,
) -> dict[str, float]:
    """COCO metrics of a results list against a ground-truth dataset.

    Args:
        gt: COCO dataset dict (``images``, ``annotations`` with ``bbox`` as xywh absolute pixels,
            ``segmentation`` as polygons or RLE, ``keypoints`` flat [x, y, v]*K; ``categories``).
            Not modified.
        results: COCO results list (``image_id``, ``category_id``, ``score`` and ``bbox`` /
            ``segmentation`` (RLE) / ``keypoints``). Not modified.
        iou_type: ``"bbox"``, ``"segm"`` or ``"keypoints"``.
        max_dets: detections per image considered, ascending; None = COCO's default, (1, 10, 100)
            for bbox / segm and (20,) for keypoints. AP uses the last (largest) value.
        area_ranges: ``{label: (min_area, max_area)}``; None = COCO's ranges (small / medium /
            large; medium / large for keypoints). ``"all"`` = (0, 1e10) is always added first.
        backend: ``"faster"`` (faster-coco-eval, fast) or ``"pycocotools"`` (reference).
        kpt_oks_sigmas: (K,) OKS sigmas; None = COCO's for K = 17, else ``DEFAULT_KPT_SIGMA``.
        copy_inputs: copy the annotation and result dicts first, because both libraries write into
            them; False (faster) only for inputs that are not reused, e.g. json just read from disk.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl"}`` for the defaults (see :func:`summarize_coco`); values in [0, 1] or NaN where
        no ground truth makes the metric undefined.

    Raises:
        BadInputError: a result's ``image_id`` is not in ``gt`` (or other malformed input).
    """
    arrays = accumulate_coco(
        gt, results, iou_type, max_dets, area_ranges, backend, kpt_oks_sigmas, copy_inputs
    )
    return summarize_coco(arrays, iou_type)


def class_agnostic_coco(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Copies of a dataset dict and a results list with every object in one category.

    Pooling the categories this way is what pycocotools' ``useCats = 0`` does (LIVECell's protocol): every
    prediction may match every ground-truth object of its image, whatever either's class. The copies are
    shallow per item (the ``category_id`` is replaced, everything else shared), so pass
    ``copy_inputs=True`` (the default) to :func:`evaluate_coco` if the originals are reused.

    Returns:
        ``(gt, results)``: ``categories`` is ``[AGNOSTIC_CATEGORY]`` (id 1) and every ``category_id`` is 1.
    """
    cat_id = AGNOSTIC_CATEGORY["id"]
    out = {key: value for key, value in gt.items() if key not in ("annotations", "categories")}
    out["annotations"] = [{**ann, "category_id": cat_id} for ann in gt.get("annotations", [])]
    out["categories"] = [dict(AGNOSTIC_CATEGORY)]
    return out, [{**res, "category_id": cat_id} for res in results]


def without_boxes(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Results without their ``bbox``, so that segm evaluation measures each result by its mask.

    Both COCO libraries' ``loadRes`` take a result's area from its ``bbox`` (w * h) whenever the first
    result has one, also for segm evaluation; the area decides which area range an unmatched detection
    counts in. LIVECell's evaluation (after detectron2's) drops the boxes so that the mask's pixel count
    is used: that is ``segm_det_area="mask"``. Shallow copies; the inputs are not changed.
    """
    return [{key: value for key, value in res.items() if key != "bbox"} for res in results]


class CocoEvaluator(Evaluator):
    """Accumulates targets / predictions as COCO json and reports :func:`evaluate_coco` metrics.

    ``process`` converts each image at once (masks become RLE, so no image-sized arrays are
    kept); ``compute`` gives the same numbers as ``evaluate_coco`` on the json written by
    :func:`~cytobench.evaluation.coco_format.coco_gt_from_targets` and
    :func:`~cytobench.evaluation.coco_format.coco_results_from_predictions`. Keys:
    ``{prefix}/{iou_type}_{stat}``, e.g. ``coco/bbox_AP50``, ``coco/segm_AR300``.

    Args:
        iou_types: any of ``"bbox"``, ``"segm"`` (needs masks), ``"keypoints"`` (needs keypoints).
        max_dets: see :func:`evaluate_coco` (None = COCO's defaults per iou type).
        area_ranges: see :func:`evaluate_coco`.
        categories: None (ids seen in the data), category names (ids 1, 2, ...) or COCO dicts.
        prefix: namespace of the metric keys.
        backend: ``"faster"`` or ``"pycocotools"``.
        kpt_oks_sigmas: OKS sigmas for keypoints (see :func:`evaluate_coco`).
        class_agnostic: pool the categories: every ground-truth object and prediction is put in one
            category (:data:`AGNOSTIC_CATEGORY`), so a prediction may match an object of any class
            (pycocotools' ``useCats = 0``, LIVECell's protocol). ``categories`` is then ignored.
        truth_masks: the target key whose masks are the truth for ``segm``: ``"masks"`` (visible parts,
            the default) or ``"amodal_masks"`` (whole objects, hidden parts included). With amodal
            truth an object's area (for the area ranges) is its amodal mask's pixel count, not the
            target's ``area`` (which describes the visible outline).
        segm_det_area: how a prediction's area is measured for the ``segm`` area ranges: ``"box"`` (the
            default: its box's w * h, what both COCO libraries do with results that carry a box) or
            ``"mask"`` (its mask's pixel count, LIVECell's protocol; see :func:`without_boxes`).
    """

    def __init__(
        self,
        iou_types: Sequence[str] = ("bbox",),
        max_dets: Sequence[int] | None = None,
        area_ranges: Mapping[str, tuple[float, float]] | None = None,
        categories: Sequence[Any] | None = None,
        prefix: str = "coco",
        backend: str = "faster",
        kpt_oks_sigmas: Sequence[float] | None = None,
        class_agnostic: bool = False,
        truth_masks: str = "masks",
        segm_det_area: str = "box",
    ) -> None:
        bad = [t for t in iou_types if t not in IOU_TYPES]
        if bad:
            raise ValueError(f"unknown iou_types {bad}; choose from {IOU_TYPES}")
        if truth_masks not in TRUTH_MASK_KEYS:
            raise ValueError(f"truth_masks must be one of {TRUTH_MASK_KEYS}, got {truth_masks!r}")
        if segm_det_area not in SEGM_DET_AREAS:
            raise ValueError(f"segm_det_area must be one of {SEGM_DET_AREAS}, got {segm_det_area!r}")
        self.segm_det_area = segm_det_area
        self.class_agnostic = bool(class_agnostic)
        self.truth_masks = truth_masks
        self.iou_types = tuple(iou_types)
        self.max_dets = tuple(max_dets) if max_dets is not None else None
        self.area_ranges = dict(area_ranges) if area_ranges is not None else None
        self.categories = list(categories) if categories is not None else None
        self.prefix = prefix
        self.backend = backend
        self.kpt_oks_sigmas = kpt_oks_sigmas
        self.reset()

    def reset(self) -> None:
        self._images: list[dict[str, Any]] = []
        # Per image, its annotations and results as one json bytes object: a few hundred bytes per
        # object instead of ~1 KB of dicts, so that the state of a long evaluation stays small (the
        # numbers round-trip exactly: json writes floats as their shortest repr).
        self._packed: list[bytes] = []
        self._seen: set[int] = set()

    def process_image(self, target: Target, pred: Prediction) -> None:
        image, anns, results = self._convert(target, pred)
        self._add_image(image)
        self._packed.append(json.dumps([anns, results], separators=(",", ":")).encode())

    def _truth(self, target: Target) -> Target:
        """The target with ``truth_masks`` as its ``masks`` (the target itself for visible truth)."""
        if self.truth_masks == "masks":
            return target
        if target.get(self.truth_masks) is None:
            raise BadInputError(
                "targets",
                f"has no '{self.truth_masks}' (the evaluator scores against truth_masks={self.truth_masks!r})",
                f"image {target.get('image_id')}",
            )
        out = {key: value for key, value in target.items() if key != "area"}  # area of the amodal mask
        out["masks"] = target[self.truth_masks]
        return out  # type: ignore[return-value]

    def _convert(
        self, target: Target, pred: Prediction
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """One image as a COCO image entry, its annotations and its results (pooled if class-agnostic)."""
        masks = "segm" in self.iou_types
        kps = "keypoints" in self.iou_types
        target = self._truth(target) if masks else target
        image, anns = target_to_coco(target, 1, image_size(target, pred), masks, kps)
        results = prediction_to_coco(pred, image["id"], masks, kps)
        if self.class_agnostic:
            for item in (*anns, *results):
                item["category_id"] = AGNOSTIC_CATEGORY["id"]
        return image, anns, results

    def _add_image(self, image: dict[str, Any]) -> None:
        if image["id"] in self._seen:
            raise BadInputError("targets", f"image_id {image['id']} was processed twice")
        self._seen.add(image["id"])
        self._images.append(image)

    def state(self) -> dict[str, Any]:
        return {"images": self._images, "packed": self._packed}

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Union of several ranks' states, in rank order."""
        self.reset()
        for state in states:
            for image in state["images"]:
                self._add_image(image)
            self._packed.extend(state["packed"])

    def _unpacked(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """All annotations (ids numbered 1..N in image order) and all results."""
        anns: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for packed in self._packed:
            image_anns, image_results = json.loads(packed)
            anns.extend(image_anns)
            results.extend(image_results)
        for i, ann in enumerate(anns, start=1):
            ann["id"] = i
        return anns, results

    def _gt(self, anns: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
        if self.class_agnostic:
            categories = [dict(AGNOSTIC_CATEGORY)]
        else:
            ids = [a["category_id"] for a in anns] + [r["category_id"] for r in results]
            categories = make_categories(self.categories, ids)
        return {"images": self._images, "annotations": anns, "categories": categories}

    def coco_gt(self) -> dict[str, Any]:
        """The accumulated ground truth as a COCO dataset dict."""
        anns, results = self._unpacked()
        return self._gt(anns, results)

    def coco_results(self) -> list[dict[str, Any]]:
        """The accumulated predictions as a COCO results list."""
        return self._unpacked()[1]

    def _scored(self, results: list[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
        """The results as ``iou_type`` evaluation gets them (boxes left out for segm by mask area)."""
        return without_boxes(results) if iou_type == "segm" and self.segm_det_area == "mask" else results

    def compute(self) -> dict[str, float]:
        anns, results = self._unpacked()  # fresh dicts, used once: the COCO libraries may consume them
        gt = self._gt(anns, results)
        out: dict[str, float] = {}
        for i, iou_type in enumerate(self.iou_types):
            stats = evaluate_coco(
                gt,
                self._scored(results, iou_type),
                iou_type,
                self.max_dets,
                self.area_ranges,
                self.backend,
                self.kpt_oks_sigmas,
                copy_inputs=i < len(self.iou_types) - 1,  # the last run may consume them
            )
            out.update({f"{self.prefix}/{iou_type}_{key}": value for key, value in stats.items()})
        return out


__all__ = [
    "AGNOSTIC_CATEGORY",
    "COCO_KPT_SIGMAS",
    "LIVECELL_AREA_RANGES",
    "LIVECELL_MAX_DETS",
    "SEGM_DET_AREAS",
    "TRUTH_MASK_KEYS",
    "CocoEvaluator",
    "accumulate_coco",
    "class_agnostic_coco",
    "coco_gt_from_targets",
    "coco_results_from_predictions",
    "default_max_dets",
    "evaluate_coco",
    "summarize_coco",
    "without_boxes",
]
