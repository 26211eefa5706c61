"""The pair prior as post-processing of any 24-class chromosome detector: each image is one cell.

A detector that gives each detection its per-class scores (``class_scores``, (N, C), column ``j`` the score
of label ``j + 1``: YOLO's per-class sigmoids, SSD's or R-FCN's softmax without the background) can have
its detections of one cell relabelled jointly, as the two-stage model labels its crops (such a detector says so
with a class attribute ``gives_class_scores = True``):

* a box's *existence* is the sum of its class scores (at most 1: a chromosome torn between 4 and 5, 0.4
  each, is still there; for a softmax it is 1 - p(background));
* exact duplicates (one anchor or RoI kept under several labels by a per-class NMS) count once;
* a class-agnostic NMS at ``nms_iou`` keeps one box per chromosome and merges into it the boxes it
  overlaps: existence ``1 - prod(1 - e_j)``, class scores summed;
* the kept boxes with existence >= ``cell_score_thr`` are labelled under the pair prior
  (:func:`~cytobench.models.karyotype_classifier.cell_labels`), the others by their likeliest class;
  ``scores`` become the existences.

:class:`PairPriorCells` wraps such a detector so that ``model(images)`` returns the relabelled cells (how
``cytobench reproduce karyotype/...`` scores SSD and R-FCN "+ pair prior"); ``cytobench karyotype
--pair-prior`` runs :func:`pair_prior_cell` once on a whole (possibly tiled) image's detections; YOLO has it
built in (``YoloModel(pair_prior=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from cytobench.errors import BadInputError

__all__ = ["PairPriorCells", "chromosome_columns", "columns_from_label_map", "pair_prior_cell"]


def pair_prior_cell(
    pred: Mapping[str, torch.Tensor],
    columns: torch.Tensor,
    nms_iou: float = 0.5,
    cell_score_thr: float = 0.5,
) -> dict[str, torch.Tensor]:
    """One image's detections as one cell of chromosomes (module docstring).

    Args:
        pred: ``boxes`` (N, 4), ``scores``, ``labels`` and ``class_scores`` (N, C); other per-detection
            keys (e.g. masks) are kept for the kept boxes.
        columns: (24,) the ``class_scores`` column of each chromosome class 1-22, X, Y.
        nms_iou: IoU above which the class-agnostic NMS drops the less likely of two boxes.
        cell_score_thr: boxes with at least this existence form the cell.

    Returns:
        The kept boxes, ``labels`` (``columns[class] + 1``), ``scores`` (existences) and ``class_scores``
        (the merged sums in the chromosome columns).
    """
    from cytobench.models.karyotype_classifier import cell_labels

    if len(pred["boxes"]) == 0:  # nothing found: nothing to merge or label
        return dict(pred)
    columns = columns.to(pred["boxes"].device)
    first = _first_of_each_box(pred["boxes"])
    pred = {k: v[first] for k, v in pred.items()}
    class_scores = pred["class_scores"][:, columns].double()  # class order 1-22, X, Y
    existence = class_scores.sum(dim=1).clamp(max=1.0)
    boxes = pred["boxes"].double()
    keep = torchvision.ops.nms(boxes, existence, nms_iou)
    # every box joins the kept box it overlaps most (a suppressed one overlaps one by more than the IoU)
    owner = torchvision.ops.box_iou(boxes, boxes[keep]).argmax(dim=1)
    owner[keep] = torch.arange(len(keep), device=owner.device)
    # a chromosome seen by several boxes: P(there) = 1 - prod(1 - e_j); class evidence summed
    log_absent = torch.log1p(-existence.clamp(max=1 - 1e-12))
    merged_existence = -boxes.new_zeros(len(keep)).index_add_(0, owner, log_absent).expm1()
    merged_scores = boxes.new_zeros(len(keep), class_scores.shape[1])
    merged_scores.index_add_(0, owner, class_scores)
    classes = cell_labels(merged_scores.clamp(min=1e-12).log(), merged_existence >= cell_score_thr)
    out = {k: v[keep] for k, v in pred.items()}
    out["labels"] = (columns[classes - 1] + 1).to(torch.int64)
    out["scores"] = merged_existence.to(pred["scores"].dtype)
    out["class_scores"][:, columns] = merged_scores.to(out["class_scores"].dtype)
    return out


def _first_of_each_box(boxes: torch.Tensor) -> torch.Tensor:
    """Indices of the first detection of each distinct box, in their order."""
    _, inverse = torch.unique(boxes, dim=0, return_inverse=True)
    index = torch.arange(len(boxes), device=boxes.device)
    first = torch.full((int(inverse.max()) + 1,), len(boxes), device=boxes.device, dtype=torch.long)
    first.scatter_reduce_(0, inverse, index, reduce="amin")
    return first.sort().values


def chromosome_columns(label_names: Sequence[str], source: str = "model.eval.pair_prior") -> list[int]:
    """The ``class_scores`` column of each chromosome class 1-22, X, Y from the names of labels 1, 2, ...

    Raises:
        BadInputError: the labels are not the 24 chromosome classes.
    """
    from cytobench.simulate.chromosomes import CLASS_NAMES

    names = [str(n) for n in label_names]
    if sorted(names) != sorted(CLASS_NAMES):
        raise BadInputError(
            source,
            f"the pair prior needs the 24 chromosome classes 1..22, X, Y; the model has {len(names)} classes",
        )
    return [names.index(name) for name in CLASS_NAMES]


def columns_from_label_map(label_map: Mapping[int, int]) -> list[int]:
    """The ``class_scores`` column of each chromosome class 1-22, X, Y from a model label -> class id (1-24)
    map (:func:`cytobench.karyotype.command.karyotype_label_map`, which checks that all 24 are there)."""
    column_of = {int(cls): int(label) - 1 for label, cls in label_map.items()}
    return [column_of[cls] for cls in range(1, 25)]


class PairPriorCells(nn.Module):
    """A 24-class detector whose outputs carry ``class_scores``, each image's detections relabelled as one
    cell by :func:`pair_prior_cell`; ``columns`` from :func:`chromosome_columns` (label names) or
    :func:`columns_from_label_map` (a checkpoint's label -> class map)."""

    def __init__(
        self,
        detector: nn.Module,
        columns: Sequence[int],
        nms_iou: float = 0.5,
        cell_score_thr: float = 0.5,
    ) -> None:
        super().__init__()
        self.detector = detector
        self.register_buffer("columns", torch.as_tensor(list(columns), dtype=torch.long), persistent=False)
        self.nms_iou, self.cell_score_thr = float(nms_iou), float(cell_score_thr)

    def forward(self, images: Any, targets: Any = None) -> Any:
        if self.training:
            return self.detector(images, targets)
        out = []
        for pred in self.detector(images):
            if "class_scores" not in pred:
                raise BadInputError("pair prior", f"{type(self.detector).__name__} gives no class_scores")
            out.append(pair_prior_cell(pred, self.columns, self.nms_iou, self.cell_score_thr))
        return out
