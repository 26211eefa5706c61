"""DeepACEv2 (chromosome enumeration) parts: the Template Module and its grouping losses."""

from __future__ import annotations

from cytobench.models.deepace.template_module import (
    TEMPLATE_NAMES,
    TemplateModule,
    build_template_masks,
    template_losses,
)

__all__ = ["TEMPLATE_NAMES", "TemplateModule", "build_template_masks", "template_losses"]
