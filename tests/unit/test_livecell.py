"""LIVECell-format real data: a tiny fixture in LIVECell's exact layout loads, trains-ready, and scores.

The fixture mirrors the released files: ``annotations`` an object keyed by the annotation id (as a string,
not in id order), polygon ``segmentation``, ``bbox`` / ``area`` / ``iscrowd`` per annotation, one category
``{"supercategory": "cell", "id": 1, "name": "cell"}``, ``info`` / ``licenses``, and 704 x 520 8-bit
single-channel ``.tif`` images stored in a folder per cell type while ``file_name`` is the bare name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils

from cytobench.cli import main
from cytobench.errors import CorruptAnnotation
from cytobench.evaluation import CocoEvaluator
from cytobench.io.livecell import LIVECELL_SIZE, livecell_dataset, load_livecell, prepare_livecell

W, H = LIVECELL_SIZE
FILES = {11: "A172_Phase_A7_1_00d00h00m_1.tif", 12: "SHSY5Y_Phase_B10_1_00d04h00m_2.tif"}
# (image id, centre x, centre y, radius): octagons of ~100 (small), ~480 (medium) and ~1770 px (large)
CELLS = [
    (11, 60, 50, 6),
    (11, 200, 120, 13),
    (11, 400, 300, 25),
    (12, 80, 400, 6),
    (12, 500, 90, 13),
    (12, 650, 470, 25),
]


def octagon(cx: float, cy: float, r: float) -> list[float]:
    angles = np.arange(8) * np.pi / 4 + np.pi / 8
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).round(2).ravel().tolist()


def raster(polygon: list[float]) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], H, W)))


def livecell_json() -> dict[str, Any]:
    annotations = {}
    for ann_id, (image_id, cx, cy, r) in zip([205, 101, 307, 150, 999, 412], CELLS):
        poly = octagon(cx, cy, r)
        xs, ys = poly[0::2], poly[1::2]
        annotations[str(ann_id)] = {
            "segmentation": [poly],
            "area": float(raster(poly).sum()),
            "iscrowd": 0,
            "image_id": image_id,
            "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
            "category_id": 1,
            "id": ann_id,
        }
    return {
        "info": {"description": "LIVECell fixture", "version": "1.0", "year": 2021},
        "licenses": [
            {"id": 1, "name": "CC BY-NC 4.0", "url": "https://creativecommons.org/licenses/by-nc/4.0/"}
        ],
        "images": [
            {
                "id": image_id,
                "width": W,
                "height": H,
                "file_name": name,
                "original_filename": name.replace("_1.tif", ".tif"),
                "url": f"https://example.invalid/{name}",
            }
            for image_id, name in FILES.items()
        ],
        "annotations": annotations,
        "categories": [{"supercategory": "cell", "id": 1, "name": "cell"}],
    }


@pytest.fixture()
def livecell(tmp_path: Path) -> tuple[Path, Path]:
    """(image root with a folder per cell type, the annotation json)."""
    root = tmp_path / "livecell_test_images"
    rng = np.random.default_rng(0)
    for name in FILES.values():
        folder = root / name.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / name, rng.integers(0, 256, (H, W), dtype=np.uint8))
    ann_file = tmp_path / "livecell_coco_test.json"
    ann_file.write_text(json.dumps(livecell_json()))
    return root, ann_file


def results_json(path: Path, drop: int | None = None) -> Path:
    """Perfect predictions (the polygons' RLEs with their boxes), without cell ``drop``."""
    results = []
    for i, (image_id, cx, cy, r) in enumerate(CELLS):
        if i == drop:
            continue
        rle = mask_utils.encode(np.asfortranarray(raster(octagon(cx, cy, r))))
        results.append(
            {
                "image_id": image_id,
                "category_id": 1,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "bbox": mask_utils.toBbox(rle).tolist(),
                "score": 0.9 - 0.1 * i,
            }
        )
    path.write_text(json.dumps(results))
    return path


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_load_livecell_gives_standard_coco(livecell: tuple[Path, Path]) -> None:
    root, ann_file = livecell
    data = load_livecell(ann_file, root)
    assert [a["id"] for a in data["annotations"]] == [101, 150, 205, 307, 412, 999]  # a list, in id order
    assert [img["file_name"] for img in data["images"]] == [f"A172/{FILES[11]}", f"SHSY5Y/{FILES[12]}"]
    assert data["info"]["description"] == "LIVECell fixture" and data["categories"][0]["name"] == "cell"
    # without an image root the names stay as stored; a list of annotations reads the same
    bare = load_livecell(ann_file)
    assert [img["file_name"] for img in bare["images"]] == list(FILES.values())
    as_list = livecell_json()
    as_list["annotations"] = sorted(as_list["annotations"].values(), key=lambda a: a["id"])
    list_file = ann_file.with_name("list.json")
    list_file.write_text(json.dumps(as_list))
    assert load_livecell(list_file)["annotations"] == bare["annotations"]


def test_missing_bbox_area_iscrowd_and_id_are_filled(tmp_path: Path) -> None:
    data = livecell_json()
    for ann in data["annotations"].values():
        for key in ("bbox", "area", "iscrowd", "id"):
            del ann[key]
    path = tmp_path / "sparse.json"
    path.write_text(json.dumps(data))
    full = load_livecell(path)
    ref = sorted(livecell_json()["annotations"].values(), key=lambda a: a["id"])
    for got, want in zip(full["annotations"], ref):
        assert got["id"] == want["id"] and got["iscrowd"] == 0
        assert got["bbox"] == pytest.approx(want["bbox"])
        assert got["area"] == want["area"]  # the rasterised polygon's pixel count


def test_malformed_annotations_are_one_line_errors(tmp_path: Path) -> None:
    data = livecell_json()
    data["annotations"]["101"]["id"] = 7
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptAnnotation, match="annotation 101: is stored under key '101' but has id 7"):
        load_livecell(path)
    data["annotations"] = "nope"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptAnnotation, match="'annotations' must be a list or an object"):
        load_livecell(path)
    data = livecell_json()
    data["annotations"]["101"]["image_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptAnnotation, match="image_id 99 is not in images"):  # load_coco's checks apply
        load_livecell(path)


def test_dataset_reads_images_and_masks_and_scores_perfectly(
    livecell: tuple[Path, Path], tmp_path: Path
) -> None:
    root, ann_file = livecell
    ds = livecell_dataset(root, ann_file, tmp_path / "prepared.json", with_masks=True)
    assert len(ds) == 2 and ds.num_classes == 2
    image, target = ds[0]
    assert tuple(image.shape) == (1, H, W)
    assert target["masks"].shape == (3, H, W) and target["labels"].tolist() == [1, 1, 1]
    # annotation order within the image is id order: 101 (medium), 205 (small), 307 (large)
    np.testing.assert_array_equal(target["masks"][1].numpy(), raster(octagon(60, 50, 6)))
    assert json.loads((tmp_path / "prepared.json").read_text())["annotations"][0]["id"] == 101
    # LIVECell protocol on the truth itself: every area range present, every AP 1
    ev = CocoEvaluator(
        iou_types=("segm",),
        max_dets=(100, 500, 2000),
        area_ranges={"small": (0, 18**2), "medium": (18**2, 31**2), "large": (31**2, 1e10)},
        class_agnostic=True,
        segm_det_area="mask",
    )
    for i in range(len(ds)):
        _, t = ds[i]
        ev.process_image(t, {**t, "scores": np.ones(len(t["boxes"]), np.float32)})
    out = ev.compute()
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR2000"):
        assert out[f"coco/segm_{key}"] == pytest.approx(1.0, abs=1e-12), key


def test_prepared_json_works_with_plain_coco_tools(
    livecell: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    root, ann_file = livecell
    prepared = prepare_livecell(ann_file, tmp_path / "coco.json", root)
    pred = results_json(tmp_path / "pred.json")
    code, out, _ = cli(["eval", "coco-segm", "--gt", str(prepared), "--pred", str(pred)], capsys)
    assert code == 0 and json.loads(out)["coco/segm_AP"] == pytest.approx(1.0, abs=1e-12)


def test_cli_livecell_preset(livecell: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, ann_file = livecell
    # one of the six cells (the large one of image 12) has no prediction: precision 1 up to recall 5/6,
    # i.e. 84 of the 101 recall points, at every IoU; the large range holds 1 of its 2 cells (51 points)
    pred = results_json(tmp_path / "pred.json", drop=5)
    code, out, err = cli(
        ["eval", "coco-segm", "--livecell", "--gt", str(ann_file), "--pred", str(pred)], capsys
    )
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["coco/segm_AP"] == pytest.approx(84 / 101, abs=1e-12)
    assert metrics["coco/segm_APs"] == pytest.approx(1.0) and metrics["coco/segm_APm"] == pytest.approx(1.0)
    assert metrics["coco/segm_APl"] == pytest.approx(51 / 101, abs=1e-12)
    assert {"coco/segm_AR100", "coco/segm_AR500", "coco/segm_AR2000"} <= set(metrics)
    assert metrics["coco/segm_AR2000"] == pytest.approx(5 / 6)
    # explicit maxDets still win; without --livecell the dict-keyed annotations are refused in one line
    code, out, _ = cli(
        [
            "eval",
            "coco-segm",
            "--livecell",
            "--max-dets",
            "1",
            "2",
            "3",
            "--gt",
            str(ann_file),
            "--pred",
            str(pred),
        ],
        capsys,
    )
    assert code == 0 and "coco/segm_AR3" in json.loads(out)
    code, _, err = cli(["eval", "coco-segm", "--gt", str(ann_file), "--pred", str(pred)], capsys)
    assert code == 2 and "'annotations' must be a list" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(
        ["eval", "enumeration", "--livecell", "--gt", str(ann_file), "--pred", str(pred)], capsys
    )
    assert code == 2 and "--livecell" in err


def test_cli_livecell_pools_classes(livecell: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """A second category: per-class scoring misses the cells predicted as the other class, LIVECell's does not."""
    _, ann_file = livecell
    data = json.loads(ann_file.read_text())
    data["categories"].append({"supercategory": "cell", "id": 2, "name": "dead"})
    two = copy.deepcopy(data)
    two["annotations"]["205"]["category_id"] = 2
    ann_file.write_text(json.dumps(two))
    pred = results_json(tmp_path / "pred.json")  # everything predicted as class 1
    code, out, _ = cli(
        ["eval", "coco-segm", "--livecell", "--gt", str(ann_file), "--pred", str(pred)], capsys
    )
    assert code == 0 and json.loads(out)["coco/segm_AP"] == pytest.approx(1.0, abs=1e-12)
    # per class (the plain command on the standard json): class 2's one cell is never found -> its AP is 0
    prepared = prepare_livecell(ann_file, tmp_path / "coco.json")
    code, out, _ = cli(["eval", "coco-segm", "--gt", str(prepared), "--pred", str(pred)], capsys)
    assert code == 0 and json.loads(out)["coco/segm_AP"] < 0.5
