"""Evaluators (``reset / process / compute``) and the NumPy metric functions behind them.

Evaluators: :class:`CocoEvaluator` (``coco/...``), :class:`EnumerationEvaluator`
(``enum/...``, DeepACEv2), :class:`LocalizationEvaluator` (``loc/...``, epsilon-distance
point matching), :class:`PixelEvaluator` (``pix/...``), :class:`HeadPixelEvaluator` (``pix/<head>_...``,
one binary map per head: SEU-Net), :class:`KaryotypeEvaluator` (``karyo/...``, 24 chromosome classes), :class:`ErrorAnalysisEvaluator` (``coco/``, ``gt_mask/``,
``gt_matched/``: mask AP with perfect masks / only well-matched masks, thesis Table 5.11); combine them with
:class:`EvaluatorList`.
"""

from __future__ import annotations

from cytobench.evaluation.base import Evaluator, EvaluatorList, to_numpy
from cytobench.evaluation.boxes import box_area, box_iog, box_iou
from cytobench.evaluation.coco import (
    LIVECELL_AREA_RANGES,
    LIVECELL_MAX_DETS,
    CocoEvaluator,
    accumulate_coco,
    class_agnostic_coco,
    evaluate_coco,
    summarize_coco,
)
from cytobench.evaluation.curves import average_precision, log_average_miss_rate, miss_rate_fppi, pr_curve
from cytobench.evaluation.enumeration import (
    EnumerationEvaluator,
    enumeration_metrics,
    match_detections,
    overlapping_subset,
)
from cytobench.evaluation.error_analysis import (
    ErrorAnalysisEvaluator,
    best_dice_match,
    keep_gt_matched,
    mask_dice,
    replace_with_gt_masks,
)
from cytobench.evaluation.head_pixel import HeadPixelEvaluator
from cytobench.evaluation.karyotype import KaryotypeEvaluator, karyotype_metrics
from cytobench.evaluation.localization import (
    LocalizationEvaluator,
    localization_curve,
    localization_metrics,
    localize_match,
)
from cytobench.evaluation.pixel import PixelEvaluator, confusion_matrix, metrics_from_confusion, pixel_metrics
from cytobench.evaluation.stats import compare_groups, mean_std, paired_ttest, summarize_runs, welch_ttest
from cytobench.io.coco_convert import coco_gt_from_targets, coco_results_from_predictions

__all__ = [
    "LIVECELL_AREA_RANGES",
    "LIVECELL_MAX_DETS",
    "CocoEvaluator",
    "EnumerationEvaluator",
    "ErrorAnalysisEvaluator",
    "Evaluator",
    "EvaluatorList",
    "HeadPixelEvaluator",
    "KaryotypeEvaluator",
    "LocalizationEvaluator",
    "PixelEvaluator",
    "accumulate_coco",
    "average_precision",
    "best_dice_match",
    "box_area",
    "box_iog",
    "box_iou",
    "class_agnostic_coco",
    "coco_gt_from_targets",
    "coco_results_from_predictions",
    "compare_groups",
    "confusion_matrix",
    "enumeration_metrics",
    "evaluate_coco",
    "karyotype_metrics",
    "keep_gt_matched",
    "localization_curve",
    "localization_metrics",
    "localize_match",
    "log_average_miss_rate",
    "mask_dice",
    "match_detections",
    "mean_std",
    "metrics_from_confusion",
    "miss_rate_fppi",
    "overlapping_subset",
    "pixel_metrics",
    "pr_curve",
    "replace_with_gt_masks",
    "summarize_coco",
    "summarize_runs",
    "to_numpy",
    "paired_ttest",
    "welch_ttest",
]
