"""SparseSEU-Net's decoders: SEU-Net's expanding path with every level's features, and the instance-aware
decoder on top of it (thesis Sec. 4.5.2, 4.5.4; SparseInst's instance activation maps).

* :class:`LevelDecoder` is :class:`~cytobench.models.seunet.network.SEUNetDecoder` returning the feature map of
  every level instead of only the 1x1 classifier's logits (the classifier is kept when the decoder also
  predicts a map, as the overlap decoder does).
* :class:`InstanceBranch`: four 3x3 convolutions + ReLU, then the instance activation maps (IAM) ``A``: a 3x3
  convolution to N maps and a sigmoid. ``A'`` is ``A`` divided by its sum over the pixels (each of the N maps
  sums to 1), and the instance features are ``a = A' I^T`` (Eq. 4.9), one D-vector per map, ``I`` the
  branch's own features (as SparseInst does: the features the maps were computed from). A linear layer +
  ReLU, then three linear heads: the class logit (one class, "cell"), the mask kernel ``k_i`` and the
  objectness logit (the thesis' "two linear layers" projecting ``a``).
* :class:`MaskBranch`: four 3x3 convolutions + ReLU and a 1x1 projection to the kernel dimension: the mask
  features ``M``. Mask logits ``m_i = k_i . M`` (a dot product per pixel).
* :class:`InstanceAwareDecoder` joins them. ``aggregation="single"`` (the thesis' "vanilla" model) forks into
  the two branches at the decoder's last (full-resolution) level only. ``aggregation="multi"`` (Sec. 4.5.4,
  Fig. 4.12-4.13, Table 5.10) forks at every level, from the bottleneck up: at level l each branch applies a
  3x3 convolution + ReLU to the decoder's level-l features concatenated with its own level-(l+1) output
  upsampled x2 (bilinear); at level 0 the four-convolution branches take the decoder's features, the
  upsampled level-1 branch output and the coordinates, so information flows from the bottleneck to the top
  in both branches. Both variants concatenate two coordinate channels (x, y in [-1, 1] across each image's
  own extent, so padding does not shift them) to the branch inputs at level 0, as SparseInst does.

Every convolution's output is zeroed outside ``valid`` (the pixels of the image rather than of the batch's
padding) and the IAM is too, so an image's instance features ignore the padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cytobench.models.seunet.network import SEUNetDecoder

__all__ = [
    "AGGREGATIONS",
    "InstanceAwareDecoder",
    "InstanceBranch",
    "LevelDecoder",
    "MaskBranch",
    "coordinate_maps",
]

AGGREGATIONS = ("single", "multi")
PRIOR_PROB = (
    0.01  # initial foreground probability of the class logits and of the IAM (SparseInst / RetinaNet)
)


class LevelDecoder(SEUNetDecoder):
    """SEU-Net's decoder returning the features of every level.

    Args:
        channels: the encoder's channels per level.
        out_channels: logit maps of the 1x1 classifier, or None for a decoder without one.
        se_reduction: SE bottleneck ratio.
    """

    def __init__(self, channels: list[int], out_channels: int | None, se_reduction: int) -> None:
        super().__init__(channels, out_channels or 1, se_reduction)
        if out_channels is None:
            self.classifier = None  # a parameter without gradient would trouble DDP

    def levels(self, features: list[torch.Tensor], valids: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Encoder features of levels 0..depth -> the decoder's feature map of every level 0..depth.

        Entry ``depth`` is the bottleneck (the encoder's deepest map), entry l < depth the decoder block's
        output at level l (``channels[l]`` channels, the resolution of encoder level l).
        """
        out = [features[-1]]
        x = features[-1]
        for step, (up, block) in enumerate(zip(self.ups, self.blocks)):
            level = len(features) - 2 - step
            x = up(x)
            if valids[level] is not None:  # the transposed convolution's bias would leak into the padding
                x = x * valids[level]
            x = block(torch.cat([features[level], x], dim=1), valids[level])
            out.append(x)
        return out[::-1]


def coordinate_maps(
    sizes: Sequence[tuple[int, int]], height: int, width: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B, 2, height, width) x and y coordinates, -1 to 1 across each image's own (h, w) extent.

    Pixels outside an image's extent (padding) get values beyond 1; the caller zeroes them. A side of one
    pixel gets coordinate 0.
    """
    maps = torch.empty((len(sizes), 2, height, width), device=device)
    for b, (h, w) in enumerate(sizes):
        xs = torch.arange(width, device=device, dtype=torch.float32) * (2.0 / max(w - 1, 1)) - float(w > 1)
        ys = torch.arange(height, device=device, dtype=torch.float32) * (2.0 / max(h - 1, 1)) - float(h > 1)
        maps[b, 0] = xs[None, :]
        maps[b, 1] = ys[:, None]
    return maps


def _masked(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return x if valid is None else x * valid


class ConvStack(nn.Module):
    """``num_convs`` (3x3 convolution, ReLU) layers, zeroed outside ``valid`` after each (He init)."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1)
            for i in range(num_convs)
        )
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        for conv in self.convs:
            x = _masked(F.relu(conv(x), inplace=True), valid)
        return x


class InstanceBranch(nn.Module):
    """Instance branch: features -> IAM -> instance features -> class, kernel and objectness (Eq. 4.9).

    Args:
        in_channels: channels of the branch input (coordinates included).
        dim: channels of the branch's convolutions = length D of an instance feature.
        num_convs: 3x3 convolutions before the IAM (4 in the thesis).
        num_instances: N, the number of activation maps = predictions per image.
        kernel_dim: length of a mask kernel (the mask branch's projection).
        objectness: add the objectness head (off: no parameter left without a gradient).
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        num_convs: int,
        num_instances: int,
        kernel_dim: int,
        objectness: bool,
    ) -> None:
        super().__init__()
        self.convs = ConvStack(in_channels, dim, num_convs)
        self.iam_conv = nn.Conv2d(dim, num_instances, 3, padding=1)
        self.fc = nn.Linear(dim, dim)
        self.cls_score = nn.Linear(dim, 1)
        self.mask_kernel = nn.Linear(dim, kernel_dim)
        self.objectness = nn.Linear(dim, 1) if objectness else None
        prior_bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        for layer in (self.iam_conv, self.cls_score):  # a low start: few maps / classes fire at first
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, prior_bias)
        nn.init.normal_(self.mask_kernel.weight, std=0.01)
        nn.init.zeros_(self.mask_kernel.bias)

    def activation_maps(self, features: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """(B, D, H, W) branch features -> (B, N, H, W) IAM probabilities ``A`` (0 outside ``valid``)."""
        return _masked(torch.sigmoid(self.iam_conv(features)), valid)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """(B, in, H, W) -> ``iam`` (B, N, H, W) A; ``normalizer`` (B, N) its pixel sums; ``features``
        (B, N, D) ``a = A' I^T``; ``logits`` (B, N); ``kernels`` (B, N, K); ``objectness`` (B, N) logits
        (with the objectness head)."""
        features = self.convs(x, valid)
        iam = self.activation_maps(features, valid)
        batch, num = iam.shape[:2]
        flat = iam.reshape(batch, num, -1)
        normalizer = flat.sum(-1).clamp(min=1e-6)
        # A' I^T without materialising A' = A / sum(A): divide the (B, N, D) product instead (same numbers)
        inst = torch.bmm(flat, features.flatten(2).transpose(1, 2)) / normalizer[..., None]
        hidden = F.relu(self.fc(inst))
        out = {
            "iam": iam,
            "normalizer": normalizer,
            "features": inst,
            "logits": self.cls_score(hidden)[..., 0],
            "kernels": self.mask_kernel(hidden),
        }
        if self.objectness is not None:
            out["objectness"] = self.objectness(hidden)[..., 0]
        return out


class MaskBranch(nn.Module):
    """Mask branch: ``num_convs`` 3x3 convolutions + ReLU and a 1x1 projection to ``kernel_dim`` channels (M)."""

    def __init__(self, in_channels: int, dim: int, num_convs: int, kernel_dim: int) -> None:
        super().__init__()
        self.convs = ConvStack(in_channels, dim, num_convs)
        self.projection = nn.Conv2d(dim, kernel_dim, 1)
        nn.init.kaiming_normal_(self.projection.weight, nonlinearity="relu")
        nn.init.zeros_(self.projection.bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return _masked(self.projection(self.convs(x, valid)), valid)


class InstanceAwareDecoder(nn.Module):
    """Mask and instance branches on SEU-Net's decoder levels (module docstring).

    Args:
        channels: the decoder's channels per level 0..depth (the encoder's).
        extra_channels: channels concatenated to the level-0 features before forking (the overlap decoder's
            features, Sec. 5.7.1), 0 for none.
        aggregation: ``single`` or ``multi``.
        dim: channels of both branches' convolutions.
        kernel_dim: mask kernel length (= mask feature channels).
        num_convs: convolutions per branch at level 0.
        num_instances: N.
        objectness: add the objectness head.
    """

    def __init__(
        self,
        channels: Sequence[int],
        extra_channels: int,
        aggregation: str,
        dim: int,
        kernel_dim: int,
        num_convs: int,
        num_instances: int,
        objectness: bool = False,
    ) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
        self.aggregation = aggregation
        top = int(channels[0]) + int(extra_channels) + 2  # + x, y coordinates
        if aggregation == "multi":
            depth = len(channels) - 1
            # level l = depth (the bottleneck) down to 1; index i holds level depth - i
            ins = [int(channels[depth - i]) + (dim if i else 0) for i in range(depth)]
            self.inst_levels = nn.ModuleList(ConvStack(c, dim, 1) for c in ins)
            self.mask_levels = nn.ModuleList(ConvStack(c, dim, 1) for c in ins)
            top += dim
        self.instance = InstanceBranch(top, dim, num_convs, num_instances, kernel_dim, objectness)
        self.mask = MaskBranch(top, dim, num_convs, kernel_dim)

    def _lower_levels(
        self, levels: list[torch.Tensor], valids: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-level: the two branches from the bottleneck up to level 1, upsampled to level 0."""
        depth = len(levels) - 1
        inst = mask = None
        for i, (inst_conv, mask_conv) in enumerate(zip(self.inst_levels, self.mask_levels)):
            level = depth - i
            x = levels[level]
            if inst is None or mask is None:
                inst, mask = inst_conv(x, valids[level]), mask_conv(x, valids[level])
            else:
                inst = inst_conv(torch.cat([x, _up(inst, x)], 1), valids[level])
                mask = mask_conv(torch.cat([x, _up(mask, x)], 1), valids[level])
        assert inst is not None and mask is not None
        return _masked(_up(inst, levels[0]), valids[0]), _masked(_up(mask, levels[0]), valids[0])

    def forward(
        self,
        levels: list[torch.Tensor],
        valids: list[torch.Tensor | None],
        sizes: Sequence[tuple[int, int]],
        extra: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Decoder features of levels 0..depth -> the instance branch's outputs plus ``masks`` (B, N, H, W)
        mask logits at level 0's resolution (the padded input size).

        Args:
            levels: :meth:`LevelDecoder.levels`' output.
            valids: per-level valid masks (:func:`~cytobench.models.seunet.network.level_masks`).
            sizes: each image's (h, w) inside the padded batch.
            extra: (B, extra_channels, H, W) features concatenated at level 0, or None.
        """
        x0 = levels[0]
        coords = _masked(
            coordinate_maps(sizes, x0.shape[-2], x0.shape[-1], x0.device).to(x0.dtype), valids[0]
        )
        base = [x0, *([extra] if extra is not None else []), coords]
        if self.aggregation == "multi":
            inst_low, mask_low = self._lower_levels(levels, valids)
            inst_in, mask_in = torch.cat([*base, inst_low], 1), torch.cat([*base, mask_low], 1)
        else:
            inst_in = mask_in = torch.cat(base, 1)
        out = self.instance(inst_in, valids[0])
        mask_features = self.mask(mask_in, valids[0])
        batch, kdim, height, width = mask_features.shape
        masks = torch.bmm(out["kernels"], mask_features.reshape(batch, kdim, height * width))
        out["masks"] = masks.reshape(batch, -1, height, width)  # m_i = k_i . M at every pixel
        return out


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` bilinearly resized to ``like``'s height and width (x2 between neighbouring levels)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
