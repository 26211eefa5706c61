"""DeepACEv2 Template Module (Sec. 2.3, Fig. 4, Eq. 1-5): a 1-d embedding per RoI and its grouping loss.

RoI features (R, 256, 7, 7) -> 1x1 conv to one channel + ReLU (Fig. 4a) -> multiplied by each of the five
constant Gaussian template masks and flattened (Fig. 4b, 5 x 49 = 245-d) -> FC 245 -> 1 (Fig. 4c).

The masks follow Eq. 1 literally with ``x_row = ID_row - 3`` and ``y_col = ID_col - 3``
(mask[row, col], row = ID_row, col = ID_col):

- ``T_D  = exp(-(x_row - y_col)^2 / 3)``  peak on the main diagonal;
- ``T_TD = exp(-(x_row + y_col)^2 / 3)``  peak on the anti-diagonal;
- ``T_H  = exp(-y_col^2 / 3)``            constant along each column, peak on the centre column;
- ``T_V  = exp(-x_row^2 / 3)``            constant along each row, peak on the centre row;
- ``T_C  = exp(-|x_row^2 + y_col^2 - 5| / 3)``  a ring of radius sqrt(5) (note: |.|, not squared).

As printed, ``T_H`` (which depends on the column only) is a vertical band of the (row, col) array and
``T_V`` a horizontal one; the labels only name the masks, the set of five is the same either way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cytobench.ops.boxes import find_repulsion_gts

__all__ = ["TEMPLATE_NAMES", "TemplateModule", "build_template_masks", "template_losses"]

TEMPLATE_NAMES = ("T_D", "T_TD", "T_H", "T_V", "T_C")


def build_template_masks(roi_size: int = 7, dtype: torch.dtype = torch.float32) -> Tensor:
    """The five constant template masks of Eq. 1.

    Args:
        roi_size: RoI feature size; 7 in the paper. Other sizes centre the coordinates at
            ``(roi_size - 1) / 2`` and keep the paper's constants (3 and 5).
        dtype: floating dtype of the result.

    Returns:
        (5, roi_size, roi_size) masks in the order ``TEMPLATE_NAMES`` (T_D, T_TD, T_H, T_V, T_C),
        indexed ``[k, ID_row, ID_col]``.
    """
    coords = torch.arange(roi_size, dtype=torch.float64) - (roi_size - 1) / 2
    x, y = torch.meshgrid(coords, coords, indexing="ij")  # x = x_row (varies along dim 0), y = y_col
    masks = torch.stack(
        [
            torch.exp(-((x - y) ** 2) / 3),
            torch.exp(-((x + y) ** 2) / 3),
            torch.exp(-(y**2) / 3),
            torch.exp(-(x**2) / 3),
            torch.exp(-(x**2 + y**2 - 5).abs() / 3),
        ]
    )
    return masks.to(dtype)


class TemplateModule(nn.Module):
    """Template Module branch: RoI features to a per-proposal embedding.

    Args:
        in_channels: channels of the RoI features (256 with FPN).
        roi_size: spatial size of the RoI features (7).
        embedding_dim: output size (1 in DeepACEv2).
        generator: optional ``torch.Generator`` for the He initialisation of the conv and FC weights.
    """

    def __init__(
        self,
        in_channels: int = 256,
        roi_size: int = 7,
        embedding_dim: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.roi_size = roi_size
        self.embedding_dim = embedding_dim
        self.fuse = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.masks: Tensor
        self.register_buffer("masks", build_template_masks(roi_size), persistent=False)
        self.fc = nn.Linear(len(TEMPLATE_NAMES) * roi_size * roi_size, embedding_dim)
        for layer in (self.fuse, self.fc):  # He initialisation (Sec. 3.2), zero biases
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            nn.init.zeros_(layer.bias)

    def forward(self, roi_features: Tensor) -> Tensor:
        """Embed each RoI.

        Args:
            roi_features: (R, in_channels, roi_size, roi_size) RoIAlign features; R may be 0.

        Returns:
            (R, embedding_dim) embeddings.
        """
        expected = (self.in_channels, self.roi_size, self.roi_size)
        if roi_features.ndim != 4 or tuple(roi_features.shape[1:]) != expected:
            raise ValueError(
                f"TemplateModule expects RoI features (R, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(roi_features.shape)}"
            )
        fused = torch.relu(self.fuse(roi_features))  # (R, 1, S, S)
        templated = fused * self.masks.to(fused.dtype)  # (R, 5, S, S)
        return self.fc(templated.flatten(1))  # (R, 5 * S * S) -> (R, embedding_dim)


def _embedding_distance(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise |a - b| for (K, D) embeddings: absolute value for D = 1, Euclidean norm otherwise."""
    if a.shape[1] == 1:
        return (a - b).abs().squeeze(1)
    return torch.linalg.vector_norm(a - b, dim=1)


def template_losses(
    embeddings: Tensor,
    proposal_gt_index: Tensor,
    gt_boxes: Tensor,
    theta: float = 0.5,
    lam: float = 2.0,
    delta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Pull (Eq. 3, with the focal factor) and push (Eq. 4-5) losses of one image.

    Pull: with ``e_bar_j`` the mean embedding of the positive proposals of ground truth ``j`` and
    ``e_hat = |e - e_bar_j|``, ``L_pull = (1 / N) sum_j sum_i (theta + e_hat)^lam * e_hat^2``, ``N`` the
    number of positive proposals. Push: for every ground truth ``g_i`` that is not isolated,
    ``g_i^rep`` is the other ground truth with the highest IoU (Eq. 4), and
    ``L_push = (1 / N'_gt) sum_i max(delta - |e_bar_{g_i} - e_bar_{g_i^rep}|, 0)``.

    Interpretation choices (the paper is silent): gradients flow through the means and the focal
    factor (nothing is detached); a ground truth is isolated when its IoU with every other one is 0;
    ``g_i^rep`` is chosen among all ground truths of the image, and a pair enters the push loss (and
    ``N'_gt``) only when both ground truths have at least one positive proposal (otherwise a mean is
    undefined); each ``i`` counts once, so a mutual pair appears twice as in the sum of Eq. 5. For
    D-dimensional embeddings ``|.|`` is the Euclidean norm.

    Args:
        embeddings: (P,) or (P, D) embeddings of the sampled proposals.
        proposal_gt_index: (P,) int64 ground truth matched to each proposal; negative values
            (background) are ignored.
        gt_boxes: (G, 4) xyxy ground-truth boxes of the image, absolute pixels.
        theta: focal threshold (0.5 in the paper).
        lam: focal exponent lambda (2 in the paper).
        delta: push margin (1 in the paper).

    Returns:
        ``(pull, push)`` scalar tensors; 0 (with a gradient path) when there is nothing to pull or push.
    """
    emb = embeddings[:, None] if embeddings.ndim == 1 else embeddings
    if emb.ndim != 2 or proposal_gt_index.shape != (emb.shape[0],):
        raise ValueError(
            f"embeddings (P,) or (P, D) and proposal_gt_index (P,) must agree, got "
            f"{tuple(embeddings.shape)} and {tuple(proposal_gt_index.shape)}"
        )
    if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must have shape (G, 4) in xyxy format, got {tuple(gt_boxes.shape)}")
    n_gt = gt_boxes.shape[0]
    positive = proposal_gt_index >= 0
    emb, idx = emb[positive], proposal_gt_index[positive].long()
    zero = embeddings.sum() * 0.0
    if emb.shape[0] == 0:
        return zero, zero.clone()
    if int(idx.max()) >= n_gt:
        raise ValueError(f"proposal_gt_index refers to ground truth {int(idx.max())} of {n_gt}")

    counts = torch.zeros(n_gt, dtype=emb.dtype, device=emb.device).index_add_(
        0, idx, torch.ones_like(idx, dtype=emb.dtype)
    )
    sums = torch.zeros(n_gt, emb.shape[1], dtype=emb.dtype, device=emb.device).index_add(0, idx, emb)
    means = sums / counts.clamp(min=1)[:, None]  # (G, D); rows of unmatched ground truths stay 0

    e_hat = _embedding_distance(emb, means[idx])
    pull = ((theta + e_hat) ** lam * e_hat**2).sum() / emb.shape[0]

    rep = find_repulsion_gts(gt_boxes).to(emb.device)
    has_props = counts > 0
    pair = (rep >= 0) & has_props & has_props[rep.clamp(min=0)]
    if not bool(pair.any()):
        return pull, zero.clone()
    i = torch.nonzero(pair).flatten()
    push = (delta - _embedding_distance(means[i], means[rep[i]])).clamp(min=0).mean()
    return pull, push
