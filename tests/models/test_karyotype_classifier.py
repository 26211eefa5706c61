"""Tests of the karyotyping second stage: straightened crops, the crop classifier and the pair prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cytobench.models.karyotype_classifier import (
    ChromosomeClassifier,
    assign_with_pair_prior,
    chromosome_geometry,
    crops_from_detections,
    relative_lengths,
    straighten_crop,
)


def _bar(theta_deg: float, size=(80, 100), length=50.0, width=8.0, centre=(50.0, 40.0)) -> torch.Tensor:
    """(H, W) bool mask of a bar whose long axis runs along (sin theta, cos theta) in (x, y)."""
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    t = math.radians(theta_deg)
    along = (xx - centre[0]) * math.sin(t) + (yy - centre[1]) * math.cos(t)
    across = (xx - centre[0]) * math.cos(t) - (yy - centre[1]) * math.sin(t)
    return (along.abs() <= length / 2) & (across.abs() <= width / 2)


def _box_of(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = mask.nonzero(as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _principal_angle(mask: torch.Tensor) -> float:
    """Angle (degrees) of a mask's principal axis from the vertical, in (-90, 90]."""
    return float(chromosome_geometry(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), mask[None]).angles[0])


# ----------------------------------------------------------------------------------------- straightening
@pytest.mark.parametrize("theta", [-70.0, -25.0, 0.0, 35.0, 60.0, 90.0])
def test_straightened_rotated_bar_is_upright(theta: float) -> None:
    mask = _bar(theta)
    image = (1.0 - 0.8 * mask.float())[None]  # dark bar on a light background
    crop, angle = straighten_crop(image, _box_of(mask), mask, out_size=(64, 24))
    assert crop.shape == (1, 64, 24)
    wrapped = (angle - theta + 90) % 180 - 90  # the axis has no direction: 90 and -90 are the same
    assert abs(wrapped) < 1.0
    bar = crop[0] < 0.5
    assert abs(_principal_angle(bar)) < 3.0
    rows, cols = bar.nonzero(as_tuple=True)
    assert int(rows.max() - rows.min() + 1) > 0.8 * 64  # the bar fills the crop's height, aspect kept
    assert int(cols.max() - cols.min() + 1) < 16


def test_without_mask_the_longer_box_side_becomes_vertical() -> None:
    image = torch.full((1, 60, 80), 0.9)
    image[0, 20:28, 10:60] = 0.1  # a horizontal bar, 50 x 8
    crop, angle = straighten_crop(image, torch.tensor([10.0, 20.0, 60.0, 28.0]), out_size=(64, 24))
    assert angle == 90.0
    bar = crop[0] < 0.5
    assert abs(_principal_angle(bar)) < 1.0
    _, angle_tall = straighten_crop(image, torch.tensor([10.0, 5.0, 20.0, 40.0]), out_size=(64, 24))
    assert angle_tall == 0.0


def test_geometry_of_a_mask_gives_its_extent_and_centre() -> None:
    mask = _bar(0.0, length=40, width=10, centre=(30.0, 35.0))
    geom = chromosome_geometry(_box_of(mask)[None], mask[None])
    assert torch.allclose(geom.centres[0], torch.tensor([30.0, 35.0]), atol=0.6)
    assert abs(float(geom.lengths[0]) - 40) <= 1 and abs(float(geom.widths[0]) - 10) <= 1
    empty = chromosome_geometry(torch.tensor([[0.0, 0.0, 10.0, 30.0]]), torch.zeros(1, 40, 40))
    assert float(empty.lengths[0]) == 30 and float(empty.angles[0]) == 0  # empty mask: the box


def test_crop_outside_the_image_shows_the_fill() -> None:
    image = torch.full((1, 40, 40), 0.7)
    crop, _ = straighten_crop(image, torch.tensor([0.0, 0.0, 4.0, 30.0]), out_size=(32, 16))
    assert torch.allclose(crop, torch.full_like(crop, 0.7), atol=1e-5)  # the image's median
    crop0, _ = straighten_crop(image, torch.tensor([0.0, 0.0, 4.0, 30.0]), out_size=(32, 16), fill=0.0)
    assert float(crop0[0, :, 0].max()) == 0.0 and float(crop0.max()) == pytest.approx(0.7)


# ----------------------------------------------------------------------------------------- batched crops
def test_batched_crops_match_single_crops() -> None:
    g = torch.Generator().manual_seed(0)
    images = [
        torch.rand(1, 60, 70, generator=g),
        torch.rand(3, 50, 90, generator=g),
        torch.rand(1, 40, 40, generator=g),
    ]
    boxes = [
        torch.tensor([[5.0, 5.0, 20.0, 40.0], [30.0, 10.0, 60.0, 25.0]]),
        torch.zeros(0, 4),
        torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 12.0, 30.0], [20.0, 5.0, 30.0, 25.0]]),
    ]
    mask = _bar(30.0, size=(40, 40), length=24, width=6, centre=(20.0, 20.0))
    masks = [None, None, torch.stack([torch.zeros(40, 40, dtype=torch.bool)] * 2 + [mask])]
    crops, index = crops_from_detections(images, boxes, masks, out_size=(32, 16), channels=1)
    assert crops.shape == (5, 1, 32, 16)
    assert index.tolist() == [0, 0, 2, 2, 2]
    singles = [(0, 0), (0, 1), (2, 0), (2, 1), (2, 2)]
    for k, (i, b) in enumerate(singles):
        m = masks[i][b] if masks[i] is not None else None
        single, _ = straighten_crop(images[i], boxes[i][b], m, out_size=(32, 16))
        assert torch.allclose(single, crops[k], atol=1e-4)
    three, _ = crops_from_detections(images, boxes, out_size=(32, 16))  # default: the most channels
    assert three.shape == (5, 3, 32, 16)
    box = [torch.tensor([[10.0, 5.0, 30.0, 45.0]])]
    gray, _ = crops_from_detections(images[1:2], box, channels=1, fill=0.0)
    rgb, _ = crops_from_detections(images[1:2], box, fill=0.0)
    assert torch.allclose(gray[:, 0], rgb.mean(dim=1), atol=1e-5)  # gray = mean of the channels


def test_batched_crops_of_nothing() -> None:
    crops, index = crops_from_detections([torch.rand(1, 20, 20)], [torch.zeros(0, 4)], out_size=(32, 16))
    assert crops.shape == (0, 1, 32, 16) and index.shape == (0,)


def test_relative_lengths_use_the_median_of_the_reference() -> None:
    lengths = torch.tensor([10.0, 20.0, 30.0, 100.0])
    assert torch.allclose(relative_lengths(lengths), lengths / 25.0)
    ref = torch.tensor([True, True, True, False])
    assert torch.allclose(relative_lengths(lengths, ref), lengths / 20.0)
    assert relative_lengths(torch.zeros(0)).shape == (0,)


# -------------------------------------------------------------------------------------------- classifier
def test_classifier_forward_shapes() -> None:
    torch.manual_seed(0)
    model = ChromosomeClassifier(width=4, blocks=(1, 1, 1, 1))
    crops = torch.rand(5, 1, 32, 16)
    logits = model(crops, torch.tensor([0.5, 1.0, 1.5, 2.0, 0.3]))
    assert logits.shape == (5, 24) and torch.isfinite(logits).all()
    model.eval()
    with torch.no_grad():
        assert model(crops[:1] * 10 + 3, torch.ones(1)).shape == (1, 24)  # standardised: any range
    with pytest.raises(ValueError, match="relative_length"):
        model(crops)
    plain = ChromosomeClassifier(10, in_channels=3, width=4, blocks=(1, 1), length_feature=False)
    assert plain(torch.rand(3, 3, 24, 24)).shape == (3, 10)
    with pytest.raises(ValueError, match="crops must be"):
        plain(torch.rand(3, 1, 24, 24))


def test_the_length_feature_reaches_the_logits() -> None:
    torch.manual_seed(0)
    model = ChromosomeClassifier(width=4, blocks=(1, 1)).eval()
    crops = torch.rand(1, 1, 32, 16).expand(2, -1, -1, -1)
    with torch.no_grad():
        logits = model(crops, torch.tensor([0.4, 2.0]))
    assert not torch.allclose(logits[0], logits[1])


# -------------------------------------------------------------------------------------------- pair prior
def _logits(rows: list[dict[int, float]], floor: float = 1e-4) -> np.ndarray:
    """Logits (log-probabilities) from {class: probability} rows; the rest share what is left."""
    out = np.full((len(rows), 24), floor)
    for r, row in enumerate(rows):
        for k, p in row.items():
            out[r, k - 1] = p
        rest = [k for k in range(24) if k + 1 not in row]
        out[r, rest] = max(1.0 - sum(row.values()), 1e-6) / len(rest)
    return np.log(out)


def test_pair_prior_moves_the_weaker_of_three_to_its_free_second_choice() -> None:
    logits = _logits([{1: 0.97}, {1: 0.55, 2: 0.44}, {1: 0.60, 2: 0.39}, {2: 0.97}])
    assert (logits.argmax(1) + 1).tolist() == [1, 1, 1, 2]
    assert assign_with_pair_prior(logits).tolist() == [1, 2, 1, 2]


def test_pair_prior_on_a_full_normal_cell() -> None:
    truth = [k for k in range(1, 23) for _ in range(2)] + [23, 24]  # 46,XY
    rows = [{k: 0.9} for k in truth]
    rows[2] = {1: 0.5, 2: 0.45}  # a true 2 that weakly looks like a 1: three 1s by argmax
    logits = _logits(rows)
    assert int(((logits.argmax(1) + 1) == 1).sum()) == 3
    assert assign_with_pair_prior(logits).tolist() == truth


def test_pair_prior_keeps_a_confident_trisomy() -> None:
    # three confident 21s next to a free 22 slot (no 22 in the cell): the third 21 stays 21, since it is
    # more than exp(penalty) ~ 20 times likelier than 22
    logits = _logits([{21: 0.95, 22: 0.03}, {21: 0.96, 22: 0.03}, {21: 0.95, 22: 0.03}, {1: 0.99}])
    assert assign_with_pair_prior(logits).tolist() == [21, 21, 21, 1]
    # ... whereas a third 21 that is only slightly likelier than 22 takes the free 22 slot
    weak = _logits([{21: 0.95}, {21: 0.96}, {21: 0.52, 22: 0.46}, {1: 0.99}])
    assert assign_with_pair_prior(weak).tolist() == [21, 21, 22, 1]
    # the penalty is the knob: a huge one moves even the confident third copy
    assert sorted(assign_with_pair_prior(logits, penalty=50.0).tolist()) == [1, 21, 21, 22]


def test_pair_prior_keeps_trisomy_21_in_a_47_chromosome_cell() -> None:
    truth = sorted([k for k in range(1, 23) for _ in range(2)] + [21, 23, 23])  # 47,XX,+21
    logits = _logits([{k: 0.92} for k in truth])
    assert assign_with_pair_prior(logits).tolist() == truth


def test_pair_prior_sex_chromosomes() -> None:
    xy = _logits([{23: 0.9}, {24: 0.9}])
    assert assign_with_pair_prior(xy).tolist() == [23, 24]
    xx = _logits([{23: 0.9}, {23: 0.9}])
    assert assign_with_pair_prior(xx).tolist() == [23, 23]
    # a second Y is penalised: a Y-leaning crop with a fair X probability becomes X
    yy = _logits([{24: 0.95}, {24: 0.55, 23: 0.44}])
    assert assign_with_pair_prior(yy).tolist() == [24, 23]
    # three sex chromosomes: the third is penalised, so a weak third X takes a free autosome slot
    xxx = _logits([{23: 0.9}, {23: 0.9}, {23: 0.5, 7: 0.45}])
    assert assign_with_pair_prior(xxx).tolist() == [23, 23, 7]
    xxy = _logits([{23: 0.97}, {23: 0.97}, {24: 0.97}])  # 47,XXY seen clearly stays
    assert assign_with_pair_prior(xxy).tolist() == [23, 23, 24]


def test_pair_prior_input_and_output_types() -> None:
    logits = torch.from_numpy(_logits([{5: 0.9}, {5: 0.9}, {5: 0.6, 4: 0.35}])).float()
    labels = assign_with_pair_prior(logits)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64
    assert labels.tolist() == [5, 5, 4]
    assert assign_with_pair_prior(np.zeros((0, 24))).shape == (0,)
    with pytest.raises(ValueError, match="logits must be"):
        assign_with_pair_prior(np.zeros((3, 10)))
    with pytest.raises(ValueError, match="penalty"):
        assign_with_pair_prior(np.zeros((3, 24)), penalty=float("inf"))
