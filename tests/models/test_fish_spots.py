"""Classical FISH spot detector (paper Sec. 3.3 and the LoG variant) on hand-built images with known dots,
and its score on a small simulated set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cytobench.models.classical.fish_spots import (
    NucleusCrop,
    SpotDetectorParams,
    Spots,
    count_per_nucleus,
    detect_image_spots,
    detect_spots,
    score_spot_detector,
)
from cytobench.simulate.fish import simulate_fish

H = W = 96
PLAIN = SpotDetectorParams(unsharp_amount=0.0, min_area=1)  # hand-checkable: no unsharp, any size


def _disk(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def _gauss(dots: list[tuple[float, float]], sigma: float = 1.6, amp: float = 200.0) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W] + 0.5
    image = np.full((H, W), 20.0)
    for x, y in dots:
        image += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def test_single_gaussian_dots_are_found_at_their_centres() -> None:
    dots = [(30.3, 40.7), (52.6, 35.2), (45.1, 60.4)]
    nucleus = _disk(45, 47, 30)[None]
    for params in (SpotDetectorParams(), SpotDetectorParams(method="log")):
        spots = detect_spots(_gauss(dots), nucleus, params)
        assert len(spots) == 3 and spots.xy.dtype == np.float64 and spots.nucleus.dtype == np.int64
        found = sorted(map(tuple, spots.xy))
        assert np.allclose(found, sorted(dots), atol=0.25), (params.method, found)
        assert count_per_nucleus(spots, 1).tolist() == [3]
        assert (spots.score > params.threshold if params.method == "paper" else spots.score > 0).all()


def test_a_close_doublet_is_one_signal_at_its_midpoint() -> None:
    nucleus = _disk(48, 48, 35)[None]
    pair = [(40.0, 48.0), (44.4, 48.0)]  # 2.75 sigma apart: two maxima
    image = _gauss([*pair, (60.0, 30.0)])
    for params in (SpotDetectorParams(), SpotDetectorParams(method="log")):
        spots = detect_spots(image, nucleus, params)
        assert len(spots) == 2, params.method
        doublet = spots.xy[np.argmin(np.abs(spots.xy[:, 0] - 42.2))]
        assert np.allclose(doublet, (42.2, 48.0), atol=0.3)


def test_gradient_joins_blobs_at_most_two_pixels_apart() -> None:
    """Binary blocks: columns 10-11 and 14-15 (gap 2) join under the 3 x 3 gradient, 10-11 and 15-16 do not."""
    nucleus = np.zeros((1, H, W), dtype=bool)
    nucleus[0, 2:90, 2:90] = True
    image = np.zeros((H, W), dtype=np.uint8)
    image[20:22, 10:12] = image[20:22, 14:16] = 200  # gap of 2 px
    image[60:62, 10:12] = image[60:62, 15:17] = 200  # gap of 3 px
    spots = detect_spots(image, nucleus, PLAIN)
    rows = sorted(map(tuple, spots.xy.round(3)))
    assert rows == [(11.0, 61.0), (13.0, 21.0), (16.0, 61.0)]  # joined pair at its midpoint
    assert sorted(spots.area.tolist()) == [4, 4, 8]
    no_gradient = detect_spots(
        image, nucleus, SpotDetectorParams(unsharp_amount=0, min_area=1, gradient_size=1)
    )
    assert len(no_gradient) == 4


def test_border_margin_and_outside_dots() -> None:
    """Nucleus = rows and columns 20..59. Pixel (20, 30) is on its outer ring (1 px from outside), pixel
    (22, 45) 3 px deep, pixel (10, 70) outside it."""
    nucleus = np.zeros((1, H, W), dtype=bool)
    nucleus[0, 20:60, 20:60] = True
    image = np.zeros((H, W), dtype=np.uint8)
    for r, c in ((20, 30), (22, 45), (10, 70)):
        image[r, c] = 200
    kept = {}
    for margin in (0.0, 1.0, 2.0, 3.0):
        spots = detect_spots(
            image, nucleus, SpotDetectorParams(unsharp_amount=0, min_area=1, border_margin=margin)
        )
        kept[margin] = sorted((int(y), int(x)) for x, y in spots.xy)
    assert kept == {0.0: [(20, 30), (22, 45)], 1.0: [(22, 45)], 2.0: [(22, 45)], 3.0: []}


def test_threshold_area_filters_and_overlapping_nuclei() -> None:
    image = np.zeros((H, W), dtype=np.uint8)
    image[30, 30] = 80  # not above T = 80
    image[30, 40] = 81
    image[50:53, 50:53] = 150  # 9 px
    a, b = _disk(35, 45, 25), _disk(60, 50, 25)  # overlapping discs; the 9 px blob lies in both
    nuclei = np.stack([a, b])
    spots = detect_spots(image, nuclei, PLAIN)
    assert sorted((int(x), int(y)) for x, y in spots.xy) == [(40, 30), (51, 51)]
    assert spots.nucleus[np.argmax(spots.area)] == 1  # (51.5, 51.5) is deeper in b than in a
    assert len(detect_spots(image, nuclei, SpotDetectorParams(unsharp_amount=0, min_area=2))) == 1
    assert len(detect_spots(image, nuclei, SpotDetectorParams(unsharp_amount=0, min_area=1, max_area=8))) == 1


def test_16_bit_and_float_inputs_match_8_bit() -> None:
    dots = [(30.3, 40.7), (52.6, 35.2), (44.0, 60.0), (48.4, 60.0)]
    image = _gauss(dots)
    nucleus = _disk(45, 47, 30)[None]
    ref = detect_spots(image, nucleus)
    for other in (image.astype(np.uint16) * 257, image.astype(np.uint16) * 16, image / 255.0):
        # full 16-bit range, 12-bit data (max 3200 -> scaled by 4095), float in [0, 1]
        spots = detect_spots(other, nucleus)
        assert len(spots) == len(ref) == 3
        assert np.allclose(spots.xy, ref.xy, atol=0.05)
    assert len(detect_spots(image.astype(np.uint16) * 16, nucleus, SpotDetectorParams(bit_depth=16))) == 0


def test_crops_equal_full_masks_and_empty_cases() -> None:
    image = _gauss([(30.0, 30.0), (70.0, 70.0), (70.0, 20.0)])
    nuclei = np.stack([_disk(30, 30, 15), _disk(70, 70, 15)])
    full = detect_spots(image, nuclei)
    crops = []
    for mask in nuclei:
        ys, xs = np.nonzero(mask)
        crops.append(
            NucleusCrop(int(xs.min()), int(ys.min()), mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
        )
    cropped = detect_spots(image, crops)
    assert np.array_equal(full.xy, cropped.xy) and full.nucleus.tolist() == cropped.nucleus.tolist() == [0, 1]
    assert count_per_nucleus(full, 3).tolist() == [1, 1, 0]
    assert len(detect_spots(image, np.zeros((0, H, W), dtype=bool))) == 0
    assert len(detect_spots(np.zeros((H, W), np.uint8), nuclei)) == 0
    assert count_per_nucleus(Spots(), 2).tolist() == [0, 0]
    both = detect_image_spots(np.stack([image, np.zeros_like(image), image], axis=-1), nuclei)
    assert len(both["red"]) == 2 and len(both["green"]) == 0


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="matching the channel"):
        detect_spots(np.zeros((H, W), np.uint8), np.zeros((1, H, W + 1), dtype=bool))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        detect_spots(np.zeros((H, W, 3), np.uint8), np.zeros((1, H, W), dtype=bool))
    with pytest.raises(ValueError, match="method"):
        SpotDetectorParams(method="otsu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="odd"):
        SpotDetectorParams(gradient_size=2)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fish_spots")
    simulate_fish(5, out, size=512, seed=21)
    return out


@pytest.mark.parametrize("method", ["paper", "log"])
def test_score_on_simulated_images(simulated: Path, method: str) -> None:
    metrics = score_spot_detector(
        simulated / "annotations.json", simulated / "images", SpotDetectorParams(method=method), eps=(2,)
    )
    assert metrics["spots/n_nuclei"] > 25
    for channel in ("red", "green"):
        assert metrics[f"spots/{channel}/recall@2"] > 0.9
        assert metrics[f"spots/{channel}/precision@2"] > 0.9
        assert metrics[f"spots/{channel}/count_acc"] > 0.85
        p, r = metrics[f"spots/{channel}/precision@2"], metrics[f"spots/{channel}/recall@2"]
        assert metrics[f"spots/{channel}/f1@2"] == pytest.approx(2 * p * r / (p + r))
    assert metrics["spots/pattern_acc"] <= min(
        metrics["spots/red/count_acc"], metrics["spots/green/count_acc"]
    )
    # a threshold above every signal finds nothing
    blind = score_spot_detector(
        simulated / "annotations.json", simulated / "images", SpotDetectorParams(threshold=10_000), eps=(2,)
    )
    assert blind["spots/red/recall@2"] == 0.0
