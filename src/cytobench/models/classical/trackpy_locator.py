"""TrackPy (Crocker-Grier) feature finding as a cytobench locator: the QD paper's baseline.

``trackpy.locate`` band-passes the image, finds local maxima brighter than ``percentile``,
refines them by iterated centre of mass within ``diameter`` and keeps those of integrated
brightness ``mass > minmass``. TrackPy reports positions in pixel-index coordinates (pixel
centres at integers); this wrapper adds 0.5 to map them to the COCO convention of cytobench
(pixel (i, j) covers ``[j, j+1) x [i, i+1)``).

Input dtype: trackpy rescales a float band-passed image to the range of the raw image's
integer dtype, which overflows for int64 (positions outside the image). So integer-valued
images in [0, 65535] (photon counts, whatever their dtype) are passed as uint16 and other
images as float64 (trackpy then works on an 8-bit copy). Note trackpy's band-pass threshold
is 1 count for integer images and 1/255 for float images.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from cytobench.evaluation.localization import localization_metrics
from cytobench.models.classical.base import Locator, as_image, as_image_list, make_prediction

_RESERVED = frozenset({"raw_image", "diameter", "minmass", "separation", "percentile", "topn"})


def _check_diameter(diameter: int) -> int:
    if int(diameter) != diameter or diameter < 1 or int(diameter) % 2 == 0:
        raise ValueError(f"trackpy needs an odd positive integer diameter (px), got {diameter!r}")
    return int(diameter)


@contextmanager
def _quiet_trackpy() -> Iterator[None]:
    """Silence trackpy's warnings and INFO logging for the duration of the block."""
    logger = logging.getLogger("trackpy")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _to_trackpy_dtype(image: np.ndarray) -> np.ndarray:
    """uint16 for integer-valued images in [0, 65535], else float64 (see the module docstring)."""
    if image.min() >= 0 and image.max() <= 65535 and np.array_equal(image, np.round(image)):
        return image.astype(np.uint16)
    return image.astype(np.float64, copy=False)


class TrackpyLocator(Locator):
    """Particles located by ``trackpy.locate``: any number of detections per image.

    Score: trackpy's ``mass`` (integrated brightness of the band-passed image within
    ``diameter``, in image units). Box: centre +- ``diameter / 2``. Keypoint: the refined
    centre in COCO pixels (trackpy's x, y + 0.5).

    Args:
        diameter: odd feature diameter (px), trackpy's main parameter.
        minmass: keep features with ``mass > minmass``.
        separation: minimum separation between features (px); trackpy's default ``diameter + 1``.
        percentile: peaks must be brighter than this percentile of the band-passed image.
        max_detections: keep at most this many features per image (highest mass), None = all.
        **locate_kwargs: further ``trackpy.locate`` arguments (e.g. ``noise_size``,
            ``smoothing_size``, ``threshold``, ``max_iterations``, ``characterize``); by default
            ``characterize=False`` since only ``mass`` is used.

    Attributes:
        fit_report_: after :meth:`fit`, one dict per grid point (``diameter``, ``minmass``,
            ``minmass_quantile``, ``max_detections``, ``auc``, ``precision``, ``recall``,
            ``n_detections``, ``selected``).
    """

    def __init__(
        self,
        diameter: int = 7,
        minmass: float = 0.0,
        separation: float | None = None,
        percentile: float = 64,
        max_detections: int | None = None,
        **locate_kwargs: Any,
    ) -> None:
        reserved = _RESERVED.intersection(locate_kwargs)
        if reserved:
            raise ValueError(f"pass {sorted(reserved)} as TrackpyLocator arguments, not locate_kwargs")
        if max_detections is not None and max_detections < 1:
            raise ValueError(f"max_detections must be >= 1 or None, got {max_detections}")
        self.diameter = _check_diameter(diameter)
        self.minmass = float(minmass)
        self.separation = separation
        self.percentile = float(percentile)
        self.max_detections = max_detections
        self.locate_kwargs: dict[str, Any] = {"characterize": False, **locate_kwargs}
        self.fit_report_: list[dict[str, Any]] = []

    def locate_raw(self, image: np.ndarray, diameter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run ``trackpy.locate`` on one image without the mass / count filters.

        Args:
            image: (H, W) image.
            diameter: overrides ``self.diameter`` (odd).

        Returns:
            ``(xy, mass)``: (K, 2) positions (x, y) in COCO pixels, (K,) masses, by decreasing mass.
        """
        import trackpy  # deferred: importing trackpy (pandas) is slow

        d = self.diameter if diameter is None else _check_diameter(diameter)
        img = _to_trackpy_dtype(as_image(image))
        with _quiet_trackpy():
            df = trackpy.locate(
                img,
                d,
                minmass=None,
                separation=self.separation,
                percentile=self.percentile,
                **self.locate_kwargs,
            )
        if len(df) == 0:
            return np.zeros((0, 2)), np.zeros(0)
        xy = df[["x", "y"]].to_numpy(dtype=np.float64) + 0.5
        mass = df["mass"].to_numpy(dtype=np.float64)
        order = np.argsort(-mass, kind="stable")
        return xy[order], mass[order]

    @staticmethod
    def _select(
        xy: np.ndarray, mass: np.ndarray, minmass: float, max_detections: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply trackpy's ``mass > minmass`` filter and the per-image cap to mass-sorted features."""
        keep = mass > minmass
        xy, mass = xy[keep], mass[keep]
        if max_detections is not None:
            xy, mass = xy[:max_detections], mass[:max_detections]
        return xy, mass

    def predict_one(self, image: np.ndarray) -> dict[str, np.ndarray]:
        xy, mass = self._select(*self.locate_raw(image), self.minmass, self.max_detections)
        return make_prediction(xy, mass, self.diameter / 2.0)

    def fit(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        truths_xy: np.ndarray | Sequence[np.ndarray],
        diameters: Sequence[int] = (3, 5, 7, 9, 11),
        minmass_quantiles: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        eps: float = 2.0,
        max_detections_options: Sequence[int | None] | None = None,
        auc_tolerance: float = 0.0,
    ) -> TrackpyLocator:
        """Choose ``diameter``, ``minmass`` (and optionally ``max_detections``) on a training set.

        Each diameter runs trackpy once per image; the ``minmass`` candidates are quantiles
        of all masses found with that diameter (quantile 0 means ``minmass = 0``). Every grid point is
        scored by the localisation AUC at ``eps``
        (:func:`cytobench.evaluation.localization.localization_metrics`). Raising ``minmass``
        can only lower the AUC (it removes the tail of the ranked list), so among the points
        within ``auc_tolerance`` of the best AUC the one with the highest precision (all kept
        detections) wins, then the higher AUC, then the smaller diameter and lower minmass.

        Args:
            images: N training images, (N, H, W) or a list of (H, W).
            truths_xy: (N, 2) true position per image, or a list of (K_i, 2), COCO pixels.
            diameters: odd candidate diameters (px).
            minmass_quantiles: quantiles in [0, 1) of the pooled masses.
            eps: matching tolerance (px).
            max_detections_options: candidate caps per image; None keeps ``self.max_detections``.
            auc_tolerance: AUC slack for the precision tie-break.

        Returns:
            self, with the chosen parameters set and ``fit_report_`` filled.
        """
        stack = as_image_list(images)
        truths = [np.asarray(t, dtype=np.float64).reshape(-1, 2) for t in truths_xy]
        if len(truths) != len(stack):
            raise ValueError(f"got {len(stack)} images but {len(truths)} truths")
        if not diameters:
            raise ValueError("diameters must not be empty")
        diameters = [_check_diameter(d) for d in diameters]
        if any(not 0.0 <= q < 1.0 for q in minmass_quantiles) or not minmass_quantiles:
            raise ValueError(f"minmass_quantiles must be non-empty and in [0, 1), got {minmass_quantiles}")
        caps = [self.max_detections] if max_detections_options is None else list(max_detections_options)
        report: list[dict[str, Any]] = []
        for d in diameters:
            raw = [self.locate_raw(img, d) for img in stack]
            pooled = np.concatenate([m for _, m in raw]) if raw else np.zeros(0)
            for q in minmass_quantiles:
                minmass = float(np.quantile(pooled, q)) if (q > 0 and pooled.size) else 0.0
                for cap in caps:
                    sel = [self._select(xy, m, minmass, cap) for xy, m in raw]
                    metrics = localization_metrics(truths, [s[0] for s in sel], [s[1] for s in sel], eps)
                    report.append(
                        {
                            "diameter": d,
                            "minmass": minmass,
                            "minmass_quantile": float(q),
                            "max_detections": cap,
                            "eps": float(eps),
                            "auc": metrics["auc"],
                            "precision": metrics["precision"],
                            "recall": metrics["recall"],
                            "n_detections": int(sum(len(s[1]) for s in sel)),
                            "selected": False,
                        }
                    )
        best = max(np.nan_to_num(r["auc"], nan=-1.0) for r in report)
        pool = [r for r in report if np.nan_to_num(r["auc"], nan=-1.0) >= best - auc_tolerance]

        def key(r: dict[str, Any]) -> tuple[float, float, int, float]:
            return (
                np.nan_to_num(r["precision"], nan=-1.0),
                np.nan_to_num(r["auc"], nan=-1.0),
                -r["diameter"],
                -r["minmass"],
            )

        chosen = max(pool, key=key)
        chosen["selected"] = True
        self.diameter, self.minmass, self.max_detections = (
            chosen["diameter"],
            chosen["minmass"],
            chosen["max_detections"],
        )
        self.fit_report_ = report
        return self


__all__ = ["TrackpyLocator"]
