"""Two-stage karyotyping: a one-class chromosome detector, then a classifier of straightened crops.

Stage 1 is a chromosome *enumeration* detector with one foreground class (DeepACEv2 by default, or any
torchvision-style detector such as :func:`~cytobench.models.faster_rcnn.build_faster_rcnn`, built with
``num_classes=2``; or a one-class YOLO trained before, :func:`~cytobench.models.yolo.build_yolo_detector`,
used frozen with ``train_detector=False``). Stage 2 cuts each chromosome out, stands it upright and classifies it into the 24
classes (:mod:`cytobench.models.karyotype_classifier`); the pair prior then labels each cell (image)
jointly, preferring two copies of each autosome.

**Training** (``model(images, targets)``): the detector's own losses on the targets with every label set to
1 (keys unchanged: ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier`` (the detector's
chromosome / background head), ``loss_box_reg`` and DeepACEv2's ``loss_pull`` / ``loss_push`` /
``loss_tnrl``), plus ``loss_crop_classifier``: the cross-entropy of the classifier on crops cut from the
**true** boxes (each side jittered by up to ``box_jitter`` of the box's width / height, so the classifier
sees boxes as imprecise as the detector's), with their true classes, weighted by
``classifier_loss_weight``. (The crop classifier's loss cannot be called ``loss_classifier``: that key is
the detector's.) Crops are randomly mirrored left-right and turned by half a turn (``augment``): the
straightening does not tell the p arm from the q arm. Crowd boxes (``iscrowd``) train the detector only.
The relative-length input uses the median length of the image's true (jittered) boxes.

**Inference** (``model(images)``): per image the detector's boxes and scores, then crops, class
probabilities ``p`` and labels: the pair prior's over the detections with detector score >=
``cell_score_thr`` (they make up the cell; they also set the median length), the most likely class for the
others (or for all with ``pair_prior=False``). ``scores`` = detector score x ``p(label)``
(``score_mode="product"``: a detection is as certain as both its existence and its class; so with an
evaluator's score threshold of 0.5 a chromosome of uncertain class may drop out) or the detector score
alone (``score_mode="detection"``). Also returned: ``class_scores`` (M, 24) class probabilities (column
k - 1 for class k), ``detection_scores`` (M,), and what else the detector returns per detection
(``embeddings``, ``masks``). The detector's ``predict_modes`` (DeepACEv2's NMS / Soft-NMS / EG-NMS on one
backbone pass) is offered through :meth:`TwoStageKaryotyper.predict_modes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cytobench.errors import BadInputError
from cytobench.io.checkpoint import load_model_weights
from cytobench.models.karyotype_classifier import (
    DEFAULT_PRIOR_PENALTY,
    N_CHROMOSOME_CLASSES,
    ChromosomeClassifier,
    cell_labels,
    chromosome_geometry,
    crops_from_detections,
    relative_lengths,
)

__all__ = ["DEFAULT_DETECTOR", "TwoStageKaryotyper", "build_two_stage"]

#: The default stage 1: a small DeepACEv2 (ResNet-18, every paper module on) at the karyogram size.
DEFAULT_DETECTOR: dict[str, Any] = {
    "_target_": "cytobench.models.deepace.build_deepace",
    "backbone": "resnet18",
    "min_size": 768,
    "max_size": 1024,
}
SCORE_MODES = ("product", "detection")


class TwoStageKaryotyper(nn.Module):
    """A one-class detector followed by a chromosome-crop classifier and the pair prior (module docstring).

    Args:
        detector: a torchvision-style detector with one foreground class (label 1).
        classifier: the crop classifier (:class:`ChromosomeClassifier`).
        crop_size: crop ``(H, W)``.
        crop_margin: free fraction of the crop on each side of the chromosome.
        crop_masks: orient crops by instance masks (the targets' ``masks`` in training, the detector's in
            eval; a detector without masks falls back to boxes); off: by boxes, the same in both.
        box_jitter: largest jitter of each true box side, as a fraction of the box's width / height.
        augment: random left-right mirrors and half turns of the training crops.
        classifier_loss_weight: weight of ``loss_crop_classifier``.
        label_smoothing: of the crop classifier's cross-entropy.
        train_detector: False: training returns only ``loss_crop_classifier`` and the detector's
            parameters are frozen (a detector trained before, e.g. loaded through its ``weights_path``).
        pair_prior / prior_cap / prior_penalty: the pair prior and its settings
            (:func:`~cytobench.models.karyotype_classifier.assign_with_pair_prior`).
        cell_score_thr: detections with at least this detector score form the cell.
        score_mode: ``"product"`` or ``"detection"``.
    """

    def __init__(
        self,
        detector: nn.Module,
        classifier: ChromosomeClassifier,
        *,
        crop_size: Sequence[int] = (96, 32),
        crop_margin: float = 0.05,
        crop_masks: bool = False,
        box_jitter: float = 0.05,
        augment: bool = True,
        classifier_loss_weight: float = 1.0,
        label_smoothing: float = 0.0,
        train_detector: bool = True,
        pair_prior: bool = True,
        prior_cap: int = 2,
        prior_penalty: float = DEFAULT_PRIOR_PENALTY,
        cell_score_thr: float = 0.5,
        score_mode: str = "product",
    ) -> None:
        super().__init__()
        if score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
        if len(crop_size) != 2 or min(int(s) for s in crop_size) < 8:
            raise ValueError(f"crop_size must be (H, W), each >= 8, got {tuple(crop_size)}")
        if pair_prior and classifier.num_classes != N_CHROMOSOME_CLASSES:
            raise ValueError(
                f"the pair prior needs the {N_CHROMOSOME_CLASSES} human chromosome classes, the classifier has "
                f"{classifier.num_classes}"
            )
        if not 0 <= box_jitter < 0.5:
            raise ValueError(f"box_jitter must be in [0, 0.5), got {box_jitter}")
        if train_detector and not any(p.requires_grad for p in detector.parameters()):
            raise BadInputError(
                "model.train_detector",
                f"the detector ({type(detector).__name__}) has no trainable parameters here (a YOLO trained "
                "before): set model.train_detector=false",
            )
        self.detector = detector
        self.classifier = classifier
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.crop_margin = float(crop_margin)
        self.crop_masks = bool(crop_masks)
        self.box_jitter = float(box_jitter)
        self.augment = bool(augment)
        self.classifier_loss_weight = float(classifier_loss_weight)
        self.label_smoothing = float(label_smoothing)
        self.train_detector = bool(train_detector)
        self.pair_prior = bool(pair_prior)
        self.prior_cap = int(prior_cap)
        self.prior_penalty = float(prior_penalty)
        self.cell_score_thr = float(cell_score_thr)
        self.score_mode = score_mode
        if not self.train_detector:
            self.detector.requires_grad_(False)

    def train(self, mode: bool = True) -> TwoStageKaryotyper:
        """As ``nn.Module.train``; a frozen detector (``train_detector=False``) stays in eval mode."""
        super().train(mode)
        if not self.train_detector:
            self.detector.eval()
        return self

    # ------------------------------------------------------------------------------------------- training
    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self._losses(images, targets)
        return self.classify(images, self.detector(images))

    def _losses(self, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        if self.train_detector:
            det_targets = [{**t, "labels": torch.ones_like(t["labels"])} for t in targets]
            losses.update(self.detector(images, det_targets))

        boxes, labels, masks = [], [], []
        for img, t in zip(images, targets):
            keep = torch.ones(len(t["labels"]), dtype=torch.bool, device=t["labels"].device)
            if "iscrowd" in t:
                keep &= t["iscrowd"] == 0
            lab = t["labels"][keep]
            if lab.numel() and (int(lab.min()) < 1 or int(lab.max()) > self.classifier.num_classes):
                raise ValueError(
                    f"target labels must be classes 1-{self.classifier.num_classes}, got {lab.unique().tolist()}"
                )
            boxes.append(self._jitter(t["boxes"][keep].float(), img.shape[-2:]))
            labels.append(lab)
            masks.append(t["masks"][keep] if self.crop_masks and "masks" in t else None)
        all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        if all_labels.numel() == 0:  # no chromosome: a zero loss that still reaches every parameter
            zero = sum(p.sum() for p in self.classifier.parameters()) * 0.0
            losses["loss_crop_classifier"] = zero
            return losses
        crops, rel = self._crops(images, boxes, masks, reference=None)
        if self.augment:
            crops = self._augment(crops)
        logits = self.classifier(crops, rel)
        loss = F.cross_entropy(logits, all_labels.to(logits.device) - 1, label_smoothing=self.label_smoothing)
        losses["loss_crop_classifier"] = self.classifier_loss_weight * loss
        return losses

    def _jitter(self, boxes: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.box_jitter == 0 or boxes.numel() == 0:
            return boxes
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        noise = (torch.rand(boxes.shape, device=boxes.device) * 2 - 1) * self.box_jitter * wh
        out = boxes + noise
        h, w = float(size[0]), float(size[1])
        out[:, 0::2] = out[:, 0::2].clamp(0, w)
        out[:, 1::2] = out[:, 1::2].clamp(0, h)
        return out

    @staticmethod
    def _augment(crops: torch.Tensor) -> torch.Tensor:
        n = crops.shape[0]
        mirror = torch.rand(n, device=crops.device) < 0.5
        half_turn = torch.rand(n, device=crops.device) < 0.5
        crops = torch.where(mirror[:, None, None, None], crops.flip(-1), crops)
        return torch.where(half_turn[:, None, None, None], crops.flip(-1, -2), crops)

    def _crops(
        self,
        images: Sequence[torch.Tensor],
        boxes: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor | None],
        reference: Sequence[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops of all boxes and their lengths relative to the median of each image's ``reference``."""
        geometry = [chromosome_geometry(b, m) for b, m in zip(boxes, masks)]
        rel = torch.cat(
            [
                relative_lengths(g.lengths, None if reference is None else reference[i])
                for i, g in enumerate(geometry)
            ]
        )
        crops, _ = crops_from_detections(
            images,
            boxes,
            None,
            self.crop_size,
            margin=self.crop_margin,
            channels=self.classifier.in_channels,
            geometry=geometry,
        )
        return crops, rel

    # ------------------------------------------------------------------------------------------ inference
    def classify(self, images: list[torch.Tensor], detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Classify each image's detections, the image being one cell: the crops' relative lengths and
        the pair prior see all its detections (``cytobench predict`` / ``karyotype`` tile the detector
        alone and call this once on the whole image's merged detections)."""
        boxes = [d["boxes"] for d in detections]
        det_scores = [d["scores"] for d in detections]
        masks = [d.get("masks") if self.crop_masks else None for d in detections]
        cell = [s >= self.cell_score_thr for s in det_scores]
        n_total = sum(int(b.shape[0]) for b in boxes)
        n_cls = self.classifier.num_classes
        if n_total:
            crops, rel = self._crops(images, boxes, masks, reference=cell)
            logits = self.classifier(crops, rel)
        else:
            device = images[0].device if images else torch.device("cpu")
            logits = torch.zeros(0, n_cls, device=device)
        out: list[dict[str, Any]] = []
        start = 0
        for det in detections:
            m = int(det["boxes"].shape[0])
            own = logits[start : start + m]
            start += m
            probs = own.softmax(dim=1)
            det_score = det["scores"]
            labels, score = self._label_cell(own, probs, det_score, self.pair_prior)
            pred = {k: v for k, v in det.items() if k not in ("boxes", "scores", "labels")}
            pred.update(
                boxes=det["boxes"],
                scores=score,
                labels=labels.to(torch.int64),
                class_scores=probs,
                detection_scores=det_score,
            )
            out.append(pred)
        return out

    def _label_cell(
        self, logits: torch.Tensor, probs: torch.Tensor, det_score: torch.Tensor, pair_prior: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels, scores)`` of one cell's detections from their class logits (or log-probabilities)."""
        in_cell = det_score >= self.cell_score_thr
        labels = cell_labels(logits, in_cell, pair_prior, self.prior_cap, self.prior_penalty).to(torch.int64)
        p_label = probs.gather(1, (labels - 1)[:, None])[:, 0]
        score = det_score * p_label if self.score_mode == "product" else det_score.clone()
        return labels, score

    @torch.no_grad()
    def predict_modes(
        self, images: Sequence[torch.Tensor], modes: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """Predictions under several detector post-processings (DeepACEv2's ``predict_modes``), each
        classified as ``model(images)`` does.

        Raises:
            TypeError: the detector has no ``predict_modes``.
        """
        if not hasattr(self.detector, "predict_modes"):
            raise TypeError(f"the detector ({type(self.detector).__name__}) has no predict_modes")
        by_mode = self.detector.predict_modes(images, modes)
        return {mode: self.classify(list(images), dets) for mode, dets in by_mode.items()}


def _plain(node: Any) -> Any:
    """An OmegaConf node as plain Python data (anything else unchanged)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        return node
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _build_detector(detector: nn.Module | Mapping[str, Any] | None) -> nn.Module:
    if isinstance(detector, nn.Module):
        return detector
    node = dict(_plain(detector) if detector is not None else DEFAULT_DETECTOR)
    if "_target_" not in node:
        raise ValueError("detector must be a model config node with _target_ (e.g. the deepace builder)")
    given = node.pop("num_classes", 2)
    if int(given) != 2:
        raise ValueError(f"the detector finds chromosomes of one class: num_classes must be 2, got {given}")
    from hydra.utils import instantiate

    return instantiate(node, num_classes=2)


def build_two_stage(
    num_classes: int = N_CHROMOSOME_CLASSES + 1,
    *,
    detector: nn.Module | Mapping[str, Any] | None = None,
    classifier: Mapping[str, Any] | None = None,
    weights_path: str | Path | None = None,
    **options: Any,
) -> TwoStageKaryotyper:
    """Build the two-stage karyotyper.

    Args:
        num_classes: classes including background, as every cytobench builder (the trainer passes the
            data's categories + 1): 25 for the 24 chromosome classes 1-22, X, Y. The pair prior needs 25.
        detector: the stage-1 model config node (``_target_`` and its builder's arguments; built with
            ``num_classes=2``), or a built detector; default :data:`DEFAULT_DETECTOR` (a small DeepACEv2).
            A trained detector loads through the node's own ``weights_path``.
        classifier: :class:`ChromosomeClassifier` options: ``width`` (32), ``blocks`` ((2, 2, 2, 2)),
            ``in_channels`` (1), ``length_feature`` (True), ``dropout`` (0).
        weights_path: a local checkpoint of the whole two-stage model to start from.
        options: :class:`TwoStageKaryotyper`'s keyword arguments (``crop_size`` ... ``score_mode``), passed
            through (one signature to keep).

    Returns:
        The :class:`TwoStageKaryotyper`.
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes counts background too: >= 2, got {num_classes}")
    classifier_options = dict(_plain(classifier) or {})
    unknown = sorted(
        set(classifier_options) - {"width", "blocks", "in_channels", "length_feature", "dropout"}
    )
    if unknown:
        raise TypeError(f"unknown classifier options {unknown}")
    if "blocks" in classifier_options:
        classifier_options["blocks"] = tuple(int(b) for b in classifier_options["blocks"])
    options = {key: _plain(value) for key, value in options.items()}
    if "crop_size" in options:
        options["crop_size"] = tuple(int(s) for s in options["crop_size"])
    model = TwoStageKaryotyper(
        _build_detector(detector), ChromosomeClassifier(int(num_classes) - 1, **classifier_options), **options
    )
    if weights_path:
        load_model_weights(model, weights_path)
    return model
