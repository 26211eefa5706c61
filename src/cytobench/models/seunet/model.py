"""SEU-Net (thesis Sec. 4.2-4.3, Fig. 4.4): a squeeze-and-excitation U-Net with one or more binary heads.

Architecture: per-image input standardisation (per channel to zero mean / unit variance, or fixed
``image_mean`` / ``image_std``), a shared :class:`~cytobench.models.seunet.network.SEUNetEncoder`, and
decoders (:class:`~cytobench.models.seunet.network.SEUNetDecoder`) grouped as
:func:`~cytobench.models.seunet.heads.decoder_groups` says: ``decoder: shared`` puts every semantic head on one
decoder (one 1x1-convolution channel per head: the base model with ``heads: [cytoplasm]``, the
multi-channel model with several heads), ``decoder: decoupled`` gives each head its own decoder (the 2-, 3- and
4-head models); the ``overlap`` head always has its own decoder. Heads and their targets:
:mod:`cytobench.models.seunet.heads`.

Contract (``model(images, targets)``; images (C, H, W) floats, sizes may differ within a batch and need not be
divisible by ``2**depth``: the batch is zero-padded at the bottom / right, padded pixels are masked out of
every block, of the squeeze and of the loss, and outputs are cropped back; in train mode, batch norm's
statistics still count the padding of a batch of unequal sizes, so train on equal crops as the thesis does):

* train mode: ``{"loss_<head>": lambda_head * L_head}`` for every head, ``L_head`` the mean binary
  cross-entropy over the batch's valid pixels (Eq. 4.1; pixels whose ``semantic`` is ``ignore_index`` are
  left out), or for ``overlap`` with ``overlap_loss: focal`` the overlap focal loss with the target's
  ``attention_key`` map as P (:func:`cytobench.ops.focal.overlap_focal_loss`). The trainer sums the dict:
  Eq. 4.2. Targets need ``semantic`` (H, W) for semantic heads and ``overlap`` (H, W) for the overlap head.
* eval mode: per image ``{"maps": {head: (H, W) float32 probability}, "boxes": (0, 4), "scores": (0,),
  "labels": (0,) int64}`` at the input size, heads in configuration order; no ``semantic`` key (the heads are
  independent binary maps, not classes of one softmax). A head's map is scored as a binary segmentation of
  :func:`~cytobench.models.seunet.heads.head_target` at the head's threshold
  (:data:`~cytobench.models.seunet.heads.INFERENCE_THRESHOLDS`: 0.5, overlap 0.3), e.g. by a
  :class:`~cytobench.evaluation.pixel.PixelEvaluator` with ``num_classes=2`` fed ``{"semantic": maps[head]}``
  and ``{"semantic": head_target(head, target)}`` (``ignore_index=255``).

  An image with a side longer than ``window`` is predicted by sliding windows
  (:func:`~cytobench.models.seunet.sliding.sliding_window_inference`: ``window`` px windows overlapping by
  ``window_overlap`` px, probabilities averaged); it is standardised as a whole first, so every window sees
  the same intensity scale. The SE squeeze pools over each window, so windowed and whole-image predictions
  differ a little. ``window: null`` predicts every image whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cytobench.errors import BadInputError, CytobenchError
from cytobench.models.image_norm import image_stats, standardize
from cytobench.models.seunet.heads import (
    HEAD_NAMES,
    INFERENCE_THRESHOLDS,
    check_heads,
    decoder_groups,
    head_target,
)
from cytobench.models.seunet.losses import OverlapLossConfig, head_losses
from cytobench.models.seunet.network import SEUNetDecoder, SEUNetEncoder, level_masks
from cytobench.models.seunet.sliding import sliding_window_inference

__all__ = ["SEUNet"]


class SEUNet(nn.Module):
    """Squeeze-and-excitation U-Net with binary heads (see the module docstring for the contract).

    ``tiles_itself``: the model slides its own windows over large images (``window``), so
    ``cytobench predict`` does not tile around it; ``map_thresholds`` are the heads' thesis thresholds.

    Args:
        in_channels: image channels (planes; 2 = the two brightfield focal planes).
        heads: head names from :data:`~cytobench.models.seunet.heads.HEAD_NAMES`, in output order.
        decoder: ``shared`` or ``decoupled``.
        depth: downsamplings of the encoder (4 in U-Net).
        width: channels of the first level (doubled per level).
        se_reduction: bottleneck ratio of the SE gates.
        loss_weights: head -> lambda of Eq. 4.2 (heads not listed weigh 1).
        overlap_loss: ``focal`` or ``bce`` for the overlap head.
        focal_alpha / focal_gamma / focal_mode: the overlap focal loss' parameters.
        attention_key: target map used as the focal loss' P (absent from the targets: plain focal loss).
        window / window_overlap / window_batch_size: sliding-window inference for images with a side longer
            than ``window`` (None or 0: never); ``window_batch_size`` windows per forward pass, None = 1 on the
            CPU (batched windows there cost more CPU time than one at a time: bench/bench_seunet_sliding.py)
            and 4 on a GPU.
        image_mean / image_std: per-channel normalisation; None standardises each image on its own.
        ignore_index: ``semantic`` value left out of the loss.
    """

    tiles_itself = True

    def __init__(
        self,
        in_channels: int = 2,
        heads: Sequence[str] = ("cytoplasm",),
        decoder: str = "shared",
        depth: int = 4,
        width: int = 32,
        se_reduction: int = 16,
        loss_weights: Mapping[str, float] | None = None,
        overlap_loss: str = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        focal_mode: str = "eq4_5",
        attention_key: str | None = "overlap_attention",
        window: int | None = 512,
        window_overlap: int = 256,
        window_batch_size: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if in_channels < 1 or depth < 1 or width < 1 or se_reduction < 1:
            raise BadInputError(
                "model",
                f"SEU-Net needs in_channels, depth, width and se_reduction >= 1; got {in_channels}, {depth}, "
                f"{width}, {se_reduction}",
            )
        self.heads = check_heads(heads, decoder)
        self.in_channels, self.depth, self.ignore_index = int(in_channels), int(depth), int(ignore_index)
        self.loss_weights = {str(k): float(v) for k, v in (loss_weights or {}).items()}
        bad = {k: v for k, v in self.loss_weights.items() if k not in HEAD_NAMES or v < 0}
        if bad:
            raise BadInputError(
                "model.loss_weights", f"needs weights >= 0 of heads from {list(HEAD_NAMES)}, got {bad}"
            )
        self.overlap_loss = OverlapLossConfig(
            str(overlap_loss), float(focal_alpha), float(focal_gamma), str(focal_mode)
        )
        self.attention_key = attention_key
        self.window = int(window) if window else None
        self.window_overlap = int(window_overlap)
        self.window_batch_size = None if window_batch_size is None else int(window_batch_size)
        if self.window is not None and self.window < 1:
            raise BadInputError("model.window", f"must be >= 1 or null, got {self.window}")
        if self.window is not None and not 0 <= self.window_overlap < self.window:
            raise BadInputError(
                "model.window_overlap", f"must lie in [0, window = {self.window}), got {self.window_overlap}"
            )
        if self.window_batch_size is not None and self.window_batch_size < 1:
            raise BadInputError("model.window_batch_size", f"must be >= 1, got {self.window_batch_size}")

        self.encoder = SEUNetEncoder(self.in_channels, int(width), self.depth, int(se_reduction))
        self.groups = decoder_groups(self.heads, decoder)
        self.decoders = nn.ModuleList(
            SEUNetDecoder(self.encoder.channels, len(group), int(se_reduction)) for group in self.groups
        )
        produced = [head for group in self.groups for head in group]  # decoder outputs, concatenated
        self.head_channels = [produced.index(head) for head in self.heads]
        self.map_thresholds = {head: INFERENCE_THRESHOLDS.get(head, 0.5) for head in self.heads}
        mean, std = image_stats(self.in_channels, image_mean, image_std)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

    # ------------------------------------------------------------------------------------------ network
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) image -> standardised (C, H, W) float."""
        if image.dim() != 3 or image.shape[0] != self.in_channels:
            raise CytobenchError(
                f"SEU-Net expects ({self.in_channels}, H, W) images (model.in_channels; the data config selects "
                f"the planes), got {tuple(image.shape)}"
            )
        return standardize(image, self.image_mean, self.image_std)

    def padded_logits(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised batch, (B, 1, H, W) valid mask -> (B, heads, H, W) logits in head order.

        H and W are first padded up to multiples of ``2**depth`` (and the result cropped back).
        """
        height, width = x.shape[-2:]
        step = 2**self.depth
        pad = (0, -width % step, 0, -height % step)
        x, valid = F.pad(x, pad), F.pad(valid, pad)
        if self.training and len(x) * x.shape[-2] * x.shape[-1] == step * step:
            raise CytobenchError(
                f"SEU-Net: one training image of at most {step} x {step} px leaves batch norm one value per channel "
                f"at the bottom level (depth {self.depth}); use larger crops, batches of 2+ or a smaller depth"
            )
        valids = level_masks(valid, self.depth)
        features = self.encoder(x if valids[0] is None else x * valid, valids)
        logits = torch.cat([dec(features, valids) for dec in self.decoders], dim=1)
        return logits[:, self.head_channels, :height, :width]

    def logits(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Head logits of a list of images: ``((B, heads, Hmax, Wmax) logits, (B, Hmax, Wmax) bool inside)``."""
        x = pad_stack([self.normalize(img) for img in images], 0.0)
        inside = pad_stack([img.new_ones(img.shape[-2:], dtype=torch.bool) for img in images], False)
        return self.padded_logits(x, inside[:, None].to(x.dtype)), inside

    # ------------------------------------------------------------------------------------------ contract
    def forward(
        self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        if self.training:
            if targets is None:
                raise ValueError("SEU-Net needs targets in train mode")
            return self.loss(images, targets)
        return self.predict(images)

    def loss(
        self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """``{"loss_<head>": lambda_head * L_head}`` of one batch (see the module docstring)."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        logits, inside = self.logits(images)
        by_head, labels, valid = {}, {}, {}
        for channel, head in enumerate(self.heads):
            per_image = []
            for image, target in zip(images, targets):
                label = head_target(head, target, self.ignore_index).to(logits.device)
                if tuple(label.shape) != tuple(image.shape[-2:]):
                    raise CytobenchError(
                        f"SEU-Net: the {head} target is {tuple(label.shape)}, its image {tuple(image.shape)}"
                    )
                per_image.append(label)
            label = pad_stack(per_image, self.ignore_index)
            by_head[head] = logits[:, channel]
            labels[head] = label == 1
            valid[head] = inside & (label != self.ignore_index)
        return head_losses(
            by_head, labels, valid, self.loss_weights, self.overlap_loss, self._attention(images, targets)
        )

    def _attention(
        self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, Any]]
    ) -> torch.Tensor | None:
        """The batch's (B, Hmax, Wmax) attention maps for the overlap focal loss, or None when none has one."""
        if "overlap" not in self.heads or self.overlap_loss.kind != "focal" or self.attention_key is None:
            return None
        maps = [target.get(self.attention_key) for target in targets]
        if all(m is None for m in maps):
            return None
        if any(m is None for m in maps):
            raise CytobenchError(
                f"SEU-Net: some targets of a batch have an '{self.attention_key}' map and some do not"
            )
        maps = [torch.as_tensor(m).to(image.device, torch.float32) for m, image in zip(maps, images)]
        for attention, image in zip(maps, images):
            if attention.shape != image.shape[-2:]:
                raise CytobenchError(
                    f"SEU-Net: an '{self.attention_key}' map is {tuple(attention.shape)}, its image "
                    f"{tuple(image.shape)}"
                )
        return pad_stack(maps, 0.0)

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        """Per image ``{"maps": {head: (H, W) probability}, "boxes", "scores", "labels"}`` (empty detections)."""
        normed = [self.normalize(img) for img in images]
        probs: list[torch.Tensor | None] = [None] * len(images)
        whole = [i for i, x in enumerate(normed) if not self._slides(x)]
        if whole:
            x = pad_stack([normed[i] for i in whole], 0.0)
            inside = pad_stack([x.new_ones((1, *normed[i].shape[-2:])) for i in whole], 0.0)
            batch = self.padded_logits(x, inside).float().sigmoid()
            for row, i in enumerate(whole):
                probs[i] = batch[row, :, : normed[i].shape[-2], : normed[i].shape[-1]]
        for i, x in enumerate(normed):
            if probs[i] is None:
                assert self.window is not None
                batch_size = self.window_batch_size or (1 if x.device.type == "cpu" else 4)
                probs[i] = sliding_window_inference(
                    self._window_probabilities, x, self.window, self.window_overlap, batch_size
                )
        out = []
        for prob in probs:
            assert prob is not None
            out.append(
                {
                    "maps": {head: prob[channel].float() for channel, head in enumerate(self.heads)},
                    "boxes": prob.new_zeros((0, 4)),
                    "scores": prob.new_zeros((0,)),
                    "labels": torch.zeros((0,), dtype=torch.int64, device=prob.device),
                }
            )
        return out

    def _slides(self, image: torch.Tensor) -> bool:
        return self.window is not None and max(image.shape[-2:]) > self.window

    def _window_probabilities(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) normalised windows -> (B, heads, h, w) probabilities."""
        valid = windows.new_ones((len(windows), 1, *windows.shape[-2:]))
        return self.padded_logits(windows, valid).float().sigmoid()


def pad_stack(items: Sequence[torch.Tensor], value: float | bool) -> torch.Tensor:
    """Stack (..., H, W) tensors, padding each at the bottom / right with ``value`` to the largest H and W."""
    height = max(int(t.shape[-2]) for t in items)
    width = max(int(t.shape[-1]) for t in items)
    return torch.stack(
        [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in items]
    )
