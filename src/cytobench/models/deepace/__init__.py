"""DeepACEv2 (chromosome enumeration): the detector, its builder and its parts."""

from __future__ import annotations

from cytobench.models.deepace.backbone import (
    SingleLevelFPN,
    build_single_level_anchor_generator,
    build_single_level_fpn,
)
from cytobench.models.deepace.model import DeepACE, build_deepace
from cytobench.models.deepace.roi_heads import DeepACERoIHeads
from cytobench.models.deepace.sampler import DeepACERegionProposalNetwork, HardNegativeSampler
from cytobench.models.deepace.template_module import (
    TEMPLATE_NAMES,
    TemplateModule,
    build_template_masks,
    template_losses,
)

__all__ = [
    "TEMPLATE_NAMES",
    "DeepACE",
    "DeepACERegionProposalNetwork",
    "DeepACERoIHeads",
    "HardNegativeSampler",
    "SingleLevelFPN",
    "TemplateModule",
    "build_deepace",
    "build_single_level_anchor_generator",
    "build_single_level_fpn",
    "build_template_masks",
    "template_losses",
]
