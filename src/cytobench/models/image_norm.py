"""Input normalisation shared by the dense (per-pixel) models."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cytobench.errors import BadInputError

__all__ = ["image_stats", "standardize"]


def image_stats(
    in_channels: int, image_mean: Sequence[float] | None, image_std: Sequence[float] | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A model's fixed per-channel statistics as (C, 1, 1) float tensors, or (None, None) for per-image
    standardisation.

    Raises:
        BadInputError: a statistic with another length than ``in_channels``, or one given without the other
            (:func:`standardize` would silently ignore it).
    """
    values = []
    for name, stats in (("image_mean", image_mean), ("image_std", image_std)):
        if stats is not None and len(stats) != in_channels:
            raise BadInputError(f"model.{name}", f"has {len(stats)} values for {in_channels} channels")
        values.append(None if stats is None else torch.tensor([float(v) for v in stats]).view(-1, 1, 1))
    if (image_mean is None) != (image_std is None):
        raise BadInputError(
            "model", "give both image_mean and image_std, or neither (per-image standardisation)"
        )
    return values[0], values[1]


def standardize(image: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """(C, H, W) image -> float, normalised by fixed per-channel ``mean`` / ``std`` ((C, 1, 1) each), or,
    when they are None, to zero mean and unit variance per image and channel (so that a model does not
    depend on a microscope's exposure); a one-pixel image keeps unit scale."""
    image = image.float()
    if mean is not None and std is not None:
        return (image - mean) / std
    mean = image.mean(dim=(1, 2), keepdim=True)
    std = image.std(dim=(1, 2), keepdim=True) if image[0].numel() > 1 else torch.ones_like(mean)
    return (image - mean) / (std + 1e-3)
