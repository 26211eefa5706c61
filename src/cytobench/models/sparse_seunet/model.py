"""SparseSEU-Net (thesis Sec. 4.5, 5.7, Fig. 4.11-4.13, 5.9): SEU-Net with an instance-aware decoder that
predicts a sparse set of N instance masks directly, without boxes, anchors or NMS.

Architecture: per-image input standardisation (:func:`cytobench.models.image_norm.standardize`), SEU-Net's
encoder (:class:`~cytobench.models.seunet.network.SEUNetEncoder`) and decoder
(:class:`~cytobench.models.sparse_seunet.decoder.LevelDecoder`, SEU-Net's decoder returning every level), and
the instance-aware decoder (:class:`~cytobench.models.sparse_seunet.decoder.InstanceAwareDecoder`: mask and
instance branches, N instance activation maps, class / kernel / objectness heads, masks ``m_i = k_i . M`` at
the full input resolution, so no upsampling is needed). Training: bipartite matching and the losses of
:mod:`~cytobench.models.sparse_seunet.losses`; inference: :mod:`~cytobench.models.sparse_seunet.postprocess`.

Variants (constructor / config switches):

* ``aggregation``: ``single`` (branches at the decoder's last level, the "vanilla" model) or ``multi``
  (branches at every decoder level, fused bottom-up: Sec. 4.5.4, Table 5.10).
* ``overlap_head`` (Table 5.9, Sec. 5.7.1, Fig. 5.9): a second SEU-Net decoder on the shared encoder predicts
  the overlap map (pixels of two or more cells), trained on the target's ``overlap`` map with the binary
  cross-entropy (``loss_overlap``); its last-level features ``X_o`` are concatenated to the instance decoder's
  ``X_i`` before the fork into mask and instance branches (the thesis: "conditioning the instance-aware
  features on overlap features", channels x2), so both branches and the IAM see them.
* ``attention_mask`` (Table 5.9's "attn. mask", needs ``overlap_head``): the thesis trains the overlap head
  with the weight maps of Sec. 4.3, i.e. the overlap focal loss steered by the overlap attention map ``P``
  (:func:`cytobench.ops.focal.overlap_focal_loss`, ``focal_mode`` eq4_5 / eq5_1, ``P`` = the target's
  ``attention_key`` map, as SEU-Net's overlap head). That is what is implemented: a training-time switch of
  the overlap loss. The network is the same; the predicted overlap map does not gate the features (the
  thesis describes no such gate; the concatenated ``X_o`` is the only path from overlap to instances).
* ``objectness``: the IoU-aware objectness head (Sec. 5.7.3) is trained (``loss_objectness``) and multiplies
  the score. Off by default: the thesis reports that it hurt (about 0.25 mAP).
* ``num_instances``: N (100 in the thesis). Images with more objects than N get only N of them matched.
* ``mask_key``: the per-object mask stack learned: ``amodal_masks`` (whole cells, hidden parts included),
  ``masks`` (visible parts) or ``auto`` (the default): ``amodal_masks`` when the target has it, else
  ``masks``. Amodal by default because the thesis' cells overlap and are annotated whole (its overlap maps
  are the intersections of full cell masks); a sparse set of masks, unlike a semantic map, can represent
  overlapping instances, and the brightfield simulator provides amodal masks.
* ``object_labels``: the target labels that are objects (1 = ``cell`` in the brightfield simulator, whose
  json also holds ``nucleus`` objects, label 2); None takes every object. The model is class-agnostic: one
  class logit, every prediction labelled 1.

Contract (``model(images, targets)``; images (C, H, W) floats, sizes may differ within a batch: the batch is
zero-padded at the bottom / right to a common size divisible by ``2**depth``, padded pixels are masked out of
every block, branch and activation map, and losses and outputs are computed on each image's own extent):

* train mode: ``{"loss_cls", "loss_dice", "loss_mask"}`` plus ``loss_objectness`` with ``objectness`` and
  ``loss_overlap`` with ``overlap_head`` (each already weighted by its lambda; the trainer sums them).
  Targets need the ``mask_key`` stack (N, H, W) at the image size (a target without objects may omit it) and
  ``labels`` when ``object_labels`` is set; ``overlap`` (H, W) with the overlap head, and the
  ``attention_key`` map with ``attention_mask``.
* eval mode: per image ``{"boxes" (M, 4) xyxy of the binarised masks, "scores" (M,), "labels" (M,) int64
  all 1, "masks" (M, H, W) uint8 at the input size}``, ``score >= score_threshold``, at most
  ``max_detections`` (default N), best first.

``tiles_itself`` is False: the model does not slide windows; ``cytobench predict`` tiles large images around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cytobench.errors import BadInputError, CytobenchError
from cytobench.models.image_norm import image_stats, standardize
from cytobench.models.seunet.losses import masked_bce
from cytobench.models.seunet.model import pad_stack
from cytobench.models.seunet.network import SEUNetEncoder, level_masks
from cytobench.models.sparse_seunet.decoder import AGGREGATIONS, InstanceAwareDecoder, LevelDecoder
from cytobench.models.sparse_seunet.losses import OBJECTNESS_LOSSES, InstanceLossConfig, instance_losses
from cytobench.models.sparse_seunet.postprocess import instances_from_outputs

__all__ = ["LOSS_TERMS", "MASK_KEYS", "SparseSEUNet"]

MASK_KEYS = ("auto", "amodal_masks", "masks")
LOSS_TERMS = ("cls", "dice", "mask", "objectness", "overlap")
DEFAULT_LOSS_WEIGHTS = {"cls": 2.0, "dice": 2.0, "mask": 5.0, "objectness": 1.0, "overlap": 1.0}
FOCAL_MODES = ("eq4_5", "eq5_1")


class SparseSEUNet(nn.Module):
    """SEU-Net with a sparse instance-aware decoder (see the module docstring for variants and contract).

    Args:
        in_channels: image channels (2 = the two brightfield focal planes).
        depth / width / se_reduction: SEU-Net's encoder and decoder (as :class:`~cytobench.models.seunet.SEUNet`).
        num_instances: N, predictions per image.
        branch_channels: channels D of the mask and instance branches (= instance feature length).
        kernel_dim: mask kernel length (= mask feature channels).
        branch_convs: 3x3 convolutions per branch at the top level (4 in the thesis).
        aggregation: ``single`` or ``multi``.
        overlap_head / attention_mask / objectness: the variants of the module docstring.
        objectness_loss: ``bce`` (against the matched mask IoU) or ``mse`` (Eq. 5.2).
        mask_key: ``auto``, ``amodal_masks`` or ``masks``.
        object_labels: target labels learned as objects; None for all.
        matching_weight: lambda of Eq. 4.11.
        loss_weights: term -> lambda for ``cls``, ``dice``, ``mask``, ``objectness``, ``overlap`` (missing
            terms keep the defaults 2, 2, 5, 1, 1).
        focal_alpha / focal_gamma: the class focal loss (Eq. 4.17) and the overlap focal loss.
        focal_mode: the overlap focal loss' formula with ``attention_mask`` (``eq4_5`` or ``eq5_1``).
        attention_key: target map used as the overlap focal loss' attention P.
        score_threshold / max_detections / mask_threshold: inference (max_detections None = N).
        image_mean / image_std: per-channel normalisation; None standardises each image on its own.
    """

    tiles_itself = False

    def __init__(
        self,
        in_channels: int = 2,
        depth: int = 4,
        width: int = 32,
        se_reduction: int = 16,
        num_instances: int = 100,
        branch_channels: int = 64,
        kernel_dim: int = 64,
        branch_convs: int = 4,
        aggregation: str = "single",
        overlap_head: bool = False,
        attention_mask: bool = False,
        objectness: bool = False,
        objectness_loss: str = "bce",
        mask_key: str = "auto",
        object_labels: Sequence[int] | None = (1,),
        matching_weight: float = 0.8,
        loss_weights: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        focal_mode: str = "eq4_5",
        attention_key: str = "overlap_attention",
        score_threshold: float = 0.05,
        max_detections: int | None = None,
        mask_threshold: float = 0.5,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        sizes = {
            "in_channels": in_channels,
            "depth": depth,
            "width": width,
            "se_reduction": se_reduction,
            "num_instances": num_instances,
            "branch_channels": branch_channels,
            "kernel_dim": kernel_dim,
            "branch_convs": branch_convs,
        }
        small = {k: v for k, v in sizes.items() if int(v) < 1}
        if small:
            raise BadInputError("model", f"SparseSEU-Net needs sizes >= 1, got {small}")
        if aggregation not in AGGREGATIONS:
            raise BadInputError(
                "model.aggregation", f"must be one of {list(AGGREGATIONS)}, got {aggregation!r}"
            )
        if mask_key not in MASK_KEYS:
            raise BadInputError("model.mask_key", f"must be one of {list(MASK_KEYS)}, got {mask_key!r}")
        if attention_mask and not overlap_head:
            raise BadInputError("model.attention_mask", "trains the overlap head: set overlap_head: true too")
        if focal_mode not in FOCAL_MODES:
            raise BadInputError("model.focal_mode", f"must be one of {list(FOCAL_MODES)}, got {focal_mode!r}")
        if objectness_loss not in OBJECTNESS_LOSSES:
            raise BadInputError(
                "model.objectness_loss", f"must be one of {list(OBJECTNESS_LOSSES)}, got {objectness_loss!r}"
            )
        weights = {**DEFAULT_LOSS_WEIGHTS, **{str(k): float(v) for k, v in (loss_weights or {}).items()}}
        bad = {k: v for k, v in weights.items() if k not in LOSS_TERMS or v < 0}
        if bad:
            raise BadInputError(
                "model.loss_weights", f"needs weights >= 0 of terms {list(LOSS_TERMS)}, got {bad}"
            )
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 < mask_threshold < 1.0:
            raise BadInputError(
                "model",
                f"score_threshold must lie in [0, 1], mask_threshold in (0, 1); got {score_threshold}, "
                f"{mask_threshold}",
            )
        self.in_channels, self.depth = int(in_channels), int(depth)
        self.num_instances = int(num_instances)
        self.aggregation = aggregation
        self.overlap_head, self.attention_mask = bool(overlap_head), bool(attention_mask)
        self.objectness = bool(objectness)
        self.mask_key = mask_key
        self.object_labels = None if object_labels is None else tuple(int(v) for v in object_labels)
        self.loss_weights = weights
        self.focal_alpha, self.focal_gamma, self.focal_mode = (
            float(focal_alpha),
            float(focal_gamma),
            focal_mode,
        )
        self.attention_key = str(attention_key)
        self.score_threshold, self.mask_threshold = float(score_threshold), float(mask_threshold)
        self.max_detections = self.num_instances if max_detections is None else int(max_detections)
        self.loss_config = InstanceLossConfig(
            matching_weight=float(matching_weight),
            cls_weight=weights["cls"],
            dice_weight=weights["dice"],
            mask_weight=weights["mask"],
            objectness_weight=weights["objectness"],
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            objectness=self.objectness,
            objectness_loss=objectness_loss,
            mask_threshold=self.mask_threshold,
        )

        self.encoder = SEUNetEncoder(self.in_channels, int(width), self.depth, int(se_reduction))
        channels = self.encoder.channels
        self.decoder = LevelDecoder(channels, None, int(se_reduction))
        self.overlap_decoder = LevelDecoder(channels, 1, int(se_reduction)) if self.overlap_head else None
        self.instance_decoder = InstanceAwareDecoder(
            channels,
            channels[0] if self.overlap_head else 0,
            aggregation,
            int(branch_channels),
            int(kernel_dim),
            int(branch_convs),
            self.num_instances,
            self.objectness,
        )
        mean, std = image_stats(self.in_channels, image_mean, image_std)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

    # ------------------------------------------------------------------------------------------ network
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) image -> standardised (C, H, W) float."""
        if image.dim() != 3 or image.shape[0] != self.in_channels:
            raise CytobenchError(
                f"SparseSEU-Net expects ({self.in_channels}, H, W) images (model.in_channels; the data config "
                f"selects the planes), got {tuple(image.shape)}"
            )
        return standardize(image, self.image_mean, self.image_std)

    def outputs(
        self, images: Sequence[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
        """Raw outputs of a list of images and each image's (h, w).

        Returns:
            ``logits`` (B, N), ``kernels`` (B, N, K), ``objectness`` (B, N) (with the head), ``masks``
            (B, N, H', W') mask logits, ``iam`` (B, N, H', W') activation maps, ``normalizer`` (B, N),
            ``features`` (B, N, D), and ``overlap`` (B, H', W') overlap logits with the overlap head; H', W'
            the padded size (multiples of ``2**depth``), each image at the top left.
        """
        if not len(images):
            raise ValueError("SparseSEU-Net needs at least one image")
        normed = [self.normalize(img) for img in images]
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in normed]
        x = pad_stack(normed, 0.0)
        valid = pad_stack([x.new_ones((1, h, w)) for h, w in sizes], 0.0)
        step = 2**self.depth
        pad = (0, -x.shape[-1] % step, 0, -x.shape[-2] % step)
        x, valid = F.pad(x, pad), F.pad(valid, pad)
        if self.training and len(x) * x.shape[-2] * x.shape[-1] == step * step:
            raise CytobenchError(
                f"SparseSEU-Net: one training image of at most {step} x {step} px leaves batch norm one value "
                f"per channel at the bottom level (depth {self.depth}); use larger crops, batches of 2+ or a "
                "smaller depth"
            )
        valids = level_masks(valid, self.depth)
        features = self.encoder(x if valids[0] is None else x * valid, valids)
        levels = self.decoder.levels(features, valids)
        extra = overlap = None
        if self.overlap_decoder is not None:
            extra = self.overlap_decoder.levels(features, valids)[0]
            assert self.overlap_decoder.classifier is not None
            overlap = self.overlap_decoder.classifier(extra)[:, 0]
        out = self.instance_decoder(levels, valids, sizes, extra)
        if overlap is not None:
            out["overlap"] = overlap
        return out, sizes

    # ------------------------------------------------------------------------------------------ contract
    def forward(
        self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        if self.training:
            if targets is None:
                raise ValueError("SparseSEU-Net needs targets in train mode")
            return self.loss(images, targets)
        return self.predict(images)

    def target_masks(self, target: Mapping[str, Any], image: torch.Tensor) -> torch.Tensor:
        """The (M, H, W) uint8 object masks of one target that the model learns (``mask_key``, ``object_labels``).

        Raises:
            CytobenchError: no mask stack though the target has objects, a stack of the wrong size, or labels
                missing while ``object_labels`` is set.
        """
        height, width = (int(v) for v in image.shape[-2:])
        key = self.mask_key
        if key == "auto":
            key = "amodal_masks" if target.get("amodal_masks") is not None else "masks"
        masks = target.get(key)
        labels = target.get("labels")
        if masks is None:
            count = 0 if labels is None else len(labels)
            if count:
                raise CytobenchError(
                    f"SparseSEU-Net: a target with {count} objects has no '{key}' (model.mask_key; the data set "
                    "option with_masks / with_amodal_masks provides them)"
                )
            return torch.zeros((0, height, width), dtype=torch.uint8, device=image.device)
        masks = torch.as_tensor(masks).to(image.device)
        if masks.dim() != 3 or tuple(masks.shape[-2:]) != (height, width):
            raise CytobenchError(
                f"SparseSEU-Net: the target's '{key}' is {tuple(masks.shape)}, its image {tuple(image.shape)}"
            )
        if self.object_labels is not None and len(masks):
            if labels is None or len(labels) != len(masks):
                raise CytobenchError(
                    f"SparseSEU-Net: model.object_labels {list(self.object_labels)} needs one label per mask; "
                    f"got {None if labels is None else len(labels)} labels for {len(masks)} masks"
                )
            wanted = torch.as_tensor(self.object_labels, device=image.device)
            masks = masks[torch.isin(torch.as_tensor(labels, device=image.device), wanted)]
        return (masks > 0).to(torch.uint8)

    def loss(
        self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch (module docstring)."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        gt = [self.target_masks(t, img) for t, img in zip(targets, images)]
        out, sizes = self.outputs(images)
        losses = instance_losses(
            out["logits"], out["masks"], out.get("objectness"), gt, sizes, self.loss_config
        )
        if "overlap" in out:
            losses["loss_overlap"] = self.loss_weights["overlap"] * self._overlap_loss(
                out["overlap"], images, targets, sizes
            )
        return losses

    def _overlap_loss(
        self,
        logits: torch.Tensor,
        images: Sequence[torch.Tensor],
        targets: Sequence[Mapping[str, Any]],
        sizes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """BCE of the overlap logits against ``overlap`` (or the attention-steered focal loss)."""
        maps = {"overlap": [], self.attention_key: []} if self.attention_mask else {"overlap": []}
        for image, target in zip(images, targets):
            for key, found in maps.items():
                value = target.get(key)
                if value is None:
                    why = (
                        "the overlap head" if key == "overlap" else "attention_mask (the overlap focal loss)"
                    )
                    raise CytobenchError(
                        f"SparseSEU-Net: {why} needs targets with an '{key}' map (data set option maps: [{key}])"
                    )
                value = torch.as_tensor(value).to(image.device, torch.float32)
                if tuple(value.shape) != tuple(image.shape[-2:]):
                    raise CytobenchError(
                        f"SparseSEU-Net: an '{key}' map is {tuple(value.shape)}, its image {tuple(image.shape)}"
                    )
                found.append(value)
        height = max(h for h, _ in sizes)
        width = max(w for _, w in sizes)
        logits = logits[:, :height, :width]
        target = (pad_stack(maps["overlap"], 0.0) > 0).float()
        inside = pad_stack([torch.ones(s, dtype=torch.bool, device=logits.device) for s in sizes], False)
        if not self.attention_mask:
            return masked_bce(logits, target, inside)
        from cytobench.ops.focal import overlap_focal_loss

        return overlap_focal_loss(
            logits.float(),
            target,
            pad_stack(maps[self.attention_key], 0.0).clamp(0.0, 1.0),
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            mode=self.focal_mode,
            valid=inside,
        )

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        """Per image ``{"boxes", "scores", "labels", "masks"}`` at the input size (module docstring)."""
        out, sizes = self.outputs(images)
        results = []
        for b, (h, w) in enumerate(sizes):
            results.append(
                instances_from_outputs(
                    out["logits"][b],
                    out["masks"][b, :, :h, :w],
                    out["objectness"][b] if "objectness" in out else None,
                    score_threshold=self.score_threshold,
                    max_detections=self.max_detections,
                    mask_threshold=self.mask_threshold,
                )
            )
        return results
