"""`fish analyze`: readers (PNG, 16-bit TIFF, CZI), channel rules, segmenters, tiling, CLI errors, mosaicism."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.cli import main
from cytobench.engine.tiling import tile_windows
from cytobench.errors import BadInputError
from cytobench.fish.analyze import analyze_images
from cytobench.fish.calibrate import TruthSegmenter, calibrate_confusion, match_nuclei
from cytobench.fish.channels import FishImage, parse_channel_map, read_fish_image, resolve_channels
from cytobench.fish.otsu import OtsuSegmenter
from cytobench.fish.segmenters import DESTROYED, WHOLE, YoloSegmenterAdapter
from cytobench.io.images import read_image
from cytobench.simulate.fish import simulate_fish

MIX = {"normal": 0.6, "trisomy21": 0.25, "monosomyX": 0.15}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 384-px simulated images of one sample with a known mix."""
    out = tmp_path_factory.mktemp("fish_sim")
    return simulate_fish(3, out, size=384, seed=5, karyotype_mix=MIX)


def _images(ann: Path) -> list[Path]:
    return sorted((ann.parent / "images").glob("*.png"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _write_czi(path: Path, planes: np.ndarray, names: dict[int, str]) -> None:
    """planes: (C, H, W) uint8/uint16, one CZI channel each."""
    from pylibCZIrw import czi

    with czi.create_czi(str(path), exist_ok=True) as writer:
        for c in range(planes.shape[0]):
            writer.write(planes[c][:, :, None], plane={"C": c})
        writer.write_metadata(channel_names=names, scale_x=0.15e-6, scale_y=0.15e-6)


# ----------------------------------------------------------------------------------------- pipeline
def test_truth_nuclei_table_report_and_overlays(sim: Path, tmp_path: Path) -> None:
    truth = TruthSegmenter(sim)
    result = analyze_images(_images(sim), tmp_path, truth, sample="S1", n_boot=100)
    rows = _read_csv(tmp_path / "nuclei.csv")
    n_true = sum(len(t.nuclei) for t in truth.truth.values())
    assert len(rows) == n_true and rows[0].keys() >= {"image", "nucleus", "bbox_w", "pattern", "score"}
    whole = [r for r in rows if r["category"] == "whole"]
    destroyed = [r for r in rows if r["category"] == "destroyed"]
    assert all(r["n_red"] == "" and r["pattern"] == "" for r in destroyed)
    true_counts = [
        (n.n_red, n.n_green) for t in truth.truth.values() for n in t.nuclei if n.category == "whole"
    ]
    found = [(int(r["n_red"]), int(r["n_green"])) for r in whole]
    agree = np.mean([a == b for a, b in zip(found, true_counts)])
    assert agree >= 0.8, agree  # the paper's detector on true nuclei counts most nuclei right
    first = truth.truth["fish_00000.png"].nuclei[0]
    x, y, w, h = first.bbox  # the table's bbox is the rasterised polygon's pixel extent
    assert abs(int(rows[0]["bbox_x"]) - x) <= 1 and abs(int(rows[0]["bbox_w"]) - w) <= 2
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples"]["S1"]["n_whole"] == len(whole) == result.report["samples"]["S1"]["n_whole"]
    assert set(report["timing"]["stages_s"]) == {"io", "segmentation", "spots", "output"}
    assert report["timing"]["images"] == 3 and report["timing"]["images_per_s"] > 0
    assert "## Sample `S1`" in (tmp_path / "report.md").read_text()
    overlay = read_image(tmp_path / "overlays" / "fish_00000.png").array
    assert overlay.shape == (384, 384, 3)
    whole_px = np.all(np.round(overlay * 255) == [0, 255, 0], axis=-1)  # whole outlines in pure green
    assert whole_px.sum() > 100


def test_png_tiff16_and_czi_give_the_same_counts(sim: Path, tmp_path: Path) -> None:
    png = _images(sim)[0]
    rgb = np.round(read_image(png).array * 255).astype(np.uint16)
    import tifffile

    tif = tmp_path / "tiff" / "img16.tif"
    tif.parent.mkdir()
    tifffile.imwrite(tif, rgb * 257, photometric="rgb")  # 16-bit, full range
    czi = tmp_path / "czi" / "img.czi"
    czi.parent.mkdir()
    planes = np.stack([rgb[..., 2], rgb[..., 1], rgb[..., 0]]).astype(np.uint16) * 16  # 12-bit content
    _write_czi(czi, planes, {0: "DAPI", 1: "FITC", 2: "Cy3"})  # stored as dapi, green, red
    image = read_fish_image(czi)
    assert image.channels == {"dapi": 0, "green": 1, "red": 2}
    np.testing.assert_allclose(image.red, rgb[..., 0] * 16 / 4095.0, rtol=1e-6)
    seg = OtsuSegmenter(nucleus_diameter_px=67.0)
    out = {}
    for name, path in (("png", png), ("tif", tif), ("czi", czi)):
        analyze_images([path], tmp_path / name, seg, overlays=False)
        out[name] = [
            (r["category"], r["area"], r["n_red"], r["n_green"])
            for r in _read_csv(tmp_path / name / "nuclei.csv")
        ]
    assert out["png"] == out["tif"]  # v * 257 / 65535 == v / 255: identical planes
    assert len(out["czi"]) == len(out["png"]) and len(out["png"]) >= 3
    same = np.mean([a == b for a, b in zip(out["czi"], out["png"])])  # 12-bit scale differs by 0.4 %
    assert same >= 0.75


@pytest.mark.slow
def test_simulated_mosaicism_interval_contains_the_true_mix(tmp_path: Path) -> None:
    """Confusion-corrected 95% intervals (true nuclei, and otsu nuclei) hold the simulated sample's mix."""
    ann = simulate_fish(8, tmp_path / "sim", size=512, seed=12, karyotype_mix=MIX)
    for seg in (TruthSegmenter(ann), OtsuSegmenter()):
        calibrator = None if seg.name == "truth" else seg
        confusion = calibrate_confusion(tmp_path / f"cal_{seg.name}", 8, seed=99, segmenter=calibrator)
        assert confusion.counts.sum() >= 60  # matched whole nuclei of the balanced calibration set
        result = analyze_images(
            _images(ann), tmp_path / seg.name, seg, overlays=False, confusion=confusion, n_boot=300
        )
        entry = result.report["samples"]["images"]
        assert entry["n_whole"] >= 50
        for level in entry["mosaicism"]["corrected"]["levels"]:
            assert level["lower"] <= MIX[level["karyotype"]] <= level["upper"], (seg.name, level)
        plain = {lv["karyotype"]: lv for lv in entry["mosaicism"]["plain"]["levels"]}
        corrected = {lv["karyotype"]: lv for lv in entry["mosaicism"]["corrected"]["levels"]}
        # a missed red dot turns a trisomy-21 nucleus into a normal-looking one: the plain level is lower
        assert plain["trisomy21"]["fraction"] < corrected["trisomy21"]["fraction"]


# ------------------------------------------------------------------------------------- segmenters
def _disc(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _fish(dapi: np.ndarray, path: str = "synthetic.png") -> FishImage:
    zeros = np.zeros_like(dapi, dtype=np.float32)
    return FishImage(Path(path), zeros, zeros, dapi.astype(np.float32), {"red": 0, "green": 1, "dapi": 2}, 8)


def test_otsu_splits_touching_nuclei_and_groups_fragments() -> None:
    shape = (200, 260)
    a, b = _disc(shape, 60, 70, 30), _disc(shape, 111, 70, 30)  # touching, overlapping by 9 px
    lone = _disc(shape, 60, 150, 28)
    frags = np.zeros(shape, bool)
    for cx, cy in [(190, 140), (205, 150), (195, 162), (212, 132), (220, 160)]:
        frags |= _disc(shape, cx, cy, 4)
    dapi = np.where(a | b | lone, 0.7, 0.05) + np.where(frags, 0.6, 0.0)
    nuclei = OtsuSegmenter().segment(_fish(dapi))
    whole = nuclei.masks[nuclei.labels == WHOLE]
    assert len(whole) == 3 and (nuclei.labels == DESTROYED).sum() == 1
    truth = np.stack([a & ~b, b & ~a, lone])
    pairs = match_nuclei(whole, truth, iou_thr=0.8)
    assert len(pairs) == 3
    destroyed = nuclei.masks[nuclei.labels == DESTROYED][0]
    hull = destroyed[frags].mean()  # smoothing shrinks 4-px fragments; the hull spans the cluster
    assert hull > 0.7 and not destroyed[a | b | lone].any(), hull


def test_tile_windows_cores_partition_the_image() -> None:
    assert [w[0][2] for w in tile_windows(512, 1000, 512, 128)] == [0, 244, 488]  # ceil(872 / 384) windows
    windows = tile_windows(1100, 700, 512, 128)
    cover = np.zeros((1100, 700), int)
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in windows:
        assert 0 <= y0 < y1 <= 1100 and 0 <= x0 < x1 <= 700 and y1 - y0 == 512 and x1 - x0 == 512
        assert y0 <= cy0 and cy1 <= y1 and x0 <= cx0 and cx1 <= x1
        cover[int(np.ceil(cy0)) : int(np.ceil(cy1)), int(np.ceil(cx0)) : int(np.ceil(cx1))] += 1
    assert (cover == 1).all()


class _PerfectTileModel:
    """Stands in for a YOLO model: every connected blob of a window's blue channel is one whole nucleus."""

    categories = [{"id": 1, "name": "whole"}, {"id": 2, "name": "destroyed"}]

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, images):  # noqa: ANN001, ANN204 - the model contract: list of C x H x W tensors in [0, 1]
        from scipy import ndimage

        out = []
        for img in images:
            self.calls.append(tuple(img.shape[1:]))
            lab, n = ndimage.label(img[2].numpy() > 0.5)
            masks = (
                np.stack([lab == k for k in range(1, n + 1)]) if n else np.zeros((0, *img.shape[1:]), bool)
            )
            out.append(
                {
                    "masks": torch.from_numpy(masks.astype(np.uint8)),
                    "labels": torch.ones(n, dtype=torch.int64),
                    "scores": torch.ones(n),
                }
            )
        return out


def test_yolo_tiling_keeps_every_nucleus_once_at_full_resolution() -> None:
    shape = (800, 760)
    rng = np.random.default_rng(0)
    truth = []
    for cy in range(60, 760, 110):
        for cx in range(60, 720, 110):
            truth.append(_disc(shape, cx + rng.uniform(-10, 10), cy + rng.uniform(-10, 10), 30))
    dapi = np.any(truth, axis=0).astype(np.float32)
    adapter = YoloSegmenterAdapter.__new__(YoloSegmenterAdapter)
    adapter.model = _PerfectTileModel()
    adapter._label_map = np.array([0, WHOLE, DESTROYED])
    adapter.imgsz, adapter.conf, adapter.iou, adapter.tile = None, 0.25, 0.7, 512
    nuclei = adapter.segment(_fish(dapi))
    assert len(adapter.model.calls) == 4 and set(adapter.model.calls) == {(512, 512)}  # 2 x 2 windows
    assert nuclei.masks.shape == (len(truth), *shape)
    assert len(match_nuclei(nuclei.masks, np.stack(truth), iou_thr=0.99)) == len(truth)


# ----------------------------------------------------------------------------------------- channels
def test_channel_rules() -> None:
    assert parse_channel_map("red=2, green=0,dapi=1") == {"red": 2, "green": 0, "dapi": 1}
    for bad in ("red=0,green=0,dapi=1", "red=0,green=1", "red=0,green=1,blue=2", "red=x,green=1,dapi=2"):
        with pytest.raises(ValueError):
            parse_channel_map(bad)
    names = ["AF568-T1", "DAPI-T2", "AF488-T3"]
    assert resolve_channels(Path("a.czi"), 3, names, None) == {"red": 0, "dapi": 1, "green": 2}
    assert resolve_channels(Path("a.czi"), 3, ["Ch1", "Ch2", "Ch3"], None) == {
        "red": 0,
        "green": 1,
        "dapi": 2,
    }
    with pytest.raises(BadInputError, match=r"a\.czi: CZI has 4 channels"):
        resolve_channels(Path("a.czi"), 4, ["A", "B", "C", "D"], None)
    with pytest.raises(BadInputError, match="asks for dapi=3"):
        resolve_channels(Path("b.tif"), 3, None, {"red": 0, "green": 1, "dapi": 3})


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_otsu_writes_outputs(sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    main(
        ["fish", "analyze", "--segmenter", "otsu", "--images", str(sim.parent / "images"), "--out", str(out)]
    )
    text = capsys.readouterr().out
    assert "images: " in text and "whole nuclei in 3 images" in text
    assert (out / "nuclei.csv").is_file() and len(list((out / "overlays").glob("*.png"))) == 3


def test_cli_bad_czi_channel_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "two.czi"
    _write_czi(path, np.zeros((2, 32, 32), np.uint16), {0: "DAPI", 1: "FITC"})
    with pytest.raises(SystemExit) as exc:
        main(["fish", "analyze", "--segmenter", "otsu", "--images", str(path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"BadInputError: {path}: CZI has 2 channels (DAPI, FITC), expected 3")


def test_cli_unreadable_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(SystemExit) as exc:
        main(["fish", "analyze", "--segmenter", "otsu", "--images", str(path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"UnreadableImage: {path}: cannot decode image")


def test_cli_yolo_without_checkpoint(sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fish", "analyze", "--images", str(_images(sim)[0]), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "--checkpoint" in capsys.readouterr().err


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["fish", "analyze", "--segmenter", "otsu", "--no-overlays", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_reads_the_folder_simulate_fish_writes(
    sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = sim.parent  # images/ + annotations.json
    code, out, err = _cli(["--images", str(folder), "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "dataset folder" in line]
    assert notes == [
        f"fish analyze: {folder} is a dataset folder: reading {folder / 'images'}; "
        "annotations.json beside it is not used (fish analyze takes no ground truth)"
    ]
    assert (
        f"{folder.name}: " in out and "whole nuclei in 3 images" in out
    )  # one sample, named after the folder
    report = json.loads((tmp_path / "a/report.json").read_text())
    assert list(report["samples"]) == [folder.name]
    split = simulate_fish(2, tmp_path / "split", size=128, seed=1, val_fraction=0.5).parent
    code, out, err = _cli(["--images", str(split), "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "train.json, val.json beside it are not used" in err
    assert "split: " in out and "in 2 images" in out


def test_cli_report_without_whole_nuclei_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cytobench.io.images import write_image

    for k in range(2):
        write_image(tmp_path / "blank" / f"b{k}.png", np.zeros((96, 96, 3), np.uint8))
    for extra in ([], ["--calibrate", "2"]):
        out_dir = tmp_path / f"out{len(extra)}"
        code, out, err = _cli(["--images", str(tmp_path / "blank"), "--out", str(out_dir), *extra], capsys)
        assert code == 0, err
        assert "blank: no whole nuclei in 2 images" in out and "nan" not in out.lower()
        text = (out_dir / "report.md").read_text()
        assert "No whole nuclei were found" in text and "nan" not in text.lower()
        report = json.loads((out_dir / "report.json").read_text(), parse_constant=pytest.fail)  # no NaN
        for est in report["samples"]["blank"]["mosaicism"].values():
            assert all(lv["fraction"] is None and lv["upper"] is None for lv in est["levels"])
        assert set(report["samples"]["blank"]["mosaicism"]) == (
            {"plain", "corrected"} if extra else {"plain"}
        )


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        (["--nucleus-diameter", "-5"], "--nucleus-diameter must be > 0"),
        (["--threshold", "-1"], "--threshold must be >= 0"),
        (["--conf", "2"], "--conf must be in [0, 1]"),
        (["--tile", "-1"], "--tile must be >= 0"),
        (["--n-boot", "3"], "--n-boot must be >= 10"),
    ],
)
def test_cli_bad_option_is_one_line(
    sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fault: str
) -> None:
    code, _, err = _cli(["--images", str(sim.parent), "--out", str(tmp_path / "o"), *args], capsys)
    lines = [line for line in err.splitlines() if "dataset folder" not in line]
    assert code == 2 and lines == [lines[0]] and fault in lines[0], err
    assert not (tmp_path / "o").exists()


def test_cli_empty_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(["--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert (
        code == 2
        and err.strip() == f"BadInputError: {tmp_path / 'empty'}: no images found (png, jpg, bmp, tif, czi)"
    )
    (tmp_path / "set" / "images").mkdir(parents=True)  # a dataset folder whose images/ is empty
    (tmp_path / "set" / "annotations.json").write_text("{}")
    code, _, err = _cli(["--images", str(tmp_path / "set"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        f"BadInputError: {tmp_path / 'set' / 'images'}: no images"
    )
