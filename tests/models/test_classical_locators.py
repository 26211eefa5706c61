"""Classical locators (TrackPy, intensity centroid, Gaussian MLE) on synthetic spots of known position."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from cytobench.evaluation.localization import LocalizationEvaluator
from cytobench.models.classical import GaussianFitLocator, IntensityCentroidLocator, Locator, TrackpyLocator

H, W = 24, 25
BACKGROUND = 8.4
TRUE_XY = (12.3, 10.7)  # COCO pixels: pixel (i, j) covers [j, j+1) x [i, i+1)


def expected_counts(x: float, y: float, sigma: float = 2.0, amplitude: float = 200.0) -> np.ndarray:
    """(H, W) expected photons: background + a pixel-integrated Gaussian of peak ``amplitude`` at (x, y)."""
    gx = np.diff(0.5 * erf((np.arange(W + 1) - x) / (np.sqrt(2.0) * sigma)))
    gy = np.diff(0.5 * erf((np.arange(H + 1) - y) / (np.sqrt(2.0) * sigma)))
    return BACKGROUND + amplitude * 2.0 * np.pi * sigma**2 * np.outer(gy, gx)


def synthetic_set(n: int, seed: int, amplitude: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) int64 Poisson images and (n, 2) true positions away from the border."""
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.uniform(7.0, W - 7.0, n), rng.uniform(7.0, H - 7.0, n)], axis=1)
    images = np.stack([rng.poisson(expected_counts(x, y, amplitude=amplitude)) for x, y in xy])
    return images, xy


def point_target(image_id: int, x: float, y: float) -> dict[str, object]:
    """Target of one image with one particle at (x, y): a 6 px box and its keypoint."""
    return {
        "boxes": np.array([[x - 3.0, y - 3.0, x + 3.0, y + 3.0]]),
        "labels": np.ones(1, dtype=np.int64),
        "image_id": image_id,
        "keypoints": np.array([[[x, y, 2.0]]]),
    }


def locators() -> list[Locator]:
    return [TrackpyLocator(diameter=9), IntensityCentroidLocator(), GaussianFitLocator()]


def assert_prediction(pred: dict[str, np.ndarray], m: int) -> None:
    assert pred["boxes"].shape == (m, 4) and pred["boxes"].dtype == np.float32
    assert pred["scores"].shape == (m,)
    assert pred["labels"].shape == (m,) and pred["labels"].dtype == np.int64 and (pred["labels"] == 1).all()
    assert pred["keypoints"].shape == (m, 1, 3) and pred["keypoints"].dtype == np.float32
    assert (pred["keypoints"][:, 0, 2] == 1).all()


def top_xy(pred: dict[str, np.ndarray]) -> np.ndarray:
    return pred["keypoints"][int(np.argmax(pred["scores"])), 0, :2].astype(np.float64)


@pytest.mark.parametrize("locator", locators(), ids=lambda loc: type(loc).__name__)
def test_noise_free_spot_is_found_at_its_centre(locator: Locator) -> None:
    pred = locator.predict_one(expected_counts(*TRUE_XY))
    assert np.linalg.norm(top_xy(pred) - TRUE_XY) < 0.05


@pytest.mark.parametrize("locator", locators(), ids=lambda loc: type(loc).__name__)
def test_noisy_spot_is_found_within_a_third_of_a_pixel(locator: Locator) -> None:
    image = np.random.default_rng(7).poisson(expected_counts(*TRUE_XY))
    pred = locator.predict_one(image)
    assert_prediction(pred, len(pred["scores"]))
    assert np.linalg.norm(top_xy(pred) - TRUE_XY) < 0.3


def test_trackpy_positions_are_shifted_to_coco_pixel_centres() -> None:
    # A symmetric spot centred on pixel (row 10, col 12) is at (12.5, 10.5); trackpy itself says (12, 10).
    xy, mass = TrackpyLocator(diameter=7).locate_raw(expected_counts(12.5, 10.5))
    np.testing.assert_allclose(xy[0], [12.5, 10.5], atol=1e-6)
    assert mass[0] > 0


def test_trackpy_integer_images_of_any_dtype_agree() -> None:
    # trackpy rescales to the input's integer range: int64 counts would overflow inside it.
    image = np.random.default_rng(3).poisson(expected_counts(*TRUE_XY))
    loc = TrackpyLocator(diameter=9)
    ref = loc.predict_one(image.astype(np.uint16))
    for dtype in (np.int64, np.int32, np.float64):
        np.testing.assert_array_equal(loc.predict_one(image.astype(dtype))["keypoints"], ref["keypoints"])


def test_trackpy_background_only_image_gives_empty_prediction() -> None:
    image = np.random.default_rng(0).poisson(BACKGROUND, size=(H, W))
    preds = TrackpyLocator(diameter=7, minmass=1e6)(image[None])
    assert len(preds) == 1
    assert_prediction(preds[0], 0)
    flat = TrackpyLocator(diameter=7)(np.full((1, H, W), 8.0))  # no local maxima at all
    assert_prediction(flat[0], 0)
    evaluator = LocalizationEvaluator(eps=(1.0,))
    evaluator.process([point_target(0, 12.0, 10.0)], preds)
    assert evaluator.compute()["loc/recall@eps1"] == 0.0


def test_trackpy_max_detections_keeps_the_brightest() -> None:
    image = expected_counts(7.5, 7.5) + expected_counts(17.5, 16.5, amplitude=100.0) - BACKGROUND
    both = TrackpyLocator(diameter=7)(image[None])[0]
    one = TrackpyLocator(diameter=7, max_detections=1)(image[None])[0]
    assert len(both["scores"]) == 2 and len(one["scores"]) == 1
    np.testing.assert_allclose(top_xy(one), [7.5, 7.5], atol=0.05)


def test_even_or_bad_diameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="odd"):
        TrackpyLocator(diameter=6)
    images, xy = synthetic_set(3, seed=1)
    with pytest.raises(ValueError, match="odd"):
        TrackpyLocator().fit(images, xy, diameters=(5, 8))
    with pytest.raises(ValueError, match="locate_kwargs"):
        TrackpyLocator(topn=1)


def test_fit_picks_an_odd_diameter_and_reports_the_grid() -> None:
    images, xy = synthetic_set(30, seed=2, amplitude=60.0)
    diameters, quantiles = (3, 5, 7, 9, 11), (0.0, 0.25, 0.5)
    loc = TrackpyLocator().fit(images, xy, diameters=diameters, minmass_quantiles=quantiles, eps=1.0)
    report = loc.fit_report_
    assert len(report) == len(diameters) * len(quantiles)
    chosen = [r for r in report if r["selected"]]
    assert len(chosen) == 1
    assert chosen[0]["auc"] == max(r["auc"] for r in report)
    assert (loc.diameter, loc.minmass) == (chosen[0]["diameter"], chosen[0]["minmass"])
    assert loc.diameter % 2 == 1 and loc.diameter >= 5  # a sigma-2 spot is wider than 3 px
    assert chosen[0]["auc"] > 0.8


@pytest.mark.parametrize("locator", locators(), ids=lambda loc: type(loc).__name__)
def test_easy_set_scores_auc_near_one(locator: Locator) -> None:
    images, xy = synthetic_set(20, seed=4)
    preds = locator(images)
    assert len(preds) == len(images)
    targets = [point_target(i, x, y) for i, (x, y) in enumerate(xy)]
    evaluator = LocalizationEvaluator(eps=(1.0, 2.0, 3.0))
    evaluator.process(targets, preds)
    assert evaluator.compute()["loc/auc@eps1"] > 0.95


def test_list_and_stack_inputs_agree() -> None:
    images, _ = synthetic_set(4, seed=5)
    for locator in locators():
        from_stack = locator(images)
        from_list = locator([img for img in images])
        for a, b in zip(from_stack, from_list):
            np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-6)


def test_gaussian_fit_recovers_psf_photons_and_background() -> None:
    image = np.random.default_rng(11).poisson(expected_counts(*TRUE_XY))
    fit = GaussianFitLocator(sigma_init=3.0).fit_spots(image[None])
    assert fit["converged"][0]
    assert abs(fit["sigma"][0] - 2.0) < 0.1
    assert abs(fit["photons"][0] / (200.0 * 2.0 * np.pi * 4.0) - 1.0) < 0.05
    assert abs(fit["background"][0] - BACKGROUND) < 0.5
    assert fit["snr"][0] > 50


def test_whole_image_centroid_on_a_noise_free_spot() -> None:
    pred = IntensityCentroidLocator(window_sigma=None).predict_one(expected_counts(*TRUE_XY))
    assert np.linalg.norm(top_xy(pred) - TRUE_XY) < 0.05


def test_bad_images_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="image 1"):
        GaussianFitLocator()([np.zeros((H, W)), np.zeros(5)])
    with pytest.raises(ValueError, match="NaN"):
        IntensityCentroidLocator().predict_one(np.full((H, W), np.nan))
