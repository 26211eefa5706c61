"""SparseSEU-Net: SEU-Net with a sparse instance-aware decoder for box-free cell instance segmentation
(thesis Sec. 4.5, 5.7; after SparseInst, Cheng et al. 2022).

Modules: :mod:`~cytobench.models.sparse_seunet.decoder` (SEU-Net's decoder by level, mask and instance
branches, instance activation maps, multi-level aggregation), :mod:`~cytobench.models.sparse_seunet.matching`
(Dice, Eq. 4.11 scores, Hungarian matching), :mod:`~cytobench.models.sparse_seunet.losses` (focal class,
Dice + BCE mask and IoU-aware objectness losses), :mod:`~cytobench.models.sparse_seunet.postprocess`
(scores = class x maskness [x objectness], boxes from masks; no NMS) and
:mod:`~cytobench.models.sparse_seunet.model` (the model, its variants and its train / eval contract).
Config: ``conf/model/sparse_seunet.yaml``.
"""

from __future__ import annotations

from typing import Any

from cytobench.models.sparse_seunet.matching import dice_scores, hungarian_match, matching_scores
from cytobench.models.sparse_seunet.model import SparseSEUNet

__all__ = ["SparseSEUNet", "build_sparse_seunet", "dice_scores", "hungarian_match", "matching_scores"]


def build_sparse_seunet(num_classes: int | None = None, **config: Any) -> SparseSEUNet:
    """Build a :class:`SparseSEUNet` from a model config (Hydra lists / dicts become plain ones).

    Args:
        num_classes: the data set's class count, passed by the trainer to every model; unused (the model is
            class-agnostic: one "cell" class; ``object_labels`` selects which target objects it learns).
        config: :class:`SparseSEUNet`'s arguments.
    """
    del num_classes
    from omegaconf import DictConfig, ListConfig, OmegaConf

    plain = {
        key: OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
        for key, value in config.items()
    }
    return SparseSEUNet(**plain)
