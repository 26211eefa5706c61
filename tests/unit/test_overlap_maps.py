"""Overlap attention maps v0-v4 (SEU-Net Sec. 4.3 / 5.4) and their computed-map registration in the data set."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cytobench.data import CocoDetectionDataset, build_transforms, rasterize
from cytobench.data.overlap_maps import (
    VARIANTS,
    attention_map,
    attention_map_of_objects,
    border_proximity_map,
    cell_bounded_nucleus_map,
    default_reach,
    nucleus_centres,
    nucleus_overlap_map,
    nucleus_reach_map,
    relaxed_overlap_map,
    second_nearest_cell_distance,
)
from cytobench.errors import CorruptAnnotation
from cytobench.io.coco_convert import encode_mask
from cytobench.io.images import write_image

BG = np.float32(0.1)


def _rect(size: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _p(score: float) -> float:
    """P of a score q: 0.1 + 0.9 q."""
    return 0.1 + 0.9 * score


def _random_cells(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``n`` random ellipses (some overlapping, some cut by the image edge)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    cy, cx = rng.uniform(0, size[0], n)[:, None, None], rng.uniform(0, size[1], n)[:, None, None]
    ry, rx = rng.uniform(3, 12, n)[:, None, None], rng.uniform(3, 12, n)[:, None, None]
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0


# ------------------------------------------------------------------------------------------------- v4

SIZE = (16, 16)
LEFT, RIGHT = _rect(SIZE, 4, 12, 2, 8), _rect(SIZE, 4, 12, 8, 14)  # touching along columns 7 | 8


def test_v4_two_touching_squares_by_hand() -> None:
    p = border_proximity_map(np.stack([LEFT, RIGHT]), reach=4.0)
    assert p.dtype == np.float32 and p.shape == SIZE
    cells = LEFT | RIGHT
    assert (p[~cells] == BG).all()  # background exactly 0.1
    assert (p >= BG).all() and (p <= 1.0).all()
    contact = 1 - math.log(2) / math.log(5)  # the other cell is 1 px away
    np.testing.assert_allclose(p[4:12, 7], _p(contact), rtol=1e-6)
    np.testing.assert_allclose(p[4:12, 6], _p(1 - math.log(3) / math.log(5)), rtol=1e-6)
    np.testing.assert_allclose(p[4:12, 4], BG)  # 4 px away = reach: no longer counts
    assert p.max() == p[4, 7] and (p[4:12, 7:9] == p.max()).all()  # highest on the contact line
    np.testing.assert_array_equal(p, p[:, ::-1])  # mirror-symmetric input, mirror-symmetric map


def test_v4_close_pair_is_higher_than_an_isolated_cell_and_closer_is_higher() -> None:
    size = (20, 40)
    cell = _rect(size, 5, 15, 5, 15)
    isolated = border_proximity_map(cell[None])
    assert (isolated == BG).all()  # no neighbour within reach: nothing to attend to
    facing = []
    for gap in (1, 2, 4):
        pair = np.stack([cell, _rect(size, 5, 15, 15 + gap, 25 + gap)])
        p = border_proximity_map(pair, reach=default_reach(cell[None]))
        assert (p[5:15, 14] > isolated[5:15, 14]).all()  # the side facing the neighbour
        assert (p[:, 15 : 15 + gap] == BG).all()  # the gap itself is background
        facing.append(p[10, 14])
    assert facing[0] > facing[1] > facing[2]


def test_v4_overlaps_are_one_and_an_annotated_overlap_is_raised_to_one() -> None:
    a, b = _rect(SIZE, 4, 12, 2, 9), _rect(SIZE, 4, 12, 7, 14)  # amodal overlap: columns 7, 8
    p = border_proximity_map(np.stack([a, b]), reach=4.0)
    assert (p[a & b] == 1.0).all() and (p[(a | b) & ~(a & b)] < 1.0).all()
    annotated = _rect(SIZE, 0, 2, 0, 2)
    q = border_proximity_map(np.stack([a, b]), reach=4.0, overlap=annotated)
    assert (q[annotated] == 1.0).all() and np.array_equal(q[~annotated], p[~annotated])


@pytest.mark.parametrize("seed, reach", [(0, 3.0), (1, 7.5), (2, None), (3, 40.0)])
def test_v4_fast_methods_equal_the_per_cell_full_image_loop(seed: int, reach: float | None) -> None:
    cells = _random_cells(12, (48, 64), seed)
    reach_px = default_reach(cells) if reach is None else reach
    full = second_nearest_cell_distance(cells, reach_px, method="full")
    assert np.isfinite(full).any() and ((full <= reach_px) | np.isinf(full)).all()
    for method in ("crops", "stacked"):
        np.testing.assert_array_equal(second_nearest_cell_distance(cells, reach_px, method=method), full)
        np.testing.assert_array_equal(
            border_proximity_map(cells, reach=reach, method=method),
            border_proximity_map(cells, reach=reach, method="full"),
        )


def test_second_nearest_distance_by_hand() -> None:
    size = (5, 12)
    a, b, c = _rect(size, 0, 5, 0, 2), _rect(size, 0, 5, 5, 7), _rect(size, 0, 5, 9, 12)
    d = second_nearest_cell_distance(np.stack([a, b, c]), 10.0)
    # columns 0-1 (in a): b is 5, 4 away; 2-4 (background): the farther of a and b (3, 2, 3);
    # 5 (in b): a and c both 4 away; 6 (in b): c is 3 away
    np.testing.assert_array_equal(d[0, :7], [5, 4, 3, 2, 3, 4, 3])
    # between b and c (col 8): b is 2 away, c 1 away -> second nearest 2
    assert d[0, 8] == 2.0
    assert (second_nearest_cell_distance(np.stack([a, b, c]), 2.5)[0, :2] == np.inf).all()


# ----------------------------------------------------------------------------------------- v0 / v1


def test_v0_by_hand_without_nuclei() -> None:
    cell = _rect((9, 9), 2, 7, 2, 7)  # 5 x 5, centre (4, 4), farthest pixel at sqrt(8)
    p = cell_bounded_nucleus_map(cell[None])
    assert p[4, 4] == BG and (p[~cell] == BG).all()
    assert p[4, 6] == pytest.approx(_p(2 / math.sqrt(8)), rel=1e-6)
    assert p[2, 2] == pytest.approx(1.0) and p.max() == pytest.approx(1.0)


def test_v0_nucleus_pixels_and_outside_the_cell_are_low() -> None:
    size = (12, 12)
    cell, nucleus = _rect(size, 1, 11, 1, 11), _rect(size, 2, 5, 2, 5)  # nucleus off-centre
    p = cell_bounded_nucleus_map(cell[None], nucleus_masks=nucleus[None])
    assert (p[nucleus] == BG).all() and (p[~cell] == BG).all()
    # distances count from the nucleus centre (3, 3): the far corner (10, 10) is the cell's maximum
    assert p[10, 10] == pytest.approx(1.0)
    assert p[1, 10] == pytest.approx(_p(math.hypot(2, 7) / math.hypot(7, 7)), rel=1e-6)


def test_nucleus_centres_pair_each_nucleus_with_the_cell_it_overlaps_most() -> None:
    size = (10, 20)
    a, b = _rect(size, 0, 10, 0, 10), _rect(size, 0, 10, 8, 20)
    nucleus = _rect(size, 2, 4, 7, 10)  # 6 px in a (cols 7-9) and 4 px in b (cols 8-9): belongs to a
    centres = nucleus_centres(np.stack([a, b]), nucleus[None])
    np.testing.assert_allclose(centres[0], [2.5, 8.0])  # the nucleus centroid
    np.testing.assert_allclose(centres[1], [4.5, 13.5])  # b has no nucleus: its own centroid
    np.testing.assert_allclose(nucleus_centres(np.stack([a, b])), [[4.5, 4.5], [4.5, 13.5]])


def test_v1_reaches_beyond_the_cell_and_is_never_below_v0() -> None:
    size = (12, 16)
    cell = _rect(size, 5, 8, 2, 13)  # 3 x 11: centre (6, 7), reach sqrt(1 + 25)
    p1, p0 = nucleus_reach_map(cell[None]), cell_bounded_nucleus_map(cell[None])
    assert p1[2, 7] == pytest.approx(_p(4 / math.sqrt(26)), rel=1e-6) and p0[2, 7] == BG  # outside the cell
    assert p1[0, 7] == BG  # 6 px from the centre: beyond the disk
    assert (p1 >= p0).all() and (p1[cell] == p0[cell]).all()
    nucleus = _rect(size, 5, 8, 6, 9)
    assert (nucleus_reach_map(cell[None], nucleus_masks=nucleus[None])[nucleus] == BG).all()


def test_v1_merges_centres_by_max() -> None:
    size = (10, 30)
    a, b = _rect(size, 3, 6, 2, 13), _rect(size, 3, 6, 14, 25)
    both = nucleus_reach_map(np.stack([a, b]))
    np.testing.assert_array_equal(both, np.maximum(nucleus_reach_map(a[None]), nucleus_reach_map(b[None])))


# ----------------------------------------------------------------------------------------- v2 / v3


def test_v2_is_one_on_the_annotated_overlap_and_relaxes_linearly_inside_cells() -> None:
    size = (10, 30)
    cell = _rect(size, 2, 8, 2, 28)
    annotated = _rect(size, 2, 8, 10, 12)
    p = relaxed_overlap_map(cell[None], overlap=annotated, reach=4.0)
    assert (p[annotated] == 1.0).all()
    assert p[5, 13] == pytest.approx(_p(1 - 2 / 4), rel=1e-6)  # 2 px from column 11
    assert p[5, 15] == BG  # 4 px away: relaxed to nothing
    assert (p[~cell] == BG).all()  # even next to the overlap: no cell, no overlap
    assert (relaxed_overlap_map(cell[None], reach=4.0) == BG).all()  # one cell: no computed overlap


def test_v2_without_annotation_uses_the_amodal_overlap() -> None:
    a, b = _rect(SIZE, 4, 12, 2, 9), _rect(SIZE, 4, 12, 7, 14)
    p = relaxed_overlap_map(np.stack([a, b]), reach=3.0)
    assert (p[a & b] == 1.0).all() and p[6, 6] == pytest.approx(_p(2 / 3), rel=1e-6)
    np.testing.assert_array_equal(p, relaxed_overlap_map(np.stack([a, b]), reach=3.0, overlap=a & b))


def test_v3_is_the_max_of_v1_and_v2() -> None:
    cells = _random_cells(8, (40, 40), seed=5)
    nuclei = np.stack([_rect((40, 40), r, r + 3, c, c + 3) for r, c in [(5, 5), (20, 30), (30, 10)]])
    v1 = nucleus_reach_map(cells, nucleus_masks=nuclei)
    v2 = relaxed_overlap_map(cells, reach=5.0)
    v3 = nucleus_overlap_map(cells, nucleus_masks=nuclei, reach=5.0)
    np.testing.assert_array_equal(v3, np.maximum(v1, v2))
    assert (v3 > v1).any() and (v3 > v2).any()  # both parts matter on this sample


# --------------------------------------------------------------------------------- dispatch, errors


def test_attention_map_dispatches_to_every_variant_in_range() -> None:
    cells = _random_cells(10, (32, 32), seed=7)
    nuclei = _rect((32, 32), 10, 13, 10, 13)[None]
    expected = {
        "v0": cell_bounded_nucleus_map(cells, nucleus_masks=nuclei, background=0.2),
        "v1": nucleus_reach_map(cells, nucleus_masks=nuclei, background=0.2),
        "v2": relaxed_overlap_map(cells, background=0.2),
        "v3": nucleus_overlap_map(cells, nucleus_masks=nuclei, background=0.2),
        "v4": border_proximity_map(cells, background=0.2),
    }
    for variant in VARIANTS:
        p = attention_map(cells, variant=variant, nucleus_masks=nuclei, background=0.2)
        np.testing.assert_array_equal(p, expected[variant])
        assert p.dtype == np.float32 and (p >= np.float32(0.2)).all() and (p <= 1.0).all()
        assert (p[~cells.any(axis=0)] == np.float32(0.2)).all() or variant in ("v1", "v3")
    empty = np.zeros((0, 8, 8), dtype=bool)
    assert all((attention_map(empty, variant=v) == BG).all() for v in VARIANTS)


def test_bad_inputs_are_clear_errors() -> None:
    cells = LEFT[None]
    with pytest.raises(ValueError, match="unknown attention map variant 'v9'"):
        attention_map(cells, variant="v9")
    with pytest.raises(ValueError, match=r"amodal_masks must be an \(N, H, W\) stack"):
        attention_map(LEFT)
    with pytest.raises(ValueError, match=r"nucleus_masks must be \(M, 16, 16\)"):
        attention_map(cells, variant="v0", nucleus_masks=np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match=r"overlap must be an \(16, 16\) map"):
        attention_map(cells, variant="v2", overlap=np.zeros((8, 8)))
    with pytest.raises(ValueError, match="background must be in"):
        attention_map(cells, background=1.5)
    with pytest.raises(ValueError, match="reach must be a positive"):
        attention_map(cells, reach=0.0)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        second_nearest_cell_distance(cells, 3.0, method="fast")


def test_attention_map_of_objects_picks_cells_and_nuclei_by_category_name() -> None:
    nucleus = _rect(SIZE, 6, 9, 3, 6)
    masks, labels = np.stack([nucleus, LEFT, RIGHT]), np.array([1, 2, 2])
    p = attention_map_of_objects(masks, labels, ["nucleus", "cell"], variant="v0")
    np.testing.assert_array_equal(
        p, cell_bounded_nucleus_map(np.stack([LEFT, RIGHT]), nucleus_masks=nucleus[None])
    )
    with pytest.raises(ValueError, match="need a category named 'cell'"):
        attention_map_of_objects(masks, labels, ["nucleus", "cytoplasm"])


# ------------------------------------------------------------------------------ data set registration

H, W = 20, 24
CELL_A, CELL_B = _rect((H, W), 4, 14, 2, 12), _rect((H, W), 6, 16, 10, 20)  # amodal overlap cols 10-11
NUCLEUS_A = _rect((H, W), 7, 10, 4, 7)


def _ann(ann_id: int, category: int, mask: np.ndarray, **extra: Any) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    return {
        "id": ann_id,
        "image_id": 1,
        "category_id": category,
        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
        "area": int(mask.sum()),
        "iscrowd": 0,
        "segmentation": encode_mask(mask.astype(np.uint8)),
        **extra,
    }


def _coco(root: Path, categories: list[dict[str, Any]], overlap_file: np.ndarray | None = None) -> Path:
    """One image with cells A, B (B hidden under A, amodal RLE) and A's nucleus, in the shared contract."""
    write_image(root / "s_bf_lower.png", np.zeros((H, W), np.uint8))
    image: dict[str, Any] = {"id": 1, "file_name": "s_bf_lower.png", "width": W, "height": H}
    if overlap_file is not None:
        write_image(root / "s_overlap.png", overlap_file.astype(np.uint8))
        image["maps"] = {"overlap": "s_overlap.png"}
    annotations = [
        _ann(1, 1, CELL_A, amodal_segmentation=encode_mask(CELL_A.astype(np.uint8)), nucleus_id=3),
        _ann(2, 1, CELL_B & ~CELL_A, amodal_segmentation=encode_mask(CELL_B.astype(np.uint8))),
        _ann(3, 2, NUCLEUS_A, cell_id=1),
    ]
    path = root / "train.json"
    path.write_text(json.dumps({"images": [image], "categories": categories, "annotations": annotations}))
    return path


CATEGORIES = [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}]


def test_attention_maps_are_registered_computed_maps() -> None:
    names = {"overlap_attention", *(f"overlap_attention_{v}" for v in VARIANTS)}
    assert names <= set(rasterize.COMPUTED_MAPS)


def test_data_set_target_carries_the_maps_computed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann_file = _coco(tmp_path, CATEGORIES)
    calls = {"overlap_attention": 0, "overlap_attention_v0": 0}
    for name in calls:
        compute = rasterize.COMPUTED_MAPS[name]

        def counted(*args: Any, _name: str = name, _compute: Any = compute) -> np.ndarray:
            calls[_name] += 1
            return _compute(*args)

        monkeypatch.setitem(rasterize.COMPUTED_MAPS, name, counted)
    ds = CocoDetectionDataset(tmp_path, ann_file, maps=["overlap_attention", "overlap_attention_v0"])
    _, target = ds[0]
    cells = np.stack([CELL_A, CELL_B])
    v4 = attention_map(cells, variant="v4")
    assert target["overlap_attention"].dtype == torch.float32
    np.testing.assert_array_equal(target["overlap_attention"].numpy(), v4)
    assert (target["overlap_attention"].numpy()[CELL_A & CELL_B] == 1.0).all()
    np.testing.assert_array_equal(
        target["overlap_attention_v0"].numpy(),
        attention_map(cells, variant="v0", nucleus_masks=NUCLEUS_A[None]),
    )
    first = ds.load_raw(0)[1]["overlap_attention"]
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert ds.load_raw(0)[1]["overlap_attention"] is first
        ds[0][1]["overlap_attention"].fill_(0.0)  # a tensor of the target never writes into the cache
    assert calls == {"overlap_attention": 1, "overlap_attention_v0": 1}
    np.testing.assert_array_equal(first, v4)
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0] = 1.0
    uncached = CocoDetectionDataset(tmp_path, ann_file, maps=["overlap_attention"], cache_computed_maps=False)
    for _ in range(2):
        uncached[0]
    assert calls["overlap_attention"] == 3


def test_data_set_maps_follow_augmentation_and_use_the_overlap_file(tmp_path: Path) -> None:
    weak = np.zeros((H, W), bool)
    weak[10, 10] = True  # a weak overlap label: one pixel of the true overlap
    ann_file = _coco(tmp_path, CATEGORIES, overlap_file=weak)
    ds = CocoDetectionDataset(
        tmp_path, ann_file, maps=["overlap_attention_v2"], transforms=build_transforms(True, hflip=1.0)
    )
    _, target = ds[0]
    expected = attention_map(np.stack([CELL_A, CELL_B]), variant="v2", overlap=weak)
    np.testing.assert_array_equal(target["overlap_attention_v2"].numpy(), expected[:, ::-1])


def test_data_set_without_a_cell_category_is_a_one_line_error(tmp_path: Path) -> None:
    ann_file = _coco(tmp_path, [{"id": 1, "name": "cytoplasm"}, {"id": 2, "name": "nucleus"}])
    ds = CocoDetectionDataset(tmp_path, ann_file, maps=["overlap_attention"])
    with pytest.raises(CorruptAnnotation, match="image 1: cannot compute map 'overlap_attention': .*'cell'"):
        ds[0]
