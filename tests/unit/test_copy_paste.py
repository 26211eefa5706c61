"""Copy-paste in the phase domain (thesis Sec. 4.4.1): alignment, feather, overlap bound, additivity,
determinism, the cell bank of a brightfield-contract set, the written synthetic set and ``synth make``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cytobench.cli import main
from cytobench.data.coco_dataset import CocoDetectionDataset
from cytobench.data.rasterize import read_map
from cytobench.io.coco_convert import encode_mask
from cytobench.io.images import read_image, write_image
from cytobench.synth.cells import CellBank
from cytobench.synth.copy_paste import (
    CellCrop,
    CopyPasteParams,
    augment_cell,
    compose_canvas,
    feather_alpha,
    overlap_ratios,
    pad_cell,
    paste_cells,
    thesis_edge_sigma,
    visible_masks,
)
from cytobench.synth.dataset import make_synthetic_set

# ------------------------------------------------------------------------------------ tiny data set
SIDE = 64
BACKGROUND = 51 / 255  # exactly representable in the 8-bit phase PNG
# cells of every tiny image (row, col, radius): A isolated, B cut by the bottom edge, C under D (overlap)
LAYOUT = {"A": (16, 16, 7), "B": (60, 32, 7), "C": (44, 40, 7), "D": (44, 50, 7)}


def disk(row: float, col: float, radius: float, side: int = SIDE) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    return (yy - row) ** 2 + (xx - col) ** 2 <= radius**2


def write_tiny_set(folder: Path, n_images: int = 2, with_phase: bool = True) -> Path:
    """A hand-made brightfield-contract set: ``n_images`` 64 px samples of the :data:`LAYOUT` cells.

    Phase = background + 0.3 per cell (additive) + 0.2 per nucleus (radius 3 at the cell centre); the
    brightfield planes are simple functions of it. Depth: D above C. The last image goes to ``val.json``.
    ``with_phase=False`` lists only the two brightfield planes (no phase plane).
    """
    images_dir = folder / "images"
    names = list(LAYOUT)
    cells = {k: disk(*LAYOUT[k]) for k in names}
    nuclei = {k: disk(LAYOUT[k][0], LAYOUT[k][1], 3) & cells[k] for k in names}
    visible = dict(cells)
    visible["C"] = cells["C"] & ~cells["D"]
    phase = BACKGROUND + 0.3 * sum(m.astype(float) for m in cells.values())
    phase += 0.2 * sum(nuclei[k] & visible[k] for k in names)
    images, annotations = [], []
    for i in range(n_images):
        stem = f"s{i}"
        planes = [f"{stem}_bf_lower.png", f"{stem}_bf_upper.png", f"{stem}_phase.png"]
        write_image(images_dir / planes[0], np.clip(0.6 - 0.3 * (phase - BACKGROUND), 0, 1))
        write_image(images_dir / planes[1], np.clip(0.4 + 0.2 * (phase - BACKGROUND), 0, 1))
        write_image(images_dir / planes[2], np.clip(phase, 0, 1))
        semantic = np.zeros((SIDE, SIDE), np.uint8)
        for k in names:
            semantic[visible[k]] = 1
        for k in names:
            semantic[nuclei[k] & visible[k]] = 2
        write_image(images_dir / f"{stem}_semantic.png", semantic)
        write_image(images_dir / f"{stem}_overlap.png", (cells["C"] & cells["D"]).astype(np.uint8))
        images.append(
            {
                "id": i + 1,
                "file_name": planes[0],
                "width": SIDE,
                "height": SIDE,
                "planes": planes if with_phase else planes[:2],
                "maps": {"semantic": f"{stem}_semantic.png", "overlap": f"{stem}_overlap.png"},
            }
        )
        for depth, k in enumerate(names):
            cell_id = len(annotations) + 1
            rows, cols = np.nonzero(visible[k])
            box = [float(cols.min()), float(rows.min()), float(np.ptp(cols) + 1), float(np.ptp(rows) + 1)]
            annotations.append(
                {
                    "id": cell_id,
                    "image_id": i + 1,
                    "category_id": 1,
                    "segmentation": encode_mask(visible[k]),
                    "amodal_segmentation": encode_mask(cells[k]),
                    "bbox": box,
                    "area": int(visible[k].sum()),
                    "iscrowd": 0,
                    "nucleus_id": cell_id + 1,
                    "depth": depth,
                    "name": k,
                }
            )
            rows, cols = np.nonzero(nuclei[k])
            annotations.append(
                {
                    "id": cell_id + 1,
                    "image_id": i + 1,
                    "category_id": 2,
                    "segmentation": encode_mask(nuclei[k]),
                    "bbox": [
                        float(cols.min()),
                        float(rows.min()),
                        float(np.ptp(cols) + 1),
                        float(np.ptp(rows) + 1),
                    ],
                    "area": int(nuclei[k].sum()),
                    "iscrowd": 0,
                    "cell_id": cell_id,
                }
            )
    categories = [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}]
    val_ids = {images[-1]["id"]} if n_images > 1 else set()
    for name, keep in (("train.json", False), ("val.json", True)):
        subset = [im for im in images if (im["id"] in val_ids) == keep]
        anns = [a for a in annotations if (a["image_id"] in val_ids) == keep]
        (folder / name).write_text(
            json.dumps(
                {"images": subset, "annotations": anns, "categories": categories, "info": {"border_px": 1}}
            )
        )
    return folder


# ---------------------------------------------------------------------------------------- helpers
def disk_cell(radius: float = 6.0, value: float = 0.5, halo: float = 0.0, side: int = 21) -> CellCrop:
    """A uniform disk of ``value`` centred in a ``side`` px crop, with a 2 px ring of ``halo`` outside it."""
    c = (side - 1) / 2
    mask = disk(c, c, radius, side)
    ring = disk(c, c, radius + 2, side) & ~mask
    signal = np.where(mask, value, np.where(ring, halo, 0.0)).astype(np.float32)
    nucleus = disk(c, c, 2, side) & mask
    return CellCrop(signal, mask, nucleus, {"cell_id": 1})


def ellipse_cell() -> CellCrop:
    """An elongated uniform ellipse (value 0.5) with an off-centre nucleus, so rotation matters."""
    yy, xx = np.mgrid[:31, :31]
    mask = ((yy - 15) / 6.0) ** 2 + ((xx - 15) / 12.0) ** 2 <= 1
    nucleus = ((yy - 15) ** 2 + (xx - 20) ** 2 <= 4) & mask
    return CellCrop(np.where(mask, 0.5, 0.0).astype(np.float32), mask, nucleus, {"cell_id": 7})


# -------------------------------------------------------------------------------------- the module
def test_feather_alpha_is_one_on_the_mask_and_gaussian_outside() -> None:
    mask = np.zeros((11, 11), bool)
    mask[5, 5] = True
    alpha = feather_alpha(mask, sigma=1.0)
    assert alpha[5, 5] == 1.0
    assert alpha[5, 6] == pytest.approx(np.exp(-0.5))  # distance 1
    assert alpha[6, 6] == pytest.approx(np.exp(-1.0))  # distance sqrt(2)
    assert alpha[5, 8] == pytest.approx(np.exp(-4.5))  # distance 3 = the reach
    assert alpha[5, 9] == 0.0 and alpha[0, 0] == 0.0  # beyond 3 sigma
    assert np.array_equal(feather_alpha(mask, 0.0), mask.astype(np.float32))
    assert thesis_edge_sigma(1080, 1080) == 20.0 and thesis_edge_sigma(256, 512) == pytest.approx(
        20 * 256 / 1080
    )


def test_one_cell_without_augmentation_is_pasted_as_cut() -> None:
    cell = disk_cell(radius=6, value=0.4, halo=-0.05)
    sigma = 1.5
    params = CopyPasteParams(augment=False, edge_sigma=sigma)
    result = paste_cells((48, 48), 0.2, lambda rng: cell, 1, np.random.default_rng(0), params)
    assert result.n_pasted == 1
    placement = result.placements[0]
    # the crop as placed: the feather's reach around the mask (it may overhang the canvas: pad the canvas)
    margin = math.ceil(3 * sigma) + 1
    framed = pad_cell(cell, margin)
    assert np.array_equal(placement.mask, framed.mask)
    top, left = placement.top + margin, placement.left + margin
    window = (slice(top, top + framed.mask.shape[0]), slice(left, left + framed.mask.shape[1]))
    added = np.pad(result.phase - np.float32(0.2), margin)[window]
    # inside the mask: exactly the cut signal; the amodal mask sits there too
    np.testing.assert_allclose(added[framed.mask], 0.4, atol=1e-6)
    assert np.array_equal(np.pad(result.amodal[0], margin)[window], framed.mask)
    # the halo ring 1 px outside the mask: -0.05 * exp(-1 / (2 sigma^2)); nothing beyond 3 sigma
    distance = ndimage.distance_transform_edt(~framed.mask)
    ring1 = distance == 1.0
    np.testing.assert_allclose(added[ring1], -0.05 * np.exp(-1 / (2 * sigma**2)), atol=1e-6)
    assert np.all(added[distance > 3 * sigma] == 0)
    outside = np.ones((48 + 2 * margin, 48 + 2 * margin), bool)
    outside[window] = False
    assert np.all(np.pad(result.phase - np.float32(0.2), margin)[outside] == 0)


def test_augmented_cell_keeps_pixels_masks_and_nucleus_aligned() -> None:
    params = CopyPasteParams(scale_range=(0.8, 1.25), elastic_strength=0.1, edge_sigma=0.0)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        warped = augment_cell(ellipse_cell(), rng, params, margin=3)
        assert warped is not None
        mask, signal = warped.mask, warped.signal
        # uniform cell: the interior reads 0.5 exactly, the outside 0
        interior = ndimage.binary_erosion(mask, iterations=2)
        assert interior.sum() > 50
        np.testing.assert_allclose(signal[interior], 0.5, atol=1e-5)
        assert np.all(signal[~ndimage.binary_dilation(mask, iterations=2)] == 0)
        # the intensity-weighted centroid is the mask's centroid
        weights = signal / signal.sum()
        yy, xx = np.indices(mask.shape)
        centroid = np.array([(weights * yy).sum(), (weights * xx).sum()])
        np.testing.assert_allclose(centroid, ndimage.center_of_mass(mask), atol=0.5)
        assert warped.nucleus is not None and not np.any(warped.nucleus & ~mask) and warped.nucleus.sum() > 3
    # the angle is random: the ellipse's long axis turns
    orientations = set()
    for seed in range(4):
        warped = augment_cell(ellipse_cell(), np.random.default_rng(seed), params, margin=3)
        r0, c0 = np.nonzero(warped.mask)
        orientations.add(
            round(float(np.degrees(np.arctan2(np.cov(r0, c0)[0, 1] * 2, np.var(c0) - np.var(r0)))) / 20)
        )
    assert len(orientations) > 1


def test_identity_augmentation_returns_the_crop_unchanged() -> None:
    cell = ellipse_cell()
    params = CopyPasteParams(scale_range=(1.0, 1.0), rotate=False, elastic_strength=0.0)
    warped = augment_cell(cell, np.random.default_rng(0), params, margin=4)
    expected = pad_cell(cell, 4)
    assert warped is not None and np.array_equal(warped.mask, expected.mask)
    np.testing.assert_allclose(warped.signal, expected.signal, atol=1e-6)
    assert np.array_equal(warped.nucleus, expected.nucleus)
    # a pure 2x resize: the ellipse of semi-axes 12 x 24 px
    double = CopyPasteParams(scale_range=(2.0, 2.0), rotate=False, elastic_strength=0.0)
    doubled = augment_cell(cell, np.random.default_rng(0), double, margin=4)
    assert doubled is not None and doubled.mask.sum() == pytest.approx(4 * math.pi * 6 * 12, rel=0.05)


def test_every_cell_respects_the_overlap_bound() -> None:
    cell = disk_cell(radius=7)
    for bound in (0.2, 0.05):
        params = CopyPasteParams(max_overlap=bound, edge_sigma=1.0, max_tries=30)
        result = paste_cells((64, 64), 0.1, lambda rng: cell, 40, np.random.default_rng(3), params)
        ratios = overlap_ratios(result.amodal)
        assert result.n_pasted >= 5 and ratios.max() <= bound + 1e-12
        assert ratios.max() > 0  # cells do overlap: the bound, not luck, kept them under it
        assert result.n_pasted < result.n_requested  # the canvas filled up before 40 cells
    params = CopyPasteParams(max_overlap=0.0, edge_sigma=1.0)
    result = paste_cells((64, 64), 0.1, lambda rng: cell, 20, np.random.default_rng(3), params)
    assert result.amodal.sum(axis=0).max() == 1  # no pixel under two cells


def test_a_cell_larger_than_the_canvas_is_never_pasted() -> None:
    params = CopyPasteParams(augment=False, edge_sigma=1.0, max_tries=3)
    result = paste_cells((10, 10), 0.1, lambda rng: disk_cell(radius=8), 2, np.random.default_rng(0), params)
    assert result.n_pasted == 0 and result.amodal.shape == (0, 10, 10)
    assert np.all(result.phase == np.float32(0.1))


def test_the_canvas_is_the_background_plus_the_sum_of_the_pasted_crops() -> None:
    params = CopyPasteParams(max_overlap=0.2, edge_sigma=2.0)
    result = paste_cells(
        (64, 64), 0.25, lambda rng: disk_cell(7, halo=0.05), 12, np.random.default_rng(5), params
    )
    assert result.n_pasted >= 3 and (result.amodal.sum(axis=0) >= 2).any()
    alone = [compose_canvas((64, 64), 0.25, [p]) - np.float32(0.25) for p in result.placements]
    np.testing.assert_allclose(result.phase, 0.25 + np.sum(alone, axis=0), atol=1e-6)
    # uniform cells pasted as cut, without halo: the canvas counts the cells covering each pixel
    params = CopyPasteParams(max_overlap=0.2, edge_sigma=2.0, augment=False)
    result = paste_cells((64, 64), 0.25, lambda rng: disk_cell(7), 12, np.random.default_rng(5), params)
    count = result.amodal.sum(axis=0)
    assert count.max() >= 2
    np.testing.assert_allclose(result.phase - 0.25, 0.5 * count, atol=1e-6)


def test_same_seed_same_image_other_seed_other_image() -> None:
    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        result = paste_cells((64, 64), 0.2, lambda rng: ellipse_cell(), 6, np.random.default_rng(seed))
        return result.phase, result.amodal

    (a, ma), (b, mb), (c, _) = run(1), run(1), run(2)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, c)


def test_visible_masks_follow_the_paste_order() -> None:
    amodal = np.zeros((2, 6, 6), bool)
    amodal[0, 0:4, 0:4] = True
    amodal[1, 2:6, 2:6] = True
    visible = visible_masks(amodal)
    assert np.array_equal(visible[1], amodal[1])  # the last pasted is on top
    expected = amodal[0].copy()
    expected[2:4, 2:4] = False
    assert np.array_equal(visible[0], expected)
    np.testing.assert_allclose(overlap_ratios(amodal), [4 / 16, 4 / 16])


# ----------------------------------------------------------------------------------- data set level
def test_cell_bank_cuts_whole_cells_only(tmp_path: Path) -> None:
    bank = CellBank(write_tiny_set(tmp_path / "src", n_images=3), margin=3)
    names = sorted({ref.cell["name"] for ref in bank.refs})
    # A is isolated; D lies on top of C (fully visible); B is cut by the edge, C is partly hidden
    assert names == ["A", "D"] and bank.eligibility == "isolated + fully visible"
    assert bank.background == pytest.approx(BACKGROUND) and bank.image_size == (SIDE, SIDE)
    assert bank.cells_per_image == 4
    ref_a = next(r for r in bank.refs if r.cell["name"] == "A")
    crop = bank.crop(ref_a)
    assert crop.mask.sum() == disk(*LAYOUT["A"]).sum()
    np.testing.assert_allclose(crop.signal[crop.mask & ~crop.nucleus], 0.3, atol=1 / 255)
    np.testing.assert_allclose(crop.signal[crop.nucleus], 0.5, atol=1 / 255)
    assert crop.nucleus.sum() == disk(16, 16, 3).sum()
    # D's crop carries no piece of C: zero on C's pixels outside D
    ref_d = next(r for r in bank.refs if r.cell["name"] == "D")
    crop_d = bank.crop(ref_d)
    assert np.all(crop_d.signal[~crop_d.mask] == 0) and crop_d.mask.sum() == disk(*LAYOUT["D"]).sum()
    assert crop_d.source == {"image_id": ref_d.image_index + 1, "cell_id": ref_d.cell["id"]}


def test_synthetic_set_follows_the_data_contract(tmp_path: Path) -> None:
    bank = CellBank(write_tiny_set(tmp_path / "src", n_images=3))

    def translator(phase: np.ndarray, seed: int) -> np.ndarray:
        return np.stack([phase, 1.0 - phase])

    out = tmp_path / "synth"
    params = CopyPasteParams(edge_sigma=1.5)
    summary = make_synthetic_set(
        bank, out, 3, seed=4, cells_per_image=4, params=params, translator=translator
    )
    assert summary.n_images == 3 and not summary.phase_only and (out / "val.json").is_file()
    for split in ("train", "val"):
        data = json.loads((out / f"{split}.json").read_text())
        by_id = {a["id"]: a for a in data["annotations"]}
        for ann in data["annotations"]:
            if ann["category_id"] == 1 and ann["nucleus_id"] is not None:
                assert by_id[ann["nucleus_id"]]["cell_id"] == ann["id"]
        ds = CocoDetectionDataset(
            out / "images",
            out / f"{split}.json",
            planes=[0, 1],
            with_masks=True,
            with_semantic=True,
            maps=["overlap"],
            with_amodal_masks=True,
        )
        for index in range(len(ds)):
            image, target = ds[index]
            phase_file = ds.images[index]["planes"][2]
            phase = read_image(out / "images" / phase_file).array[..., 0]
            assert image.shape == (2, SIDE, SIDE)
            np.testing.assert_array_equal(image[0].numpy(), phase)  # lower plane = phase (the translator)
            np.testing.assert_allclose(image[1].numpy(), 1.0 - phase, atol=1.5 / 255)
            cells = target["labels"] == 1
            amodal, visible = target["amodal_masks"][cells].bool(), target["masks"][cells].bool()
            nuclei = target["masks"][target["labels"] == 2].bool()
            assert not (visible & ~amodal).any() and cells.sum() >= 1
            assert not (nuclei.any(0) & ~visible.any(0)).any()
            assert overlap_ratios(amodal.numpy()).max() <= 0.2 + 1e-12
            assert np.array_equal(target["overlap"].numpy(), (amodal.sum(0) >= 2).numpy().astype(np.uint8))
            semantic = target["semantic"].numpy()
            assert set(np.unique(semantic)) <= {0, 1, 2, 3}
            assert np.array_equal(semantic == 0, ~visible.any(0).numpy())
            assert np.all(semantic[nuclei.any(0).numpy() & (semantic != 3)] == 2)
            assert read_map(out / "images" / ds.images[index]["maps"]["semantic"]).dtype == np.uint8
            assert phase_file.endswith("_phase.png")


def test_synth_make_cli_phase_only_and_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_tiny_set(tmp_path / "src", n_images=2)
    out = tmp_path / "out"
    main(["synth", "make", "--data", str(src), "--n", "2", "--seed", "1", "--cells", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert "phase-domain set only" in text and "wrote 2 synthetic images" in text
    data = json.loads((out / "train.json").read_text())
    assert data["info"]["phase_only"] and data["images"][0]["planes"] == ["synth_00000_phase.png"]
    first = (out / "images" / "synth_00000_phase.png").read_bytes()
    main(
        [
            "synth",
            "make",
            "--data",
            str(src),
            "--n",
            "2",
            "--seed",
            "1",
            "--cells",
            "3",
            "--out",
            str(out),
            "--overwrite",
        ]
    )
    assert (out / "images" / "synth_00000_phase.png").read_bytes() == first  # same seed, same bytes
    capsys.readouterr()
    no_phase = write_tiny_set(tmp_path / "nophase", n_images=2, with_phase=False)
    cases = [
        (["--data", str(no_phase), "--n", "2", "--out", str(tmp_path / "x")], "has no phase plane"),
        (["--data", str(src), "--n", "0", "--out", str(tmp_path / "y")], "--n: must be a positive integer"),
        (["--data", str(src), "--n", "2", "--out", str(out)], "pass --overwrite"),
        (["--data", str(tmp_path / "none"), "--n", "2", "--out", str(tmp_path / "z")], "not found"),
        (
            ["--data", str(src), "--n", "2", "--max-overlap", "1.5", "--out", str(tmp_path / "w")],
            "--max-overlap",
        ),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["synth", "make", *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
