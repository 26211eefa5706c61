"""Counting-error (confusion) matrix measured on simulated FISH images whose truth is known.

:func:`calibrate_confusion` simulates images with a balanced karyotype mix (so every row of the matrix is
well measured), runs the same signal detector as ``fish analyze`` and tabulates the detected
``(n_red, n_green)`` pattern of each whole nucleus against its true karyotype. With ``segmenter=None`` the
nuclei are the true masks (the matrix then holds spot-counting errors only); with a segmenter, predicted
whole nuclei are matched one-to-one to true whole nuclei at mask IoU >= 0.5 (greedy, highest IoU first) and
only matched nuclei are tabulated, so errors of segmentation that cut or merge nuclei enter the matrix while
nuclei the segmenter invents or misses do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.fish.analyze import count_signals
from cytobench.fish.channels import FishImage, read_fish_image
from cytobench.fish.mosaicism import KARYOTYPE_PATTERNS, ConfusionMatrix, measure_confusion
from cytobench.fish.segmenters import DESTROYED, WHOLE, Nuclei, Segmenter

__all__ = ["TruthSegmenter", "calibrate_confusion", "confusion_from_dataset", "match_nuclei"]


class TruthSegmenter:
    """The ground-truth nuclei of a simulated (COCO) set as a segmenter, looked up by file name.

    Args:
        ann_file: COCO json with polygon nuclei (``simulate_fish`` output).
    """

    name = "truth"

    def __init__(self, ann_file: str | Path) -> None:
        from cytobench.simulate.fish import load_fish_truth

        self.truth = {t.file_name: t for t in load_fish_truth(ann_file)}

    def karyotypes(self, file_name: str) -> list[str | None]:
        """True karyotype per nucleus of an image, in :meth:`segment` order (None for destroyed)."""
        return [n.karyotype for n in self.truth[file_name].nuclei]

    def segment(self, image: FishImage) -> Nuclei:
        truth = self.truth[image.path.name]
        labels = np.array([WHOLE if n.category == "whole" else DESTROYED for n in truth.nuclei], np.int64)
        masks = truth.masks(None).reshape(-1, *image.shape)
        return Nuclei(masks, labels, np.ones(len(labels), np.float32))


def match_nuclei(pred: np.ndarray, truth: np.ndarray, iou_thr: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of ``(P, H, W)`` predicted to ``(T, H, W)`` true masks by IoU.

    Returns:
        ``[(pred index, truth index), ...]`` with IoU >= ``iou_thr``, highest IoU first.
    """
    if len(pred) == 0 or len(truth) == 0:
        return []
    boxes_p, boxes_t = _mask_boxes(pred), _mask_boxes(truth)
    iou = np.zeros((len(pred), len(truth)))
    for i, (py0, py1, px0, px1) in enumerate(boxes_p):
        for j, (ty0, ty1, tx0, tx1) in enumerate(boxes_t):
            y0, y1, x0, x1 = max(py0, ty0), min(py1, ty1), max(px0, tx0), min(px1, tx1)
            if y0 >= y1 or x0 >= x1:
                continue
            inter = np.count_nonzero(pred[i, y0:y1, x0:x1] & truth[j, y0:y1, x0:x1])
            union = np.count_nonzero(pred[i]) + np.count_nonzero(truth[j]) - inter
            iou[i, j] = inter / max(union, 1)
    pairs, used_p, used_t = [], set(), set()
    for flat in np.argsort(-iou, axis=None):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < iou_thr:
            break
        if i not in used_p and j not in used_t:
            pairs.append((i, j))
            used_p.add(i)
            used_t.add(j)
    return pairs


def _mask_boxes(masks: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` pixel extent (exclusive ends) of each ``(H, W)`` mask; empty masks get ``(0, 0, 0, 0)``."""
    out = []
    for mask in masks:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        out.append((rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) if rows.size else (0, 0, 0, 0))
    return out


def confusion_from_dataset(
    ann_file: str | Path,
    images_dir: str | Path,
    *,
    segmenter: Segmenter | None = None,
    spot_params: Any = None,
    karyotypes: Sequence[str] | None = None,
    max_count: int = 4,
) -> ConfusionMatrix:
    """Confusion matrix of detected patterns vs true karyotypes on an annotated FISH set.

    Args:
        ann_file: COCO json with ``karyotype`` per whole nucleus.
        images_dir: folder of its images.
        segmenter: None uses the true nuclei; otherwise predicted whole nuclei matched to true ones.
        spot_params: spot detector parameters (None: the paper's defaults).
        karyotypes: matrix rows (default: :data:`KARYOTYPE_PATTERNS` names present in the set).
        max_count: counts above this are clipped.
    """
    truth_seg = TruthSegmenter(ann_file)
    true_k: list[str] = []
    images: list[str] = []
    red: list[int] = []
    green: list[int] = []
    for file_name in truth_seg.truth:
        image = read_fish_image(Path(images_dir) / file_name)
        gt = truth_seg.segment(image)
        names = truth_seg.karyotypes(file_name)
        if segmenter is None:
            nuclei, pairs = gt, [(k, k) for k in range(len(names))]
        else:
            nuclei = segmenter.segment(image)
            pw, tw = np.flatnonzero(nuclei.labels == WHOLE), np.flatnonzero(gt.labels == WHOLE)
            pairs = [(int(pw[i]), int(tw[j])) for i, j in match_nuclei(nuclei.masks[pw], gt.masks[tw])]
        counts = count_signals(image, nuclei, spot_params).counts
        for p_idx, t_idx in pairs:
            if names[t_idx] is None or counts[p_idx, 0] < 0:
                continue
            true_k.append(str(names[t_idx]))
            images.append(file_name)
            red.append(int(counts[p_idx, 0]))
            green.append(int(counts[p_idx, 1]))
    wanted = (
        list(karyotypes) if karyotypes is not None else [k for k in KARYOTYPE_PATTERNS if k in set(true_k)]
    )
    matrix = measure_confusion(true_k, red, green, karyotypes=wanted, max_count=max_count, groups=images)
    matrix.source = {"ann_file": str(ann_file), "segmenter": getattr(segmenter, "name", "truth")}
    return matrix


def calibrate_confusion(
    work_dir: str | Path,
    n_images: int = 20,
    *,
    size: int = 512,
    seed: int = 12345,
    karyotypes: Sequence[str] = tuple(KARYOTYPE_PATTERNS),
    segmenter: Segmenter | None = None,
    spot_params: Any = None,
    max_count: int = 4,
) -> ConfusionMatrix:
    """Simulate a balanced set (equal karyotype shares) in ``work_dir`` and measure its confusion matrix.

    Args:
        work_dir: folder for the simulated images (``work_dir/images``, ``annotations.json``).
        n_images: images to simulate (about 15-25 whole nuclei each at 512 px).
        size: image side.
        seed: simulator seed (use one that differs from any evaluated set).
        karyotypes: the matrix rows; each gets an equal share of the simulated nuclei.
        segmenter: None for true nuclei, else the segmenter ``fish analyze`` uses.
        spot_params: spot detector parameters.
        max_count: counts above this are clipped.
    """
    from cytobench.simulate.fish import simulate_fish

    mix = {k: 1.0 / len(karyotypes) for k in karyotypes}
    ann = simulate_fish(n_images, work_dir, size=size, seed=seed, karyotype_mix=mix)
    matrix = confusion_from_dataset(
        ann,
        Path(work_dir) / "images",
        segmenter=segmenter,
        spot_params=spot_params,
        karyotypes=list(karyotypes),
        max_count=max_count,
    )
    matrix.source.update({"simulated_images": n_images, "size": size, "seed": seed})
    return matrix
