"""Brightfield / phase-contrast simulator: overlap control, image formation (phase additivity, opposite
focal-plane rims, brightfield non-additivity), truth consistency, determinism, the data set reader, the
CLI, the figure and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cytobench.cli import main
from cytobench.data.coco_dataset import CocoDetectionDataset
from cytobench.data.rasterize import inner_border, semantic_map
from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import annotation_to_mask
from cytobench.simulate.brightfield import (
    BORDER_PX,
    BrightfieldParams,
    check_brightfield_request,
    render_brightfield_sample,
    simulate_brightfield,
)
from cytobench.simulate.brightfield_layout import overlap_count, place_cells
from cytobench.simulate.brightfield_params import Optics
from cytobench.simulate.brightfield_render import (
    cell_phase,
    phase_map,
    render_brightfield_planes,
    render_phase_contrast,
)
from cytobench.simulate.brightfield_shapes import CellShape, rasterize_cell

PARAMS = BrightfieldParams()


def _measured_overlap(cells: list, width: int, height: int) -> np.ndarray:
    """(N,) bool per cell: its amodal mask shares a pixel with another cell's (independent of the layout)."""
    cover = np.zeros((height, width), dtype=np.int32)
    for cell in cells:
        cover[cell.window] += cell.cell
    return np.array([(cover[cell.window][cell.cell] >= 2).any() for cell in cells], dtype=bool)


# ---------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize(
    ("n_cells", "fraction", "allowed", "mean"),
    [
        (4, 0.3, {0, 2}, 1.2),
        (10, 0.35, {3, 4}, 3.5),
        (5, 0.0, {0}, 0.0),
        (5, 1.0, {5}, 5.0),
        (2, 0.5, {0, 2}, 1.0),
    ],
)
def test_overlap_count_allowed_values_and_mean(
    n_cells: int, fraction: float, allowed: set, mean: float
) -> None:
    rng = np.random.default_rng(0)
    draws = np.array([overlap_count(rng, n_cells, fraction) for _ in range(4000)])
    assert set(draws.tolist()) == allowed  # never exactly one overlapping cell
    assert abs(draws.mean() - mean) < 0.06


@pytest.mark.parametrize(("fraction", "size", "n_images"), [(0.3, 256, 24), (0.7, 256, 24), (0.3, 512, 4)])
def test_realised_overlap_fraction_near_request(fraction: float, size: int, n_images: int) -> None:
    realised = []
    for i in range(n_images):
        layout = place_cells(np.random.default_rng([7, i]), size, size, fraction, PARAMS)
        measured = _measured_overlap(layout.cells, size, size)
        assert np.array_equal(measured, layout.overlapping)  # the layout's own count is the masks' count
        realised.append(measured.mean())
    assert abs(np.mean(realised) - fraction) < 0.1


def test_no_overlap_requested_gives_none_and_dense_cells() -> None:
    layout = place_cells(np.random.default_rng(3), 512, 512, 0.0, PARAMS)
    assert not _measured_overlap(layout.cells, 512, 512).any()
    covered = sum(cell.area for cell in layout.cells) / 512**2
    assert len(layout.cells) >= 10 and covered > 0.3  # dense: most of the planned 40-55 % coverage


def test_nuclei_inside_cells_uncovered_and_inside_image() -> None:
    layout = place_cells(np.random.default_rng(11), 512, 512, 0.8, PARAMS)
    cover = np.zeros((512, 512), dtype=np.int32)
    for cell in layout.cells:
        cover[cell.window] += cell.cell
    for cell in layout.cells:
        assert not (cell.nucleus & ~cell.cell).any()
        assert (cover[cell.window][cell.nucleus] == 1).all()  # no other cell over a nucleus
        poly = cell.shape.nucleus + cell.centre
        assert poly.min() >= 0 and poly[:, 0].max() <= 512 and poly[:, 1].max() <= 512


# ----------------------------------------------------------------------------------------- image formation
def _disc_shape(radius: float, nucleus_radius: float) -> CellShape:
    theta = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    ring = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return CellShape(radius * ring, nucleus_radius * ring, radius)


def _two_overlapping_cells() -> tuple[list, list[np.ndarray]]:
    """Cells A at (60, 64) and B at (100, 64), radius 30: a lens-shaped overlap 20 px wide; their phases."""
    shape = _disc_shape(30.0, 10.0)
    cells = [rasterize_cell(shape, cx, 64.0, 160, 128) for cx in (60.0, 100.0)]
    phases = [cell_phase(np.random.default_rng(k), cell, PARAMS) for k, cell in enumerate(cells)]
    return cells, phases


def test_phase_contrast_adds_in_overlaps() -> None:
    cells, phases = _two_overlapping_cells()
    optics = Optics()
    alone = [
        render_phase_contrast(phase_map(160, 128, [c], [p]), optics) - optics.phase_background
        for c, p in zip(cells, phases)
    ]
    both = render_phase_contrast(phase_map(160, 128, cells, phases), optics) - optics.phase_background
    overlap = _measured_overlap_map(cells, 160, 128)
    assert overlap.sum() > 200
    np.testing.assert_allclose(both[overlap], (alone[0] + alone[1])[overlap], rtol=1e-4, atol=1e-5)
    assert both[overlap].mean() > 1.5 * max(alone[0][overlap].mean(), alone[1][overlap].mean())


def _measured_overlap_map(cells: list, width: int, height: int) -> np.ndarray:
    cover = np.zeros((height, width), dtype=np.int32)
    for cell in cells:
        cover[cell.window] += cell.cell
    return cover >= 2


def test_brightfield_is_not_additive_in_overlaps() -> None:
    cells, phases = _two_overlapping_cells()
    optics = Optics()
    bg = optics.bf_background
    alone = [render_brightfield_planes(phase_map(160, 128, [c], [p]), optics) for c, p in zip(cells, phases)]
    both = render_brightfield_planes(phase_map(160, 128, cells, phases), optics)
    overlap = _measured_overlap_map(cells, 160, 128)
    for plane in (0, 1):
        summed = (alone[0][plane] - bg) + (alone[1][plane] - bg)
        error = np.abs((both[plane] - bg) - summed)[overlap].mean()
        assert error > 0.25 * np.abs(summed[overlap]).mean()


def _rim_band(mask: np.ndarray) -> np.ndarray:
    """Pixels 2-5 (4-connected) steps inside the outline: where a cell's lens response peaks."""
    return inner_border(mask, 5) & ~inner_border(mask, 1)


def test_focal_plane_rims_have_opposite_sign() -> None:
    shape = _disc_shape(30.0, 10.0)
    cell = rasterize_cell(shape, 64.0, 64.0, 128, 128)
    optics = Optics()
    phase = phase_map(128, 128, [cell], [cell_phase(np.random.default_rng(0), cell, PARAMS)])
    lower, upper = render_brightfield_planes(phase, optics)
    mask = np.zeros((128, 128), dtype=bool)
    mask[cell.window] = cell.cell
    rim = _rim_band(mask)
    bg = optics.bf_background
    assert np.isclose(lower[0, 0], bg) and np.isclose(upper[0, 0], bg)  # far from the cell: background
    assert (lower[rim] - bg).mean() < -0.03 and (upper[rim] - bg).mean() > 0.03


def test_rims_opposite_in_noisy_sample() -> None:
    sample = render_brightfield_sample(np.random.default_rng(5), 512, 512, 0.3)
    rim = np.zeros((512, 512), dtype=bool)
    for cell in sample.layout.cells:
        rim[cell.window] |= _rim_band(cell.cell)
    far = cv2.distanceTransform((sample.truth.semantic == 0).view(np.uint8), cv2.DIST_L2, 3) > 10
    lower, upper = sample.lower.astype(float), sample.upper.astype(float)
    shift_lower = lower[rim].mean() - np.median(lower[far])
    shift_upper = upper[rim].mean() - np.median(upper[far])
    assert shift_lower < -5 and shift_upper > 5  # 8-bit levels: dark rims below, bright rims above


# ---------------------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bf")
    path = simulate_brightfield(3, out, size=(320, 256), seed=4, overlap_fraction=0.6)
    return load_coco(path) | {"_dir": out, "_path": path}


def _read(dataset: dict, name: str) -> np.ndarray:
    return cv2.imread(str(dataset["_dir"] / "images" / name), cv2.IMREAD_UNCHANGED)


def test_image_entries_and_files(dataset: dict) -> None:
    assert dataset["categories"] == [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}]
    img = dataset["images"][0]
    assert img["file_name"] == "bf_00000_bf_lower.png"
    assert img["planes"] == ["bf_00000_bf_lower.png", "bf_00000_bf_upper.png", "bf_00000_phase.png"]
    assert img["maps"] == {"semantic": "bf_00000_semantic.png", "overlap": "bf_00000_overlap.png"}
    for entry in dataset["images"]:
        for name in [*entry["planes"], *entry["maps"].values()]:
            array = _read(dataset, name)
            assert array.dtype == np.uint8 and array.shape == (256, 320)


def test_masks_consistent(dataset: dict) -> None:
    h, w = 256, 320
    anns = {a["id"]: a for a in dataset["annotations"]}
    n_overlapping = 0
    for img in dataset["images"]:
        cells = [a for a in anns.values() if a["image_id"] == img["id"] and a["category_id"] == 1]
        nuclei = [a for a in anns.values() if a["image_id"] == img["id"] and a["category_id"] == 2]
        assert len(cells) == len(nuclei) == img["n_cells"] >= 2
        visible = np.stack([annotation_to_mask(a, h, w).astype(bool) for a in cells])
        amodal = np.stack(
            [annotation_to_mask({"segmentation": a["amodal_segmentation"]}, h, w).astype(bool) for a in cells]
        )
        depth = np.array([a["depth"] for a in cells])
        assert sorted(depth.tolist()) == list(range(len(cells)))
        for k, cell in enumerate(cells):
            above = amodal[depth > depth[k]].any(axis=0)
            assert np.array_equal(visible[k], amodal[k] & ~above)  # visible = amodal minus cells above
            ys, xs = np.nonzero(visible[k])
            assert cell["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert cell["area"] == visible[k].sum()
            nucleus = anns[cell["nucleus_id"]]
            assert nucleus["category_id"] == 2 and nucleus["cell_id"] == cell["id"]
            nuc = annotation_to_mask(nucleus, h, w).astype(bool)
            assert nuc.sum() > 50 and not (nuc & ~visible[k]).any()  # the nucleus lies in its visible cell
        count = amodal.sum(axis=0)
        overlap = _read(dataset, img["maps"]["overlap"])
        assert np.array_equal(overlap, (count >= 2).astype(np.uint8))
        n_overlapping += int(sum((count[a] >= 2).any() for a in amodal))
        assert img["overlap_fraction"] == round(sum((count[a] >= 2).any() for a in amodal) / len(cells), 4)
        nuc_masks = np.stack([annotation_to_mask(a, h, w) for a in nuclei])
        expected = semantic_map(
            np.concatenate([visible.astype(np.uint8), nuc_masks]),
            np.array([1] * len(cells) + [2] * len(nuclei)),
            h,
            w,
            border_label=3,
            border_width=BORDER_PX,
            border_classes=[1],
        )
        semantic = _read(dataset, img["maps"]["semantic"])
        assert np.array_equal(semantic, expected)
        assert set(np.unique(semantic).tolist()) == {0, 1, 2, 3}
        assert np.array_equal(semantic == 0, count == 0)
    assert n_overlapping > 0


def test_dataset_reader_loads_planes_and_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bf"
    args = ["simulate", "brightfield", "--n", "3", "--size", "160", "128", "--seed", "2"]
    main([*args, "--val-fraction", "0.34", "--out", str(out)])
    assert "simulated 3 brightfield samples" in capsys.readouterr().out
    assert (out / "train.json").is_file() and (out / "val.json").is_file()
    data = CocoDetectionDataset(
        out / "images",
        out / "train.json",
        planes=[0, 1],
        with_semantic=True,
        maps=["overlap"],
        with_amodal_masks=True,
    )
    assert len(data) == 2
    image, target = data[0]
    n = len(target["labels"])
    assert image.shape == (2, 128, 160) and n >= 2 and set(target["labels"].tolist()) == {1, 2}
    assert target["semantic"].shape == (128, 160) and str(target["semantic"].dtype) == "torch.int64"
    assert target["overlap"].shape == (128, 160) and str(target["overlap"].dtype) == "torch.uint8"
    assert target["amodal_masks"].shape == (n, 128, 160)
    assert int(target["semantic"].max()) <= 3
    all_planes = CocoDetectionDataset(out / "images", out / "val.json")
    assert all_planes[0][0].shape == (3, 128, 160)


# ------------------------------------------------------------------------------------------ determinism
def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a = _file_bytes(Path(simulate_brightfield(2, tmp_path / "a", size=192, seed=9)).parent)
    b = _file_bytes(Path(simulate_brightfield(2, tmp_path / "b", size=192, seed=9)).parent)
    c = _file_bytes(Path(simulate_brightfield(2, tmp_path / "c", size=192, seed=10)).parent)
    assert a == b and len(a) == 11  # 2 x 5 PNGs + annotations.json
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.endswith(("_bf_lower.png", "_phase.png")))


def test_image_depends_only_on_seed_and_index() -> None:
    one = render_brightfield_sample(np.random.default_rng([3, 1]), 192, 192)
    again = render_brightfield_sample(np.random.default_rng([3, 1]), 192, 192)
    for name in ("lower", "upper", "phase"):
        assert np.array_equal(getattr(one, name), getattr(again, name))
    assert np.array_equal(one.truth.semantic, again.truth.semantic)


# --------------------------------------------------------------------------------------- pixel scale
def test_scaled_params_shrink_every_pixel_length_and_keep_the_rest() -> None:
    assert PARAMS.scaled(1.0) == PARAMS  # the default data sets are unchanged
    half = PARAMS.scaled(0.5)
    assert half.cell_radius_px == (20.0, 30.0) and half.halo_sigma_px == 3.0
    assert half.defocus_sigma_px == (1.0, 1.5) and half.edge_ramp_px == (1.0, 2.5)
    assert half.debris_radius_px == (0.75, 2.5) and half.debris_per_mpx == 160.0  # same debris per cell
    assert half.elongation == PARAMS.elongation and half.coverage == PARAMS.coverage
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="pixel scale must be a positive number"):
            PARAMS.scaled(bad)


def test_pixel_scale_makes_small_and_medium_cells_under_livecell_areas(tmp_path: Path) -> None:
    """At 0.2 the visible cell areas straddle LIVECell's small / medium limit (18^2 px); at 1 all are large."""
    areas = {}
    for scale in (1.0, 0.2):
        coco = load_coco(simulate_brightfield(2, tmp_path / str(scale), size=256, seed=1, pixel_scale=scale))
        areas[scale] = np.array([a["area"] for a in coco["annotations"] if a["category_id"] == 1])
    assert (areas[1.0] > 31**2).all()
    assert len(areas[0.2]) > 10 * len(areas[1.0])  # ~25x the cells on the same field
    small, medium = (areas[0.2] < 18**2).mean(), ((areas[0.2] >= 18**2) & (areas[0.2] <= 31**2)).mean()
    assert small > 0.2 and medium > 0.2 and small + medium == 1.0


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("size", "fraction", "fault"),
    [
        (256, 1.5, "overlap_fraction must be in [0, 1]"),
        (256, -0.1, "overlap_fraction must be in [0, 1]"),
        (256, math.nan, "overlap_fraction must be in [0, 1]"),
        (80, 0.0, "too small for even one cell"),
        (110, 0.3, "needs two cells"),
    ],
)
def test_bad_requests(tmp_path: Path, size: int, fraction: float, fault: str) -> None:
    with pytest.raises(ValueError, match=fault.replace("[", r"\[").replace("]", r"\]")):
        simulate_brightfield(1, tmp_path / "x", size=size, overlap_fraction=fraction)
    assert not (tmp_path / "x").exists()  # refused before writing anything


def test_room_for_one_cell_without_overlap_is_fine() -> None:
    check_brightfield_request(110, 110, 0.0)
    sample = render_brightfield_sample(np.random.default_rng(0), 110, 110, 0.0)
    assert len(sample.layout.cells) == 1


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bf"
    for extra, fault in [
        (["--overlap-fraction", "1.2"], "overlap_fraction must be in [0, 1], got 1.2"),
        (["--size", "90"], "needs two cells"),
        (["--size", "64", "64", "64"], "--size takes one value (square) or two"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["simulate", "brightfield", "--n", "1", "--out", str(out), *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("simulate brightfield: ") and fault in err and "\n" not in err
    main(["simulate", "brightfield", "--n", "1", "--size", "128", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:  # a dataset in --out is replaced only with --overwrite
        main(["simulate", "brightfield", "--n", "1", "--size", "128", "--out", str(out)])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    main(["simulate", "brightfield", "--n", "1", "--size", "128", "--out", str(out), "--overwrite"])


# ---------------------------------------------------------------------------------------------- figure
def test_sample_figure(tmp_path: Path) -> None:
    from cytobench.reporting.brightfield_plots import plot_brightfield_samples, truth_overlay

    sample = render_brightfield_sample(np.random.default_rng(1), 192, 192, 1.0)
    overlay = truth_overlay(sample)
    overlap = sample.truth.overlap.astype(bool) & (sample.truth.semantic == 1)
    assert overlap.any() and (overlay[overlap][:, 0] > overlay[overlap][:, 2]).all()  # overlaps drawn red
    plot_brightfield_samples([sample], tmp_path / "grid.png")
    assert cv2.imread(str(tmp_path / "grid.png")).shape[2] == 3
    with pytest.raises(ValueError, match="at least one sample"):
        plot_brightfield_samples([])
