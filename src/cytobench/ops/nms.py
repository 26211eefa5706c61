"""Score-decaying NMS: Gaussian Soft-NMS and DeepACEv2's Embedding-Guided NMS (Sec. 2.4, Algorithm 1).

Both keep every candidate but decay its score each time an overlapping box is selected:

- Soft-NMS (Bodla et al. 2017, Gaussian): ``s_i <- s_i * exp(-iou(b_max, b_i)^2 / sigma)``.
- Embedding-Guided NMS: ``s_i <- s_i * exp(-iou(b_max, b_i)^(1.5 + S(d)) / sigma)`` with
  ``d = |e_max - e_i|`` and ``S(d) = 1 / (1 + exp(-2 (d - delta)))``. As ``iou <= 1``, a far embedding
  (``d > delta``, exponent above 2) decays the score less than Soft-NMS and a near one (exponent
  below 2) more; at ``d = delta`` both are equal.

The decay factor of a pair does not depend on the scores, so the fast versions precompute the
full (N, N) factor matrix once (IoU matrix and embedding-distance matrix) and each selection step is
two numpy ops over all candidates at once: an argmax and one row-wise multiply (numpy, because
torch's per-call overhead, not the arithmetic, dominated the greedy loop at N <= 2,000). Candidates
whose decayed score falls below ``score_threshold`` are dropped (scores only decrease, so selection
simply stops at the first maximum below it). Boxes are ``(x1, y1, x2, y2)`` in absolute pixels.
These are post-processing ops: scores are detached, nothing is differentiable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cytobench.ops.boxes import box_iou_safe

__all__ = ["embedding_guided_nms", "embedding_guided_nms_reference", "embedding_distances", "soft_nms"]


def _check_inputs(boxes: Tensor, scores: Tensor, sigma: float, embeddings: Tensor | None = None) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) in xyxy format, got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) to match boxes, got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    if n and not bool((scores >= 0).all()):
        raise ValueError("scores must be non-negative (probabilities), got negative or NaN values")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if embeddings is not None and (embeddings.ndim not in (1, 2) or embeddings.shape[0] != n):
        raise ValueError(f"embeddings must have shape ({n},) or ({n}, D), got {tuple(embeddings.shape)}")


def embedding_distances(embeddings: Tensor) -> Tensor:
    """Pairwise embedding distances ``d_ij = |e_i - e_j|``.

    Args:
        embeddings: (N,) scalar embeddings or (N, D) vectors.

    Returns:
        (N, N) absolute differences for (N,), Euclidean distances for (N, D) (exact, no matmul trick).
    """
    if embeddings.ndim == 1:
        return (embeddings[:, None] - embeddings[None, :]).abs()
    return torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")


def _select_with_decay(
    scores: Tensor, decay: Tensor, score_threshold: float, max_keep: int | None
) -> tuple[Tensor, Tensor]:
    """Greedy selection with multiplicative score decay.

    Args:
        scores: (N,) non-negative scores.
        decay: (N, N) factors; row ``i`` multiplies every score when candidate ``i`` is selected.
        score_threshold: candidates whose current score is below it are never selected.
        max_keep: stop after this many selections (``None``: no limit).

    Returns:
        ``(keep, new_scores)``: (K,) int64 indices in selection order and their (K,) scores at selection.
    """
    n = scores.shape[0]
    limit = n if max_keep is None else min(n, max_keep)
    keep: list[int] = []
    kept: list[float] = []
    if n and limit > 0:
        # A selected candidate is marked -inf through its own row (diagonal -inf); the factors are
        # clamped above 0 so that -inf never meets a 0 factor (which would give NaN).
        dtype = torch.float32 if scores.dtype == torch.bfloat16 else scores.dtype  # numpy has no bfloat16
        decay = decay.to(dtype).clamp(min=torch.finfo(dtype).tiny)
        decay.fill_diagonal_(-math.inf)
        # numpy: the same IEEE products in the same dtype as torch's, so the same numbers.
        rows = decay.detach().cpu().numpy()
        cur = scores.detach().to("cpu", dtype).numpy().copy()
        while len(keep) < limit:
            i = int(cur.argmax())  # ties: the lowest index
            v = float(cur[i])
            if v < score_threshold or v == -math.inf:
                break
            if v == 0.0:  # every remaining score is 0 and stays 0: the rest follow in index order
                rest = np.flatnonzero(cur == 0)[: limit - len(keep)].tolist()
                keep.extend(rest)
                kept.extend([0.0] * len(rest))
                break
            keep.append(i)
            kept.append(v)
            np.multiply(cur, rows[i], out=cur)
    return (
        torch.tensor(keep, dtype=torch.int64, device=scores.device),
        torch.tensor(kept, dtype=scores.dtype, device=scores.device),
    )


@torch.no_grad()
def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    sigma: float = 0.5,
    score_threshold: float = 0.0,
    *,
    max_keep: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Gaussian Soft-NMS: every remaining score decays by ``exp(-iou^2 / sigma)`` per selection.

    Args:
        boxes: (N, 4) xyxy boxes in absolute pixels.
        scores: (N,) non-negative float scores.
        sigma: Gaussian width (DeepACEv2 uses 0.5).
        score_threshold: candidates whose decayed score is below it are dropped (0.0 keeps all).
        max_keep: optional cap on the number of returned detections (e.g. 100).

    Returns:
        ``(keep, new_scores)``: (K,) int64 indices into ``boxes`` in selection order and the (K,)
        decayed scores at selection (non-increasing), in the dtype of ``scores``.
    """
    _check_inputs(boxes, scores, sigma)
    iou = box_iou_safe(boxes, boxes)
    decay = iou.square_().neg_().div_(sigma).exp_()  # exp(-iou^2 / sigma), in place
    return _select_with_decay(scores, decay, score_threshold, max_keep)


@torch.no_grad()
def embedding_guided_nms(
    boxes: Tensor,
    scores: Tensor,
    embeddings: Tensor,
    sigma: float = 0.5,
    delta: float = 0.3,
    score_threshold: float = 0.0,
    *,
    max_keep: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Embedding-Guided NMS (DeepACEv2 Algorithm 1), vectorised over the candidates.

    When ``b_max`` is selected every remaining score becomes
    ``s_i * exp(-iou(b_max, b_i)^(1.5 + S(d)) / sigma)``, ``S(d) = sigmoid(2 (d - delta))``,
    ``d = |e_max - e_i|`` (Euclidean norm for vector embeddings).

    Args:
        boxes: (N, 4) xyxy boxes in absolute pixels.
        scores: (N,) non-negative float scores.
        embeddings: (N,) Template Module embeddings, or (N, D).
        sigma: Gaussian width (DeepACEv2 uses 0.5).
        delta: embedding-distance threshold Delta (DeepACEv2 uses 0.3).
        score_threshold: candidates whose decayed score is below it are dropped (0.0 keeps all).
        max_keep: optional cap on the number of returned detections (e.g. 100).

    Returns:
        ``(keep, new_scores)``: (K,) int64 indices into ``boxes`` in selection order and the (K,)
        decayed scores at selection (non-increasing), in the dtype of ``scores``.
    """
    _check_inputs(boxes, scores, sigma, embeddings)
    iou = box_iou_safe(boxes, boxes)
    power = 1.5 + torch.sigmoid(2.0 * (embedding_distances(embeddings.to(iou.dtype)) - delta))
    decay = iou.pow_(power).neg_().div_(sigma).exp_()  # exp(-iou^power / sigma), in place
    return _select_with_decay(scores, decay, score_threshold, max_keep)


def _iou_py(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def embedding_guided_nms_reference(
    boxes: Tensor,
    scores: Tensor,
    embeddings: Tensor | None,
    sigma: float = 0.5,
    delta: float = 0.3,
    score_threshold: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Algorithm 1 written as the paper's per-pair Python loop (the test oracle and bench baseline).

    Plain Python floats throughout. Step 3's "sort B by score, take the first" is done as a linear
    scan for the first maximum over ``B`` kept in input order, which is what a stable sort would pick.
    Candidates whose decayed score drops below ``score_threshold`` are removed from ``B``.
    With ``embeddings=None`` the decay exponent is 2: the same loop is Gaussian Soft-NMS.

    Args:
        boxes: (N, 4) xyxy boxes in absolute pixels.
        scores: (N,) non-negative float scores.
        embeddings: (N,) or (N, D) embeddings; None for Soft-NMS.
        sigma: Gaussian width.
        delta: embedding-distance threshold.
        score_threshold: drop threshold on decayed scores.

    Returns:
        ``(keep, new_scores)`` as :func:`embedding_guided_nms` (scores in the dtype of ``scores``).
    """
    _check_inputs(boxes, scores, sigma, embeddings)
    b = boxes.tolist()
    s = scores.tolist()
    if embeddings is None:
        e = None
    else:
        e = [[v] for v in embeddings.tolist()] if embeddings.ndim == 1 else embeddings.tolist()
    remaining = [i for i in range(len(b)) if s[i] >= score_threshold]
    keep: list[int] = []
    kept: list[float] = []
    while remaining:
        pos = 0
        for k in range(1, len(remaining)):
            if s[remaining[k]] > s[remaining[pos]]:
                pos = k
        m = remaining.pop(pos)
        keep.append(m)
        kept.append(s[m])
        survivors = []
        for i in remaining:
            decay_power = 2.0
            if e is not None:
                d = math.sqrt(sum((x - y) ** 2 for x, y in zip(e[m], e[i])))
                decay_power = 1.5 + 1.0 / (1.0 + math.exp(-2.0 * (d - delta)))
            s[i] = s[i] * math.exp(-(_iou_py(b[m], b[i]) ** decay_power) / sigma)
            if s[i] >= score_threshold:
                survivors.append(i)
        remaining = survivors
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(kept, dtype=scores.dtype)
