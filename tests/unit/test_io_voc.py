"""PASCAL-VOC / LabelImg xml import: round trip through export_voc, class lists, difficult objects, every
bad input naming its file, and ``cytobench import voc`` (exit 2 with one line, no silent overwrite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytobench.cli import main
from cytobench.errors import BadInputError, UnreadableImage
from cytobench.io.coco import load_coco
from cytobench.io.images import write_image
from cytobench.io.voc import export_voc, import_voc, natural_sorted, parse_class_names, read_class_names
from cytobench.simulate.chromosomes import CLASS_NAMES

GT: dict[str, Any] = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 32},
        {"id": 2, "file_name": "sub/b.png", "width": 20, "height": 20},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 23, "bbox": [1.5, 2.25, 10.1, 5.0], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 10, 19, 21], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 23, "bbox": [3.125, 4, 6, 7.5], "iscrowd": 0},
    ],
    # karyotype ids: "1" = 1, "2" = 2, "X" = 23
    "categories": [{"id": 1, "name": "1"}, {"id": 2, "name": "2"}, {"id": 23, "name": "X"}],
}

XML = """<annotation>
  <folder>imgs</folder>
  <filename>{filename}</filename>
  <path>/home/lab/imgs/{filename}</path>
  {size}
  <object>
    <name>{name}</name>
    <pose>Unspecified</pose>
    <truncated>1</truncated>
    <difficult>{difficult}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>5</ymin><xmax>{xmax}</xmax><ymax>20</ymax></bndbox>
  </object>
</annotation>
"""
SIZE = "<size><width>40</width><height>32</height><depth>3</depth></size>"


def voc_xml(**changes: Any) -> str:
    fields = {"filename": "a.png", "size": SIZE, "name": "X", "difficult": 0, "xmin": 10, "xmax": 30}
    return XML.format(**{**fields, **changes})


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    write_image(folder / "a.png", np.zeros((32, 40, 3), np.uint8))
    write_image(folder / "sub" / "b.png", np.zeros((20, 20), np.uint8))
    return folder


def boxes_by_name(data: dict[str, Any]) -> dict[str, list[tuple[str, list[float], int]]]:
    """``{file_name: sorted [(category name, bbox, iscrowd)]}``."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {img["id"]: img["file_name"] for img in data["images"]}
    out: dict[str, list[tuple[str, list[float], int]]] = {name: [] for name in files.values()}
    for ann in data["annotations"]:
        out[files[ann["image_id"]]].append((names[ann["category_id"]], ann["bbox"], ann.get("iscrowd", 0)))
    return {key: sorted(value, key=lambda t: (t[0], t[1])) for key, value in out.items()}


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_through_export_voc(tmp_path: Path, images: Path) -> None:
    written = export_voc(GT, tmp_path / "xml")
    assert written == [tmp_path / "xml" / "a.xml", tmp_path / "xml" / "sub" / "b.xml"]
    assert "<filename>b.png</filename>" in written[1].read_text()
    data = import_voc(tmp_path / "xml", images, classes=["1", "2", "X"])
    assert [(i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        ("a.png", 40, 32),
        ("sub/b.png", 20, 20),
    ]
    assert [c["name"] for c in data["categories"]] == ["1", "2", "X"]
    ours, theirs = boxes_by_name(data), boxes_by_name(GT)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert [(n, c) for n, _, c in ours[key]] == [(n, c) for n, _, c in theirs[key]]
        np.testing.assert_allclose([b for _, b, _ in ours[key]], [b for _, b, _ in theirs[key]], rtol=1e-9)
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    assert crowd["difficult"] == 1  # difficult <-> iscrowd
    out = tmp_path / "gt.json"
    out.write_text(json.dumps(data))
    assert load_coco(out)["annotations"] == data["annotations"]


def test_images_beside_the_xml_and_collected_classes(tmp_path: Path, images: Path) -> None:
    export_voc(GT, images)  # LabelImg's default: the xml beside its image
    data = import_voc(images)
    assert [img["file_name"] for img in data["images"]] == ["a.png", "sub/b.png"]
    assert [c["name"] for c in data["categories"]] == ["1", "2", "X"]
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]
    (images / "a.png").unlink()  # an image missing beside its xml: the xml's size is used
    assert import_voc(images)["images"][0]["width"] == 40


def test_export_refuses_existing_xml(tmp_path: Path) -> None:
    export_voc(GT, tmp_path / "xml")
    with pytest.raises(BadInputError, match="a.xml: exists.*--overwrite"):
        export_voc(GT, tmp_path / "xml")
    export_voc(GT, tmp_path / "xml", overwrite=True)


def test_natural_sort_and_class_lists(tmp_path: Path) -> None:
    assert natural_sorted(["X", "10", "2", "Y", "1", "chr10", "chr2"]) == [
        "1",
        "2",
        "10",
        "X",
        "Y",
        "chr2",
        "chr10",
    ]
    assert natural_sorted(list(reversed(CLASS_NAMES))) == list(CLASS_NAMES)
    assert parse_class_names("karyotype") == list(CLASS_NAMES)
    assert parse_class_names(" 1, 2 ,X") == ["1", "2", "X"]
    with pytest.raises(BadInputError, match="--classes.*'2' is given twice"):
        parse_class_names("1,2,2")
    with pytest.raises(BadInputError, match="--classes.*empty class name"):
        parse_class_names("1,,2")
    path = tmp_path / "classes.txt"
    path.write_text("1\n2\n\n X \n")
    assert read_class_names(path) == ["1", "2", "X"]
    path.write_text("\n")
    with pytest.raises(BadInputError, match="classes.txt: holds no class names"):
        read_class_names(path)


@pytest.mark.parametrize(("rule", "expected"), [("crowd", [1]), ("keep", [0]), ("skip", [])])
def test_difficult_rules(tmp_path: Path, rule: str, expected: list[int]) -> None:
    (tmp_path / "a.xml").write_text(voc_xml(difficult=1))
    data = import_voc(tmp_path, difficult=rule)  # type: ignore[arg-type]
    assert [a["iscrowd"] for a in data["annotations"]] == expected


def test_box_within_one_pixel_slack_is_kept(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(voc_xml(xmin=-1, xmax=41))
    [ann] = import_voc(tmp_path)["annotations"]
    assert ann["bbox"] == [-1, 5, 42, 15]  # kept as written; load_coco accepts the same 1 px


# ------------------------------------------------------------------------------------------ bad input
BAD_XML: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "unknown class": (voc_xml(name="Z"), {"classes": ["1", "X"]}, ("object 1", "unknown class name 'Z'")),
    "box outside": (voc_xml(xmax=41.5), {}, ("object 1", "outside the 40x32 image", "1 px")),
    "box left of image": (voc_xml(xmin=-1.5), {}, ("outside",)),
    "xmax <= xmin": (voc_xml(xmin=30, xmax=30), {}, ("object 1", "xmax 30 <= xmin 30")),
    "missing size": (voc_xml(size=""), {}, ("missing <size>",)),
    "missing width": (voc_xml(size="<size><height>32</height></size>"), {}, ("missing <size><width>",)),
    "zero size": (voc_xml(size="<size><width>0</width><height>32</height></size>"), {}, ("positive whole",)),
    "malformed": (voc_xml().replace("</annotation>", ""), {}, ("malformed xml", "line")),
    "not a number": (voc_xml(xmin="ten"), {}, ("object 1", "<xmin> is not a number: 'ten'")),
    "missing filename": (voc_xml(filename=""), {}, ("missing <filename>",)),
    "path as filename": (voc_xml(filename="../a.png"), {}, ("must be a file name",)),
    "bad difficult": (voc_xml(difficult="maybe"), {}, ("<difficult> must be 0 or 1",)),
    "not voc": ("<root><a/></root>", {}, ("expected <annotation>",)),
    "entity": (
        '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>\n'
        + voc_xml(name="&y;"),
        {},
        ("DTD or entities", "refused"),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_XML))
def test_bad_xml_names_the_file_and_fault(tmp_path: Path, case: str) -> None:
    text, kwargs, needles = BAD_XML[case]
    (tmp_path / "good.xml").write_text(voc_xml(filename="g.png"))
    (tmp_path / "bad.xml").write_text(text)
    with pytest.raises(BadInputError) as info:
        import_voc(tmp_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for needle in ("bad.xml", *needles):
        assert needle in message, message


def test_size_mismatch_missing_image_and_duplicates(tmp_path: Path, images: Path) -> None:
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "a.xml").write_text(voc_xml(size="<size><width>41</width><height>32</height></size>"))
    with pytest.raises(BadInputError, match=r"a.xml: <size> 41x32 differs from the image .*a.png \(40x32\)"):
        import_voc(xml, images)
    (xml / "a.xml").write_text(voc_xml(filename="nope.png"))
    with pytest.raises(UnreadableImage, match=r"nope.png: file not found \(the image of .*a.xml\)"):
        import_voc(xml, images)  # with --images every image must be there
    (xml / "a.xml").write_text(voc_xml())
    (xml / "a2.xml").write_text(voc_xml())
    with pytest.raises(BadInputError, match="a2.xml: image a.png is already described by .*a.xml"):
        import_voc(xml, images)
    with pytest.raises(BadInputError, match="nowhere: xml folder not found"):
        import_voc(tmp_path / "nowhere")
    with pytest.raises(BadInputError, match="no .xml files found"):
        import_voc(images)


# ------------------------------------------------------------------------------------------------ CLI
def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_import_voc_writes_valid_coco_and_refuses_overwrite(
    tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export_voc(GT, tmp_path / "xml")
    out = tmp_path / "gt.json"
    argv = ["import", "voc", "--xml", str(tmp_path / "xml"), "--images", str(images), "--out", str(out)]
    code, stdout, _ = run_cli([*argv, "--classes", "karyotype"], capsys)
    assert code == 0 and "imported 2 images, 4 objects and 24 categories" in stdout
    data = load_coco(out)
    assert [c["name"] for c in data["categories"]] == list(CLASS_NAMES)
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 23}  # "X" is 23, as in the simulator
    before = out.read_text()
    code, _, err = run_cli([*argv, "--classes", "1,2,X"], capsys)
    assert code == 2 and err.count("\n") == 1 and "gt.json" in err and "--overwrite" in err
    assert out.read_text() == before
    classes = tmp_path / "classes.txt"
    classes.write_text("X\n2\n1\n")
    code, _, _ = run_cli([*argv, "--classes-file", str(classes), "--overwrite"], capsys)
    assert code == 0 and [c["name"] for c in load_coco(out)["categories"]] == ["X", "2", "1"]


@pytest.mark.parametrize(
    ("xml", "classes", "needles"),
    [
        (voc_xml(name="Z"), ["--classes", "karyotype"], ("a.xml", "object 1", "unknown class name 'Z'")),
        (voc_xml(xmax=45), [], ("a.xml", "object 1", "outside the 40x32 image")),
    ],
    ids=["unknown-class", "box-outside"],
)
def test_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], xml: str, classes: list[str], needles: tuple[str, ...]
) -> None:
    (tmp_path / "a.xml").write_text(xml)
    out = tmp_path / "gt.json"
    code, _, err = run_cli(["import", "voc", "--xml", str(tmp_path), *classes, "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err
    assert not out.exists()
