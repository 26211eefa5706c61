"""SEU-Net 4-head + watershed: the thesis' semantic-to-instance baseline (Sec. 5.7, Table 5.7 "SEU-Net + wtshd").

The 4-head SEU-Net (cytoplasm, nuclei, border, background; :mod:`cytobench.models.seunet`) predicts per-pixel
probabilities only; the thesis separates cells with the watershed transform "based on predicted cytoplasm
and nucleus". :func:`watershed_instances` is that post-processing, on one image's head maps:

* **mask** (the pixels to split): foreground probability ``> mask_threshold``, the foreground probability
  being the cytoplasm head's (whole cell: cytoplasm, nucleus and border pixels), averaged with ``1 -
  background`` when the background head exists (both heads predict the same partition);
* **markers**: connected components (4-connectivity) of ``nuclei > marker_threshold`` inside the mask, with at
  least ``min_marker_area`` pixels, one per cell (every simulated cell has one nucleus);
* **relief**: ``1 - foreground`` plus the border head's probability where it exists, so that the flooding
  fronts of two touching cells meet on the predicted border;
* ``skimage.segmentation.watershed(relief, markers, mask=mask)``: every mask pixel reachable from a marker
  gets that marker's cell; mask regions without a nucleus stay background. Instances smaller than
  ``min_area`` are dropped; each instance's score is its mean foreground probability (a watershed has no
  confidence of its own; the mean ranks confident cells first for AP).

The instances are visible-cell masks that never overlap: as the thesis says, a watershed cannot recover the
hidden parts of overlapping cells.

:class:`SEUNetWatershed` is SEU-Net with this step after :meth:`SEUNet.predict`: the same network, training
and ``maps`` output, plus ``boxes``, ``scores``, ``labels`` (1 = cell) and ``masks`` (M, H, W) uint8, so the
COCO evaluator scores it like any instance model. ``model._target_:
cytobench.models.seunet_watershed.build_seunet_watershed`` with ``model.watershed: {...}`` selects it
(``conf/experiment/seunet_watershed*.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.models.seunet import SEUNet
from cytobench.ops.instances import labels_to_instances

__all__ = [
    "SEUNetWatershed",
    "WatershedConfig",
    "build_seunet_watershed",
    "watershed_instances",
    "watershed_labels",
]


@dataclass(frozen=True)
class WatershedConfig:
    """Thresholds of :func:`watershed_instances` (module docstring)."""

    mask_threshold: float = 0.5
    marker_threshold: float = 0.5
    min_marker_area: int = 4
    min_area: int = 10
    border_weight: float = 1.0


def watershed_labels(
    maps: Mapping[str, Any], config: WatershedConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(H, W)`` int32 cell label image (0 background) and the ``(H, W)`` foreground probability.

    Args:
        maps: head name -> ``(H, W)`` probability (numpy or torch); needs ``cytoplasm`` and ``nuclei``,
            uses ``border`` and ``background`` when present.
        config: thresholds (module docstring); None for the defaults.

    Raises:
        BadInputError: ``cytoplasm`` or ``nuclei`` missing.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    config = config or WatershedConfig()
    missing = [h for h in ("cytoplasm", "nuclei") if h not in maps]
    if missing:
        raise BadInputError(
            "model.heads",
            f"the watershed needs the {missing} head(s); it has {sorted(maps)} (use the 4-head model)",
        )

    def prob(name: str) -> np.ndarray:
        value = maps[name]
        value = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return value.astype(np.float32, copy=False)

    foreground = prob("cytoplasm")
    if "background" in maps:
        foreground = 0.5 * (foreground + 1.0 - prob("background"))
    mask = foreground > config.mask_threshold
    seeds, _ = ndi.label((prob("nuclei") > config.marker_threshold) & mask)
    sizes = np.bincount(seeds.reshape(-1))
    small = np.flatnonzero(sizes < max(int(config.min_marker_area), 1))
    seeds[np.isin(seeds, small[small > 0])] = 0
    relief = 1.0 - foreground
    if "border" in maps:
        relief = relief + float(config.border_weight) * prob("border")
    if not seeds.any():
        return np.zeros(mask.shape, dtype=np.int32), foreground
    labels = watershed(relief, markers=seeds, mask=mask, connectivity=1)
    return labels.astype(np.int32, copy=False), foreground


def watershed_instances(
    maps: Mapping[str, Any], config: WatershedConfig | None = None, device: Any = None
) -> dict[str, torch.Tensor]:
    """One image's instances (``boxes``, ``scores``, ``labels``, ``masks``) from SEU-Net's head maps."""
    config = config or WatershedConfig()
    labels, foreground = watershed_labels(maps, config)
    return labels_to_instances(labels, probability=foreground, min_area=config.min_area, device=device)


class SEUNetWatershed(SEUNet):
    """SEU-Net whose eval output adds the watershed's instances to the head maps (module docstring).

    Args:
        watershed: :class:`WatershedConfig` fields (None: the defaults).
        **config: :class:`SEUNet`'s arguments.
    """

    def __init__(self, watershed: Mapping[str, Any] | None = None, **config: Any) -> None:
        super().__init__(**config)
        try:
            self.watershed = WatershedConfig(**dict(watershed or {}))
        except TypeError as err:
            raise BadInputError(
                "model.watershed", f"{err}; fields: {list(asdict(WatershedConfig()))}"
            ) from None
        missing = [h for h in ("cytoplasm", "nuclei") if h not in self.heads]
        if missing:
            raise BadInputError(
                "model.heads", f"the watershed needs the {missing} head(s); got {list(self.heads)}"
            )

    @torch.no_grad()
    def predict(self, images: Any) -> list[dict[str, Any]]:
        out = super().predict(images)
        for pred in out:
            device = pred["boxes"].device
            pred.update(watershed_instances(pred["maps"], self.watershed, device=device))
        return out


def build_seunet_watershed(num_classes: int | None = None, **config: Any) -> SEUNetWatershed:
    """Build a :class:`SEUNetWatershed` from a model config (as :func:`cytobench.models.seunet.build_seunet`)."""
    del num_classes  # SEU-Net's heads define its outputs; instances are cells (label 1)
    from omegaconf import DictConfig, ListConfig, OmegaConf

    values = {
        key: OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
        for key, value in config.items()
    }
    return SEUNetWatershed(**values)
