"""Frechet distance between image sets (FID, Heusel et al. 2017; thesis Sec. 5.6).

``FID = ||mu_r - mu_f||^2 + tr(C_r + C_f - 2 (C_r C_f)^(1/2))`` over the mean and covariance of image
features. :func:`frechet_distance` is the one implementation; :func:`fid` extracts the features of two
image sets with a pluggable extractor and applies it.

The matrix square root: the usual route, ``scipy.linalg.sqrtm(C_r @ C_f)``, returns tiny imaginary parts
(the product is not symmetric) that must be dropped. Here the trace is taken in the symmetric form
``tr (C_r^(1/2) C_f C_r^(1/2))^(1/2)`` (the same eigenvalues as ``C_r C_f``), from two symmetric
eigen-decompositions with negative round-off eigenvalues clipped to 0: real by construction and stable
for singular covariances (fewer images than feature dimensions).

Extractors (callables ``list of (H, W) images in [0, 1] -> (B, D) features``, with a ``name``):

* :class:`InceptionFeatures`: torchvision's Inception-v3 architecture with weights from a **local file**
  (``--features PATH``; nothing is ever downloaded), the 2048-d pooled features as in FID. A grey plane is
  repeated to 3 channels, resized to 299 x 299 and normalised with ImageNet statistics. Published FIDs use
  the TensorFlow Inception weights (ported as pytorch-fid's ``pt_inception-2015-12-05``); numbers from
  torchvision's ImageNet weights are close to but not identical with those.
* :class:`ImageStatisticsFeatures`: the stand-in when no Inception weights are given: classical image
  statistics (intensity quantiles and histogram, band-pass energies at 1-16 px). Deterministic and
  training-free; it ranks sets by how far their grey-level and texture statistics are apart, but its
  numbers are **not comparable to published FID** values and depend on the pixel size (compare sets at
  the same pixel size only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

__all__ = [
    "FeatureExtractor",
    "ImageStatisticsFeatures",
    "InceptionFeatures",
    "extract",
    "feature_statistics",
    "fid",
    "frechet_distance",
]


class FeatureExtractor(Protocol):
    """Features of a batch of grey images: ``extractor(list of (H, W) float arrays in [0, 1]) -> (B, D)``."""

    name: str

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance of the Gaussians ``N(mu1, cov1)`` and ``N(mu2, cov2)`` (module docstring).

    Args:
        mu1 / mu2: ``(D,)`` means.
        cov1 / cov2: ``(D, D)`` symmetric positive semi-definite covariances.

    Returns:
        The distance (>= 0 up to round-off).

    Raises:
        ValueError: shapes that do not match, or non-finite values.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, dtype=np.float64)),
        np.atleast_1d(np.asarray(mu2, dtype=np.float64)),
    )
    cov1, cov2 = (
        np.atleast_2d(np.asarray(cov1, dtype=np.float64)),
        np.atleast_2d(np.asarray(cov2, dtype=np.float64)),
    )
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or cov1.shape != (dim, dim) or cov2.shape != (dim, dim):
        raise ValueError(
            f"means must be (D,) and covariances (D, D) with one D, got {mu1.shape}, {cov1.shape}, "
            f"{mu2.shape}, {cov2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (mu1, mu2, cov1, cov2)):
        raise ValueError("means and covariances must be finite")
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    eigen = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_sqrt = float(np.sqrt(np.clip(eigen, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features (N >= 2).

    Raises:
        ValueError: fewer than two rows.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N, D) features of N >= 2 images, got shape {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def extract(images: Iterable[np.ndarray], extractor: FeatureExtractor, batch_size: int = 16) -> np.ndarray:
    """``(N, D)`` features of ``images`` (any iterable of ``(H, W)`` arrays), ``batch_size`` at a time."""
    chunks: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(np.asarray(image, dtype=np.float32))
        if len(batch) == batch_size:
            chunks.append(np.asarray(extractor(batch), dtype=np.float64))
            batch = []
    if batch:
        chunks.append(np.asarray(extractor(batch), dtype=np.float64))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def fid(
    real_images: Iterable[np.ndarray],
    fake_images: Iterable[np.ndarray],
    extractor: FeatureExtractor,
    batch_size: int = 16,
) -> float:
    """Frechet distance between the features of two image sets (each at least two images).

    Args:
        real_images / fake_images: iterables of grey ``(H, W)`` images in [0, 1] (sizes may differ).
        extractor: e.g. :class:`InceptionFeatures` or :class:`ImageStatisticsFeatures`.
        batch_size: images per extractor call.

    Raises:
        ValueError: a set with fewer than two images.
    """
    stats = [
        feature_statistics(extract(images, extractor, batch_size)) for images in (real_images, fake_images)
    ]
    return frechet_distance(*stats[0], *stats[1])


class ImageStatisticsFeatures:
    """The stand-in extractor: classical statistics of a grey image (module docstring).

    Per image: mean, std and the 1 / 5 / 25 / 50 / 75 / 95 / 99 % quantiles of intensity; a 16-bin
    intensity histogram (fractions, over [0, 1]); and for band-pass scales ``s`` = 1, 2, 4, 8, 16 px the
    mean absolute value and std of the difference of Gaussians ``G_s - G_2s`` (texture and edge energy per
    scale). 35 features, no weights, no randomness.
    """

    name = "image-statistics stand-in (not comparable to published FID)"
    SCALES = (1.0, 2.0, 4.0, 8.0, 16.0)
    QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    BINS = 16

    def features(self, image: np.ndarray) -> np.ndarray:
        """``(35,)`` float64 features of one ``(H, W)`` image."""
        x = np.asarray(image, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected a grey (H, W) image, got shape {x.shape}")
        blurred = {
            s: ndimage.gaussian_filter(x, s, mode="reflect") for s in (*self.SCALES, 2 * self.SCALES[-1])
        }
        bands = [blurred[s] - blurred[2 * s] for s in self.SCALES]
        histogram = np.histogram(np.clip(x, 0.0, 1.0), bins=self.BINS, range=(0.0, 1.0))[0] / x.size
        return np.concatenate(
            [
                [x.mean(), x.std()],
                np.quantile(x, self.QUANTILES),
                histogram,
                [v for band in bands for v in (np.abs(band).mean(), band.std())],
            ]
        )

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.features(image) for image in images])


class InceptionFeatures:
    """2048-d pooled features of torchvision's Inception-v3, with weights from a local file.

    Args:
        weights_path: a torchvision ``inception_v3`` state dict (or a checkpoint holding one under
            ``model``), read with ``torch.load(weights_only=True)``; every tensor must fit.
        device: where to run (``cpu`` by default).

    Raises:
        BadInputError: a missing, unsafe or non-Inception file.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)
    SIDE = 299

    def __init__(self, weights_path: str | Path, device: str = "cpu") -> None:
        import torch
        from torchvision.models import inception_v3

        from cytobench.io.checkpoint import load_model_weights

        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
        load_model_weights(model, weights_path, strict=True)
        model.fc = torch.nn.Identity()  # the pooled 2048-d vector (dropout before fc is off in eval mode)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.name = f"Inception-v3 (torchvision architecture, weights {Path(weights_path).name})"

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        resized = []
        for image in images:
            x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=self.device)
            if x.ndim != 2:
                raise ValueError(f"expected a grey (H, W) image, got shape {tuple(x.shape)}")
            x = F.interpolate(
                x[None, None], size=(self.SIDE, self.SIDE), mode="bilinear", align_corners=False
            )
            resized.append(x[0].expand(3, -1, -1))
        batch = torch.stack(resized)
        mean = torch.tensor(self.MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():
            features = self.model((batch - mean) / std)
        return features.double().cpu().numpy()
