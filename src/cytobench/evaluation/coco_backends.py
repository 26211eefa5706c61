"""The two COCO matching-and-accumulation backends behind :func:`cytobench.evaluation.coco.accumulate_coco`.

:func:`run_faster` (faster-coco-eval, matched in memory-bounded chunks of images) and :func:`run_pycocotools`
take the prepared ground truth and results and return the library's ``COCOeval`` after ``accumulate``;
summarising its arrays is :mod:`cytobench.evaluation.coco`'s work.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["EVAL_CHUNK_PAIRS", "gc_paused", "image_chunks", "run_faster", "run_pycocotools"]


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Print function that drops everything (faster-coco-eval logging)."""


#: IoU-matrix entries (gt x detections, summed over a chunk's images) per faster-coco-eval ``evaluate`` call:
#: ~64 MiB of float64, so memory does not grow with the number of dense images (300 x 400 each), while sparse
#: sets (a few objects per image) fit in one fused evaluate-and-accumulate call, the library's fastest path.
EVAL_CHUNK_PAIRS = 8_000_000


def image_chunks(image_ids: list[Any], pairs: Mapping[Any, int], budget: int) -> list[list[Any]]:
    """Consecutive runs of ``image_ids`` whose summed ``pairs`` stay within ``budget`` (at least one image)."""
    chunks: list[list[Any]] = [[]]
    total = 0
    for image_id in image_ids:
        n = pairs.get(image_id, 0)
        if chunks[-1] and total + n > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(image_id)
        total += n
    return chunks


@contextlib.contextmanager
def gc_paused() -> Any:
    """Pause Python's cyclic garbage collector: building the libraries' indexes allocates ~10 small dicts per
    object, which triggers full collections over everything alive (the caller's data too) without freeing
    anything. Reference counting still frees memory; the previous state is restored on exit."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_faster(
    gt: dict[str, Any],
    res: list[dict],
    iou_type: str,
    sigmas: np.ndarray | None,
    configure: Any,
    pairs: Mapping[Any, int],
) -> Any:
    """faster-coco-eval's evaluate + accumulate with its logging silenced; returns the COCOeval.

    ``pairs``: per image id, the number of IoU entries its matching computes (gt x detections). Within
    :data:`EVAL_CHUNK_PAIRS` in all, one fused evaluate-and-accumulate call. Otherwise images are matched
    in chunks of at most that many entries (the per-image matching is independent, and each chunk's IoU
    matrices are dropped once matched); the chunks' per-image evaluations are then put in the order one
    call over every image gives ([category][area][image]) and accumulated once, so the numbers are those
    of a single call.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt, print_function=_quiet)
    coco_dt = coco_gt.loadRes(res)
    coco_dt.print_function = _quiet
    fused = sum(pairs.values()) <= EVAL_CHUNK_PAIRS
    ev = COCOeval_faster(
        coco_gt, coco_dt, iou_type, print_function=_quiet, kpt_oks_sigmas=sigmas, separate_eval=not fused
    )
    configure(ev.params)
    if fused:
        ev.evaluate()  # evaluates and accumulates in one C++ call
        return ev
    image_ids = sorted(set(ev.params.imgIds))
    parts = []
    for chunk in image_chunks(image_ids, pairs, EVAL_CHUNK_PAIRS):
        ev.params.imgIds = chunk
        ev.evaluate()
        parts.append((len(chunk), ev._evalImgs_cpp))
        ev.ious = ev._evalImgs_cpp = None  # this chunk's IoU matrices go now
    n_groups = len(ev.params.catIds if ev.params.useCats else [-1]) * len(ev.params.areaRng)
    merged = [
        item
        for group in range(n_groups)  # [category][area], each over all images in order
        for n, evals in parts
        for item in evals[group * n : (group + 1) * n]
    ]
    ev.params.imgIds = image_ids
    ev._paramsEval = copy.deepcopy(ev.params)
    ev._evalImgs_cpp = merged
    ev.accumulate()
    return ev


def run_pycocotools(
    gt: dict[str, Any],
    res: list[dict],
    iou_type: str,
    sigmas: np.ndarray | None,
    configure: Any,
    pairs: Mapping[Any, int],
) -> Any:
    """pycocotools' evaluate + accumulate with stdout silenced; returns the COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if res:
            coco_dt = coco_gt.loadRes(res)
        else:  # pycocotools' loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(gt["images"]),
                "categories": gt["categories"],
                "annotations": [],
            }
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = sigmas
        configure(ev.params)
        ev.evaluate()
        ev.accumulate()
    return ev
