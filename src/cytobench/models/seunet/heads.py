"""SEU-Net's heads: what each predicts, how its binary target is built, how heads share decoders.

Heads (thesis Sec. 4.2.2-4.3), each a binary map built from a target of the brightfield data contract
(``semantic``: 0 background, 1 cytoplasm, 2 nucleus, 3 border; ``overlap``: 0/1):

========== ============================================ ====================
head       foreground                                   inference threshold
========== ============================================ ====================
cytoplasm  ``semantic`` in {1, 2, 3} (the whole cell)    0.5
nuclei     ``semantic == 2``                             0.5
border     ``semantic == 3``                             0.5
background ``semantic == 0``                             0.5
overlap    ``overlap > 0`` (pixels of two or more cells) 0.3 (thesis Sec. 5.4)
========== ============================================ ====================

:func:`head_target` is the one definition, used by the loss and meant for evaluators scoring a head's
probability map as a binary segmentation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cytobench.errors import BadInputError, CytobenchError

__all__ = [
    "HEAD_NAMES",
    "INFERENCE_THRESHOLDS",
    "SEMANTIC_HEAD_CLASSES",
    "check_heads",
    "decoder_groups",
    "head_target",
]

SEMANTIC_HEAD_CLASSES: dict[str, tuple[int, ...]] = {
    "cytoplasm": (1, 2, 3),
    "nuclei": (2,),
    "border": (3,),
    "background": (0,),
}
"""Classes of the ``semantic`` map that are foreground for each semantic head."""

HEAD_NAMES: tuple[str, ...] = (*SEMANTIC_HEAD_CLASSES, "overlap")
"""Every head SEU-Net can have, in a fixed order."""

INFERENCE_THRESHOLDS: dict[str, float] = {
    "cytoplasm": 0.5,
    "nuclei": 0.5,
    "border": 0.5,
    "background": 0.5,
    "overlap": 0.3,
}
"""Probability thresholds the thesis applies per head (an evaluator's business; the model returns probabilities)."""

DECODER_MODES = ("shared", "decoupled")


def check_heads(heads: Sequence[str], decoder: str) -> tuple[str, ...]:
    """Validate a head list and decoder mode; returns the heads as a tuple.

    Raises:
        BadInputError: no heads, an unknown or repeated head, or an unknown decoder mode.
    """
    heads = tuple(str(h) for h in heads)
    unknown = [h for h in heads if h not in HEAD_NAMES]
    if not heads or unknown or len(set(heads)) != len(heads):
        raise BadInputError(
            "model.heads",
            f"needs distinct heads from {list(HEAD_NAMES)}, got {list(heads)}",
        )
    if decoder not in DECODER_MODES:
        raise BadInputError("model.decoder", f"must be one of {list(DECODER_MODES)}, got {decoder!r}")
    return heads


def decoder_groups(heads: Sequence[str], decoder: str) -> list[tuple[str, ...]]:
    """Which heads each decoder predicts (one output channel per head).

    ``shared``: one decoder for all semantic heads (the thesis' base and multi-channel models, Fig. 4.4 a-b);
    ``decoupled``: one decoder per head (Fig. 4.4 c). The overlap head always has its own decoder (the Table
    5.3 models: cytoplasm and overlap decoders in parallel).
    """
    heads = check_heads(heads, decoder)
    semantic = tuple(h for h in heads if h != "overlap")
    groups = [(h,) for h in semantic] if decoder == "decoupled" else ([semantic] if semantic else [])
    return groups + ([("overlap",)] if "overlap" in heads else [])


def head_target(head: str, target: Mapping[str, Any], ignore_index: int = 255) -> torch.Tensor:
    """The (H, W) int64 binary target of ``head`` for one image: 1 foreground, 0 not, ``ignore_index`` left out.

    Semantic heads read ``target["semantic"]`` (pixels equal to ``ignore_index`` stay ``ignore_index``);
    ``overlap`` reads ``target["overlap"]`` (every pixel counts).

    Raises:
        CytobenchError: the target lacks the map the head needs (the message names the data option).
    """
    if head == "overlap":
        overlap = target.get("overlap")
        if overlap is None:
            raise CytobenchError(
                "SEU-Net: the overlap head needs targets with an 'overlap' map (data set option maps: [overlap])"
            )
        return (torch.as_tensor(overlap) > 0).to(torch.int64)
    if head not in SEMANTIC_HEAD_CLASSES:
        raise ValueError(f"unknown head {head!r} (known: {list(HEAD_NAMES)})")
    semantic = target.get("semantic")
    if semantic is None:
        raise CytobenchError(
            f"SEU-Net: the {head} head needs targets with a 'semantic' map (data set option with_semantic: true)"
        )
    semantic = torch.as_tensor(semantic).to(torch.int64)
    labelled = semantic[semantic != ignore_index]
    if labelled.numel() and (labelled.min() < 0 or labelled.max() > 3):
        raise CytobenchError(
            f"SEU-Net: 'semantic' classes must be 0 background, 1 cytoplasm, 2 nucleus, 3 border or {ignore_index} "
            f"(ignored); got values in [{int(labelled.min())}, {int(labelled.max())}]"
        )
    classes = torch.tensor(SEMANTIC_HEAD_CLASSES[head], device=semantic.device)
    binary = torch.isin(semantic, classes).to(torch.int64)
    return torch.where(semantic == ignore_index, torch.full_like(binary, ignore_index), binary)
