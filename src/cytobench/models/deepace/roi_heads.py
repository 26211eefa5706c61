"""DeepACEv2 RoI heads: torchvision's box branch plus the Template branch, TNRL and score-decaying NMS.

- Template branch (Sec. 2.3): a :class:`TemplateModule` on the 7x7 RoIAlign features. In training it
  embeds the sampled proposals and adds ``loss_pull = alpha * L_pull`` and ``loss_push = beta * L_push``
  (per-image :func:`template_losses`, averaged over the images). In inference the final boxes are
  pooled a second time and embedded, and each prediction carries ``embeddings`` (M,).
- TNRL (Sec. 2.5): the positive proposals' boxes regressed for their ground-truth class are decoded and
  ``loss_tnrl = gamma * L_TNRep`` is added (one normaliser ``|P+|`` over the whole batch).
- Post-processing (Sec. 2.4): ``"nms"`` (torchvision's per-class NMS), ``"soft"`` (per-class Gaussian
  Soft-NMS) or ``"eg"`` (per-class Embedding-Guided NMS on the candidates' embeddings, which needs the
  Template branch). Decayed scores below ``score_thresh`` are dropped; the top ``detections_per_img``
  remain.

Mask and keypoint branches are not supported. Boxes are xyxy in the model's resized-image pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import boxes as box_ops

from cytobench.models.deepace.template_module import TemplateModule, template_losses
from cytobench.ops.boxes import assign_repulsion_targets
from cytobench.ops.nms import embedding_guided_nms, soft_nms
from cytobench.ops.repulsion import truncated_normalized_repulsion_loss

__all__ = ["POSTPROCESS_MODES", "DeepACERoIHeads"]

POSTPROCESS_MODES = ("nms", "soft", "eg")


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged in the forward pass; its gradient multiplied by ``scale`` in the backward pass."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x * scale + x.detach() * (1.0 - scale)


class DeepACERoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` (box branch only) with DeepACEv2's additions.

    Args:
        *args: torchvision ``RoIHeads`` arguments (box_roi_pool, box_head, box_predictor, thresholds, ...).
        template: the Template branch, or ``None`` to disable it (no pull/push losses, no embeddings).
        tnrl: add the Truncated Normalized Repulsion Loss.
        postprocess: ``"nms"``, ``"soft"`` or ``"eg"``.
        alpha / beta / gamma: weights of the pull, push and TNRL losses (Eq. 12).
        nms_sigma: Gaussian width of Soft-NMS and EG-NMS (0.5).
        eg_delta: embedding-distance threshold of EG-NMS (0.3).
        template_kwargs: ``theta``, ``lam``, ``delta`` of :func:`template_losses`.
        tnrl_sigma: Smooth_ln parameter of TNRL.
        template_feature_grad: scale of the pull / push gradient that reaches the shared RoI features
            (1: end to end as in the paper; 0: the Template branch learns on detached features). The
            embedding losses are small in value but their gradient on the backbone is as large as the
            classifier's, which slowed detection learning from random init (see ``conf/model/deepace.yaml``).
        **kwargs: torchvision ``RoIHeads`` keyword arguments.
    """

    def __init__(
        self,
        *args,
        template: TemplateModule | None = None,
        tnrl: bool = False,
        postprocess: str = "nms",
        alpha: float = 0.1,
        beta: float = 0.1,
        gamma: float = 0.5,
        nms_sigma: float = 0.5,
        eg_delta: float = 0.3,
        template_kwargs: dict[str, float] | None = None,
        tnrl_sigma: float = 0.5,
        template_feature_grad: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if postprocess not in POSTPROCESS_MODES:
            raise ValueError(f"postprocess must be one of {POSTPROCESS_MODES}, got {postprocess!r}")
        if postprocess == "eg" and template is None:
            raise ValueError(
                "postprocess='eg' (Embedding-Guided NMS) needs the Template branch for the embeddings: "
                "enable template or use postprocess='nms' / 'soft'"
            )
        self.template = template
        self.tnrl = tnrl
        self.postprocess = postprocess
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.nms_sigma = nms_sigma
        self.eg_delta = eg_delta
        self.template_kwargs = dict(template_kwargs or {})
        self.tnrl_sigma = tnrl_sigma
        if not 0.0 <= template_feature_grad <= 1.0:
            raise ValueError(f"template_feature_grad must be in [0, 1], got {template_feature_grad}")
        self.template_feature_grad = template_feature_grad

    # ------------------------------------------------------------------ training losses
    def _template_loss(
        self, embeddings: Tensor, labels: list[Tensor], matched_idxs: list[Tensor], targets: list[dict]
    ) -> dict[str, Tensor]:
        """Weighted pull / push losses averaged over the images; embeddings (sum R_i, D)."""
        pulls, pushes = [], []
        for emb, lab, idx, tgt in zip(
            embeddings.split([len(x) for x in labels]), labels, matched_idxs, targets
        ):
            gt_index = torch.where(lab > 0, idx, torch.full_like(idx, -1))
            pull, push = template_losses(emb, gt_index, tgt["boxes"].to(emb.dtype), **self.template_kwargs)
            pulls.append(pull)
            pushes.append(push)
        return {
            "loss_pull": self.alpha * torch.stack(pulls).mean(),
            "loss_push": self.beta * torch.stack(pushes).mean(),
        }

    def _tnrl_loss(
        self,
        box_regression: Tensor,
        proposals: list[Tensor],
        labels: list[Tensor],
        matched_idxs: list[Tensor],
        targets: list[dict],
    ) -> Tensor:
        """``gamma * L_TNRep`` over the positive proposals of the batch; box_regression (sum R_i, C * 4)."""
        per_image = box_regression.split([len(p) for p in proposals])
        preds, gts, gt_idx, rep_idx = [], [], [], []
        offset = 0
        for reg, props, lab, idx, tgt in zip(per_image, proposals, labels, matched_idxs, targets):
            pos = torch.where(lab > 0)[0]
            gt_boxes = tgt["boxes"].to(reg.dtype)
            if pos.numel():
                deltas = reg.reshape(reg.shape[0], -1, 4)[pos, lab[pos]]
                preds.append(self.box_coder.decode_single(deltas, props[pos]))
                g, r = assign_repulsion_targets(props[pos], gt_boxes, idx[pos])
                gt_idx.append(g + offset)
                rep_idx.append(torch.where(r >= 0, r + offset, r))
            gts.append(gt_boxes)
            offset += gt_boxes.shape[0]
        if not preds:
            return box_regression.sum() * 0.0
        loss = truncated_normalized_repulsion_loss(
            torch.cat(preds), torch.cat(gts), torch.cat(gt_idx), torch.cat(rep_idx), sigma=self.tnrl_sigma
        )
        return self.gamma * loss

    # ------------------------------------------------------------------ inference
    def embed_boxes(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Template embeddings of given boxes (a second RoIAlign pass).

        Args:
            features: the backbone feature maps.
            boxes: per image (M_i, 4) xyxy boxes.
            image_shapes: per image (H, W) after the model's resize.

        Returns:
            Per image (M_i,) embeddings for D = 1, (M_i, D) otherwise.
        """
        if self.template is None:
            raise ValueError("embed_boxes needs the Template branch")
        emb = self.template(self.box_roi_pool(features, boxes, image_shapes))
        if emb.shape[1] == 1:
            emb = emb[:, 0]
        return list(emb.split([len(b) for b in boxes]))

    def _candidates(
        self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor], image_shapes
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """torchvision's per-class candidates (clipped, score > thresh, non-empty), before NMS."""
        num_classes = class_logits.shape[-1]
        counts = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(counts)
        pred_scores = F.softmax(class_logits, -1).split(counts)
        out = []
        for boxes, scores, image_shape in zip(pred_boxes, pred_scores, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            boxes, scores, labels = (
                boxes[:, 1:].reshape(-1, 4),
                scores[:, 1:].reshape(-1),
                labels[:, 1:].reshape(-1),
            )
            inds = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            out.append((boxes[keep], scores[keep], labels[keep]))
        return out

    def _decay_per_class(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, embeddings: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Per-class Soft-NMS / EG-NMS; returns (K,) indices and decayed scores, best first, top-k."""
        keeps, new_scores = [], []
        for cls in torch.unique(labels):
            idx = torch.where(labels == cls)[0]
            # Selected scores never increase (scores only decay), so a class's first
            # detections_per_img selections hold every one of its boxes that can reach the final top-k.
            cap = self.detections_per_img
            if embeddings is None:
                k, s = soft_nms(boxes[idx], scores[idx], self.nms_sigma, self.score_thresh, max_keep=cap)
            else:
                k, s = embedding_guided_nms(
                    boxes[idx],
                    scores[idx],
                    embeddings[idx],
                    self.nms_sigma,
                    self.eg_delta,
                    self.score_thresh,
                    max_keep=cap,
                )
            keeps.append(idx[k])
            new_scores.append(s)
        if not keeps:
            return labels.new_zeros(0), scores.new_zeros(0)
        keep, new = torch.cat(keeps), torch.cat(new_scores)
        order = torch.argsort(new, descending=True, stable=True)[: self.detections_per_img]
        return keep[order], new[order]

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        features: dict[str, Tensor] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor] | None]:
        """Decode, suppress and (with the Template branch) embed the detections.

        Args:
            class_logits: (sum R_i, C) logits.
            box_regression: (sum R_i, C * 4) deltas.
            proposals: per image (R_i, 4) xyxy proposals.
            image_shapes: per image (H, W).
            features: backbone feature maps; needed for embeddings (Template branch).

        Returns:
            Per image boxes (M_i, 4), scores (M_i,) (decayed for soft / eg), labels (M_i,), and
            embeddings (M_i,) or ``None`` without the Template branch.
        """
        cands = self._candidates(class_logits, box_regression, proposals, image_shapes)
        want_emb = self.template is not None and features is not None
        cand_emb: list[Tensor | None] = [None] * len(cands)
        if self.postprocess == "eg":
            if features is None:
                raise ValueError("postprocess='eg' needs the feature maps to embed the candidates")
            cand_emb = self.embed_boxes(features, [c[0] for c in cands], image_shapes)
        all_boxes, all_scores, all_labels, all_emb = [], [], [], []
        for (boxes, scores, labels), emb in zip(cands, cand_emb):
            if self.postprocess == "nms":
                keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
                new_scores = scores[keep]
            else:
                keep, new_scores = self._decay_per_class(boxes, scores, labels, emb)
            all_boxes.append(boxes[keep])
            all_scores.append(new_scores)
            all_labels.append(labels[keep])
            if emb is not None:
                all_emb.append(emb[keep])
        if not want_emb:
            return all_boxes, all_scores, all_labels, None
        if not all_emb:
            all_emb = self.embed_boxes(features, all_boxes, image_shapes)
        return all_boxes, all_scores, all_labels, all_emb

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Box branch with the DeepACEv2 additions.

        Args:
            features: backbone maps, e.g. ``{"0": (B, 256, H/8, W/8)}``.
            proposals: per image (R_i, 4) xyxy RPN proposals.
            image_shapes: per image (H, W) after resize.
            targets: per image ``boxes`` (G_i, 4) float xyxy and ``labels`` (G_i,) int64 (training).

        Returns:
            ``(result, losses)``: in training ``result == []`` and ``losses`` holds ``loss_classifier``,
            ``loss_box_reg`` and, when enabled, ``loss_pull``, ``loss_push``, ``loss_tnrl``; in
            inference ``losses == {}`` and ``result`` has per image ``boxes``, ``scores``, ``labels``
            and ``embeddings`` (with the Template branch).
        """
        if self.has_mask() or self.has_keypoint():
            raise NotImplementedError("DeepACERoIHeads supports the box branch only")
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training")
            for t in targets:
                if t["boxes"].dtype not in (torch.float, torch.double, torch.half):
                    raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be of int64 type, got {t['labels'].dtype}")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )

        pooled = self.box_roi_pool(features, proposals, image_shapes)  # (sum R_i, 256, 7, 7)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))

        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets
            )
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            if self.template is not None:
                embeddings = self.template(scale_gradient(pooled, self.template_feature_grad))
                losses.update(self._template_loss(embeddings, labels, matched_idxs, targets))
            if self.tnrl:
                losses["loss_tnrl"] = self._tnrl_loss(
                    box_regression, proposals, labels, matched_idxs, targets
                )
            return [], losses

        boxes, scores, labels, embeddings = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes, features
        )
        result = []
        for i in range(len(boxes)):
            det = {"boxes": boxes[i], "labels": labels[i], "scores": scores[i]}
            if embeddings is not None:
                det["embeddings"] = embeddings[i]
            result.append(det)
        return result, {}
