"""SEU-Net: squeeze-and-excitation U-Net for brightfield cell segmentation (thesis Sec. 4.2-4.3).

Modules: :mod:`~cytobench.models.seunet.blocks` (SE gate, SE convolution block),
:mod:`~cytobench.models.seunet.network` (encoder, decoder), :mod:`~cytobench.models.seunet.heads` (head names,
binary targets, decoder grouping, thresholds), :mod:`~cytobench.models.seunet.losses` (Eq. 4.1-4.2),
:mod:`~cytobench.models.seunet.model` (the model and its train / eval contract),
:mod:`~cytobench.models.seunet.sliding` (averaged sliding-window inference). Config: ``conf/model/seunet.yaml``.
"""

from __future__ import annotations

from typing import Any

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


def build_seunet(num_classes: int | None = None, **config: Any) -> SEUNet:
    """Build a :class:`SEUNet` from a model config (Hydra lists / dicts become plain ones).

    Args:
        num_classes: the data set's class count, passed by the trainer to every model; unused (the heads
            define the outputs).
        config: :class:`SEUNet`'s arguments.
    """
    del num_classes  # the heads, not the data set's categories, define SEU-Net's outputs
    from omegaconf import DictConfig, ListConfig, OmegaConf

    plain = {
        key: OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
        for key, value in config.items()
    }
    return SEUNet(**plain)
