"""SEU-Net: squeeze-and-excitation U-Net for brightfield cell segmentation (thesis Sec. 4.2-4.3).

Modules: :mod:`~cytobench.models.seunet.blocks` (SE gate, SE convolution block),
:mod:`~cytobench.models.seunet.network` (encoder, decoder), :mod:`~cytobench.models.seunet.heads` (head names,
binary targets, decoder grouping, thresholds), :mod:`~cytobench.models.seunet.losses` (Eq. 4.1-4.2),
:mod:`~cytobench.models.seunet.model` (the model and its train / eval contract),
:mod:`~cytobench.models.seunet.sliding` (averaged sliding-window inference). Config: ``conf/model/seunet.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cytobench.models.seunet.heads import HEAD_NAMES, INFERENCE_THRESHOLDS, head_target
from cytobench.models.seunet.model import SEUNet
from cytobench.models.seunet.sliding import sliding_window_inference

__all__ = [
    "HEAD_NAMES",
    "INFERENCE_THRESHOLDS",
    "SEUNet",
    "build_seunet",
    "head_target",
    "sliding_window_inference",
]


def build_seunet(
    num_classes: int | None = None,
    *,
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
    window_batch_size: int = 4,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    ignore_index: int = 255,
) -> SEUNet:
    """Build a :class:`SEUNet` from a model config (Hydra lists / dicts are turned into plain ones).

    Args:
        num_classes: the data set's class count, passed by the trainer to every model; unused (the heads
            define the outputs).
        Others: see :class:`SEUNet`.
    """
    del num_classes  # the heads, not the data set's categories, define SEU-Net's outputs
    return SEUNet(
        in_channels=in_channels,
        heads=[str(h) for h in heads],
        decoder=str(decoder),
        depth=depth,
        width=width,
        se_reduction=se_reduction,
        loss_weights=None
        if loss_weights is None
        else {str(k): float(v) for k, v in dict(loss_weights).items()},
        overlap_loss=overlap_loss,
        focal_alpha=focal_alpha,
        focal_gamma=focal_gamma,
        focal_mode=focal_mode,
        attention_key=attention_key,
        window=window,
        window_overlap=window_overlap,
        window_batch_size=window_batch_size,
        image_mean=None if image_mean is None else [float(v) for v in image_mean],
        image_std=None if image_std is None else [float(v) for v in image_std],
        ignore_index=ignore_index,
    )
