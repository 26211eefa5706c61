"""PASCAL-VOC / LabelImg xml <-> COCO ground truth (boxes only).

One xml file per image, as LabelImg writes them::

    <annotation>
      <filename>cell_01.png</filename>
      <size><width>1600</width><height>1200</height><depth>3</depth></size>
      <object>
        <name>X</name><difficult>0</difficult><truncated>0</truncated>
        <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>54</xmax><ymax>90</ymax></bndbox>
      </object>
    </annotation>

Rules of :func:`import_voc`:

* **Files**: every ``*.xml`` under the xml folder (subfolders included, sorted by path; files and folders
  whose names start with ``.`` skipped). An xml file at ``sub/a.xml`` whose ``<filename>`` is ``a.png`` describes the image
  ``sub/a.png`` under the images folder (``images_dir``, or the xml folder itself when it is None: LabelImg
  saves the xml beside the image); that relative path is the COCO ``file_name``. ``<folder>``, ``<path>``,
  ``<depth>``, ``<pose>``, ``<truncated>`` and ``<occluded>`` are ignored.
* **Sizes** come from ``<size>`` (``<width>``, ``<height>``: positive whole numbers; missing is an error).
  When the image file is there its real size must match; with ``images_dir`` given every image must be
  there, without it an image missing beside its xml is allowed (the xml's size is used).
* **Boxes** are taken as pixel-edge coordinates, COCO's convention: ``bbox = [xmin, ymin, xmax - xmin,
  ymax - ymin]`` with no 1-px shift (LabelImg stores the corners of the rectangle drawn on the image; the
  original VOC sets' 1-based integer boxes come out at most 1 px off). A box may exceed its image by
  :data:`~cytobench.io.coco.BOX_TOLERANCE` (1 px, rounding in labelling tools) and is kept as written
  (the data pipeline clips boxes to the image); further out, or ``xmax <= xmin`` / ``ymax <= ymin``, is
  an error.
* **difficult**: ``difficult="crowd"`` (default) makes ``<difficult>1</difficult>`` objects COCO
  ``iscrowd=1``: like VOC's difficult objects, they are neither objects to find nor false positives when
  detected (COCO and cytobench evaluators ignore crowd regions; training and the YOLO export skip them).
  ``"keep"`` imports them as ordinary objects, ``"skip"`` drops them. Such annotations also carry
  ``"difficult": 1``.
* **Categories**: an ordered list of names gives ids 1..K in that order, and a name outside it is an error;
  without one, the names found in the files are collected and sorted naturally (digit runs by value:
  ``"1" < "2" < "10" < "X" < "Y"``, so the 24 karyotype classes keep their karyotype order).
* Image ids are 1..N in file order, annotation ids 1..M.

Every fault raises a one-line :class:`~cytobench.errors.BadInputError` naming the xml file and the fault.
The parser is the standard library's expat; a file with a DTD or entity declaration (``<!DOCTYPE``,
``<!ENTITY``) is refused, so no entity expansion or external resource is ever involved.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from xml.parsers import expat

from cytobench.errors import BadInputError, UnreadableImage
from cytobench.io.coco import BOX_TOLERANCE
from cytobench.io.images import image_file_size

__all__ = [
    "KARYOTYPE_SHORTHAND",
    "categories_of",
    "export_voc",
    "import_voc",
    "natural_sorted",
    "parse_class_names",
    "parse_xml_safely",
    "read_class_names",
]

DifficultRule = Literal["crowd", "keep", "skip"]
#: ``--classes karyotype``: the 24 chromosome classes "1".."22", "X", "Y" of :mod:`cytobench.simulate.chromosomes`
KARYOTYPE_SHORTHAND = "karyotype"


# ------------------------------------------------------------------------------------------ class names
def parse_class_names(text: str, source: str = "--classes") -> list[str]:
    """Class names from ``"1,2,3,X"`` (comma-separated, surrounding spaces dropped) or ``"karyotype"``.

    Raises:
        BadInputError: an empty name or a name given twice (``source`` names the flag).
    """
    if text.strip() == KARYOTYPE_SHORTHAND:
        from cytobench.simulate.chromosomes import CLASS_NAMES

        return list(CLASS_NAMES)
    return _checked_names([part.strip() for part in text.split(",")], source)


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (LabelImg's ``classes.txt`` / ``predefined_classes.txt``).

    Blank lines are skipped and surrounding spaces dropped.

    Raises:
        BadInputError: the file is missing or unreadable, holds no name, or a name twice.
    """
    text = _read_text(path, "class names")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise BadInputError(path, "holds no class names (one per line expected)")
    return _checked_names(names, str(path))


def _checked_names(names: list[str], source: str) -> list[str]:
    if any(not name for name in names):
        raise BadInputError(source, f"empty class name in {','.join(names)!r}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadInputError(source, f"class name {name!r} is given twice")
        seen.add(name)
    return names


def natural_sorted(names: Sequence[str]) -> list[str]:
    """``names`` sorted with digit runs compared by value (``"2" < "10"``, ``"chr2" < "chr10"``)."""

    def key(name: str) -> list[tuple[int, int | str]]:
        return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]

    return sorted(names, key=key)


def categories_of(names: Sequence[str]) -> list[dict[str, Any]]:
    """COCO categories with ids 1..K in the order of ``names``."""
    return [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(names)]


# ------------------------------------------------------------------------------------------ image size
# ---------------------------------------------------------------------------------------------- import
def import_voc(
    xml_dir: str | Path,
    images_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
    difficult: DifficultRule = "crowd",
) -> dict[str, Any]:
    """Read a folder of PASCAL-VOC / LabelImg xml files into one COCO dataset dict (rules: module docstring).

    Args:
        xml_dir: folder of ``*.xml`` files (searched recursively).
        images_dir: folder the images are in (mirroring the xml subfolders); None: beside the xml files.
        classes: category names in id order (ids 1..K); None collects the names found, naturally sorted.
        difficult: what ``<difficult>1</difficult>`` objects become: ``"crowd"``, ``"keep"`` or ``"skip"``.

    Returns:
        ``{"images", "annotations", "categories"}``; boxes only (no segmentation).

    Raises:
        BadInputError: a missing folder, no xml files, malformed xml, a missing field, an unknown class
            name, a box outside its image or empty, an xml size that differs from the image's.
        UnreadableImage: an image that is missing (with ``images_dir``) or cannot be decoded.
    """
    if difficult not in ("crowd", "keep", "skip"):
        raise ValueError(f"difficult must be 'crowd', 'keep' or 'skip', not {difficult!r}")
    xml_dir = Path(xml_dir)
    if not xml_dir.is_dir():
        raise BadInputError(xml_dir, "xml folder not found")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise BadInputError(images_dir, "images folder not found")
    files = sorted(
        p
        for p in xml_dir.rglob("*.xml")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(xml_dir).parts)
    )
    if not files:
        raise BadInputError(xml_dir, "no .xml files found")
    if classes is not None:
        classes = _checked_names(list(classes), "classes")
    parsed = [_read_voc_file(path, xml_dir, images_dir) for path in files]

    names = (
        list(classes)
        if classes is not None
        else natural_sorted({o["name"] for p in parsed for o in p["objects"]})
    )
    category_ids = {name: i + 1 for i, name in enumerate(names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    owner: dict[str, Path] = {}
    for image_id, entry in enumerate(parsed, start=1):
        path, file_name = entry["path"], entry["file_name"]
        if file_name in owner:
            raise BadInputError(path, f"image {file_name} is already described by {owner[file_name]}")
        owner[file_name] = path
        images.append(
            {"id": image_id, "file_name": file_name, "width": entry["width"], "height": entry["height"]}
        )
        for obj in entry["objects"]:
            if obj["name"] not in category_ids:
                raise BadInputError(
                    path,
                    f"unknown class name {obj['name']!r} (not among the {len(names)} given)",
                    obj["item"],
                )
            if obj["difficult"] and difficult == "skip":
                continue
            x0, y0, x1, y1 = obj["box"]
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[obj["name"]],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": int(obj["difficult"] and difficult == "crowd"),
            }
            if obj["difficult"]:
                ann["difficult"] = 1
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories_of(names)}


def _read_voc_file(path: Path, xml_dir: Path, images_dir: str | Path | None) -> dict[str, Any]:
    """One xml file: ``{path, file_name, width, height, objects: [{name, box, difficult, item}]}``."""
    root = parse_xml_safely(path)
    if root.tag != "annotation":
        raise BadInputError(path, f"root element is <{root.tag}>, expected <annotation> (PASCAL-VOC)")
    filename = _text(root, "filename")
    if not filename:
        raise BadInputError(path, "missing <filename>")
    name = PurePosixPath(filename.replace("\\", "/"))
    if name.is_absolute() or len(name.parts) != 1 or name.name in (".", ".."):
        raise BadInputError(path, f"<filename> must be a file name, got {filename!r}")
    rel = path.parent.relative_to(xml_dir) / name.name
    file_name = PurePosixPath(*rel.parts).as_posix()
    size = root.find("size")
    if size is None:
        raise BadInputError(path, "missing <size> (<width>, <height>)")
    width, height = (_size_value(path, size, key) for key in ("width", "height"))
    image = Path(images_dir if images_dir is not None else xml_dir) / rel
    if image.is_file() or images_dir is not None:
        if not image.is_file():
            raise UnreadableImage(image, f"file not found (the image of {path})")
        real = image_file_size(image)
        if real != (width, height):
            raise BadInputError(
                path, f"<size> {width}x{height} differs from the image {image} ({real[0]}x{real[1]})"
            )
    objects = []
    for k, obj in enumerate(root.iter("object")):
        item = f"object {k + 1}"
        label = _text(obj, "name")
        if not label:
            raise BadInputError(path, "missing <name>", item)
        box = obj.find("bndbox")
        if box is None:
            raise BadInputError(path, f"class {label!r}: missing <bndbox>", item)
        x0, y0, x1, y1 = (_coordinate(path, item, box, key) for key in ("xmin", "ymin", "xmax", "ymax"))
        _check_box(path, f"{item} ({label!r})", (x0, y0, x1, y1), width, height)
        objects.append(
            {"name": label, "box": (x0, y0, x1, y1), "difficult": _difficult(path, item, obj), "item": item}
        )
    return {"path": path, "file_name": file_name, "width": width, "height": height, "objects": objects}


def _check_box(path: Path, item: str, box: tuple[float, ...], width: int, height: int) -> None:
    x0, y0, x1, y1 = box
    if x1 <= x0:
        raise BadInputError(path, f"xmax {x1:g} <= xmin {x0:g}", item)
    if y1 <= y0:
        raise BadInputError(path, f"ymax {y1:g} <= ymin {y0:g}", item)
    tol = BOX_TOLERANCE
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise BadInputError(
            path,
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image "
            f"(by more than {tol:g} px)",
            item,
        )


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _size_value(path: Path, size: ET.Element, key: str) -> int:
    text = _text(size, key)
    if not text:
        raise BadInputError(path, f"missing <size><{key}>")
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(path, f"<size><{key}> is not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 1 and value.is_integer()):
        raise BadInputError(path, f"<size><{key}> must be a positive whole number of pixels, got {text!r}")
    return int(value)


def _coordinate(path: Path, item: str, box: ET.Element, key: str) -> float:
    text = _text(box, key)
    if not text:
        raise BadInputError(path, f"missing <bndbox><{key}>", item)
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(path, f"<{key}> is not a number: {text!r}", item) from None
    if not math.isfinite(value):
        raise BadInputError(path, f"<{key}> is not finite: {text!r}", item)
    return int(value) if value.is_integer() else value


def _difficult(path: Path, item: str, obj: ET.Element) -> bool:
    text = _text(obj, "difficult")
    if text in (None, "", "0", "false", "False"):
        return False
    if text in ("1", "true", "True"):
        return True
    raise BadInputError(path, f"<difficult> must be 0 or 1, got {text!r}", item)


class _Refused(Exception):
    """Raised from an expat handler to stop at a DTD or entity declaration."""


def parse_xml_safely(path: str | Path) -> ET.Element:
    """Parse a local xml file with expat into an ElementTree element, refusing DTDs and entity declarations.

    Raises:
        BadInputError: the file is missing or unreadable, malformed (line and column named), or declares a
            DTD / entities.
    """
    path = Path(path)
    data = _read_bytes(path, "xml")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True

    def refuse(*_: Any) -> None:
        raise _Refused

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except _Refused:
        raise BadInputError(
            path, "declares a DTD or entities (<!DOCTYPE / <!ENTITY), which are refused"
        ) from None
    except expat.ExpatError as err:
        raise BadInputError(
            path,
            f"malformed xml at line {err.lineno}, column {err.offset + 1}: {expat.ErrorString(err.code)}",
        ) from None
    return builder.close()


def _read_bytes(path: Path, what: str) -> bytes:
    if path.is_dir():
        raise BadInputError(path, f"is a folder, not a {what} file")
    if not path.is_file():
        raise BadInputError(path, f"{what} file not found")
    try:
        return path.read_bytes()
    except OSError as err:
        raise BadInputError(path, f"cannot be read ({err.strerror or type(err).__name__})") from None


def _read_text(path: str | Path, what: str) -> str:
    data = _read_bytes(Path(path), what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadInputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


# ---------------------------------------------------------------------------------------------- export
def export_voc(
    gt: Mapping[str, Any] | str | Path, out_dir: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Write one LabelImg-style xml file per image of a COCO data set (boxes only).

    The xml of image ``sub/a.png`` is ``out_dir/sub/a.xml`` with ``<filename>a.png</filename>``, so that
    :func:`import_voc` of ``out_dir`` (with the images folder) gives the same images and boxes back.
    Category names become ``<name>``; crowd annotations are written as ``<difficult>1</difficult>``.
    Coordinates are written exactly (whole numbers without a decimal point). ``<depth>`` is not written
    (it is not in COCO).

    Args:
        gt: a COCO dataset dict, or a COCO json (validated with :func:`~cytobench.io.coco.load_coco`).
        out_dir: folder to write into (created).
        overwrite: replace xml files already there (else refused).

    Returns:
        The files written, in image order.

    Raises:
        BadInputError: an xml file exists and ``overwrite`` is False; the json is invalid.
    """
    from cytobench.io.coco import load_coco
    from cytobench.io.files import atomic_file, refuse_existing

    data = load_coco(gt) if isinstance(gt, str | Path) else gt
    out_dir = Path(out_dir)
    targets = [out_dir / Path(img["file_name"]).with_suffix(".xml") for img in data["images"]]
    refuse_existing(targets, overwrite)
    names = {cat["id"]: str(cat["name"]) for cat in data["categories"]}
    per_image: dict[Any, list[Mapping[str, Any]]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    for img, target in zip(data["images"], targets):
        root = ET.Element("annotation")
        ET.SubElement(root, "folder").text = target.parent.name
        ET.SubElement(root, "filename").text = Path(img["file_name"]).name
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = _number(img["width"])
        ET.SubElement(size, "height").text = _number(img["height"])
        ET.SubElement(root, "segmented").text = "0"
        for ann in per_image[img["id"]]:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[ann["category_id"]]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = str(int(bool(ann.get("iscrowd", 0))))
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = ET.SubElement(obj, "bndbox")
            for key, value in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
                ET.SubElement(box, key).text = _number(value)
        ET.indent(root)
        with atomic_file(target) as handle:
            handle.write(ET.tostring(root, encoding="unicode") + "\n")
    return targets


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)
