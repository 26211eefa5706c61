"""Input normalisation shared by the dense (per-pixel) models."""

from __future__ import annotations

import torch

__all__ = ["standardize"]


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
