"""Reusable tensor ops: box geometry (IoU, IoG), Soft-NMS / Embedding-Guided NMS, repulsion losses.

``cytobench.ops.poisson`` (NumPy Poisson sampling for the simulators) is not imported here; import it
directly.
"""

from __future__ import annotations

from cytobench.ops.boxes import (
    assign_repulsion_targets,
    box_intersection,
    box_iog,
    box_iou_safe,
    find_repulsion_gts,
    paired_box_intersection,
    paired_box_iog,
)
from cytobench.ops.nms import (
    embedding_distances,
    embedding_guided_nms,
    embedding_guided_nms_reference,
    soft_nms,
)
from cytobench.ops.repulsion import (
    repulsion_gt_loss,
    smooth_ln,
    truncated_normalized_iog,
    truncated_normalized_repulsion_loss,
)

__all__ = [
    "assign_repulsion_targets",
    "box_intersection",
    "box_iog",
    "box_iou_safe",
    "embedding_distances",
    "embedding_guided_nms",
    "embedding_guided_nms_reference",
    "find_repulsion_gts",
    "paired_box_intersection",
    "paired_box_iog",
    "repulsion_gt_loss",
    "smooth_ln",
    "soft_nms",
    "truncated_normalized_iog",
    "truncated_normalized_repulsion_loss",
]
