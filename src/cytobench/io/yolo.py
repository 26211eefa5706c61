"""Export COCO ground truth to the YOLO (ultralytics) dataset layout.

Layout written under ``out_dir``::

    images/{split}/<file_name>    symlink to (or copy of) the source image
    labels/{split}/<stem>.txt     one line per object
    data.yaml                     path, train, val, names

Label lines (all coordinates normalised by the image width / height):

* ``task="detect"``: ``class cx cy w h``.
* ``task="segment"``: ``class x1 y1 x2 y2 ...``, one polygon per object. An object with several polygons
  keeps its largest one; an RLE mask becomes its largest external contour (OpenCV, traced on the mask
  upsampled 4x so that the polygon lies within 1/8 px of the pixel edges); an object without segmentation falls back to its box corners.

YOLO class ids are 0-based in the order of ``categories``. Crowd annotations (``iscrowd=1``) are skipped:
YOLO has no notion of them.

:func:`import_yolo` reads such labels back into a COCO dataset dict: every image under the images folder
(subfolders included) whose label file is the same relative path under the labels folder with ``.txt``
(no label file: an image without objects; a ``classes.txt`` at the top of the labels folder is LabelImg's
class list, not labels). Detect lines become ``bbox`` only; segment lines (``class x1 y1 ... xn yn``,
n >= 3) become one ``segmentation`` polygon with the polygon's extent as ``bbox`` and its area. Category
ids are the YOLO class + 1 (so the 24 karyotype names get ids 1-24 as in the metaphase simulator). Image
sizes come from the image files; pixel coordinates are rounded to 1e-9 px. A coordinate may exceed
[0, 1] by :data:`~cytobench.io.coco.BOX_TOLERANCE` (1 px) of its image; further out is an error, as are a
class id without a name, an odd number of polygon coordinates, fewer than 3 points, a non-positive box
size, a label file without an image, and anything that is not a number, each naming the file and line.
Keypoint (pose) label lines are not supported.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from cytobench.errors import BadInputError, UnreadableImage
from cytobench.io.coco import BOX_TOLERANCE, load_coco
from cytobench.io.coco_convert import annotation_to_mask

__all__ = ["export_yolo", "import_yolo", "read_yolo_labels", "read_yolo_names"]

_CONTOUR_UPSAMPLE = 4
_PIXEL_DECIMALS = 9  # import_yolo: pixel coordinates rounded to 1e-9 px


def export_yolo(
    coco_json: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    split: str = "train",
    task: Literal["detect", "segment"] = "detect",
    category_map: dict[int, int] | None = None,
    copy: bool = False,
) -> dict[int, int]:
    """Write one split of a COCO data set in YOLO format.

    Args:
        coco_json: COCO ground-truth json (validated with :func:`~cytobench.io.coco.load_coco`).
        images_dir: folder the ``file_name`` entries are relative to.
        out_dir: YOLO data set root (created; other splits already there are kept in ``data.yaml``).
        split: split name, e.g. ``"train"`` or ``"val"``.
        task: ``"detect"`` (boxes) or ``"segment"`` (polygons).
        category_map: ``{coco category_id: yolo class}``; None numbers categories 0..K-1 in file order.
        copy: copy images instead of symlinking them (symlinks fall back to copies where unsupported).

    Returns:
        The ``{coco category_id: yolo class}`` mapping used.

    Raises:
        UnreadableImage: an image listed in the json is missing.
        CorruptAnnotation: the json is invalid.
    """
    if task not in ("detect", "segment"):
        raise ValueError(f"task must be 'detect' or 'segment', not {task!r}")
    gt = load_coco(coco_json)
    mapping = category_map or {cat["id"]: i for i, cat in enumerate(gt["categories"])}
    out_dir, images_dir = Path(out_dir), Path(images_dir)
    image_root, label_root = out_dir / "images" / split, out_dir / "labels" / split
    per_image: dict[Any, list[dict[str, Any]]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0) and ann["category_id"] in mapping:
            per_image[ann["image_id"]].append(ann)
    for img in gt["images"]:
        source = images_dir / img["file_name"]
        if not source.is_file():
            raise UnreadableImage(source, f"file not found (image {img['id']} of {Path(coco_json).name})")
        rel = Path(img["file_name"])
        _place_image(source, image_root / rel, copy)
        w, h = float(img["width"]), float(img["height"])
        lines = []
        for ann in per_image[img["id"]]:
            cls = mapping[ann["category_id"]]
            if task == "detect":
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                coords = [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]
            else:
                polygon = _object_polygon(ann, int(h), int(w))
                if polygon is None:
                    continue
                coords = (polygon / np.array([w, h])).reshape(-1).tolist()
            lines.append(" ".join([str(cls)] + [f"{v:.10g}" for v in coords]))
        label_file = (label_root / rel).with_suffix(".txt")
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    names = {
        cls: next(c["name"] for c in gt["categories"] if c["id"] == cat_id) for cat_id, cls in mapping.items()
    }
    _write_data_yaml(out_dir, names)
    return dict(mapping)


def read_yolo_labels(path: str | Path, width: float, height: float) -> list[tuple[int, np.ndarray]]:
    """Parse a YOLO label file back to absolute pixels.

    Args:
        path: a ``labels/{split}/*.txt`` file.
        width: image width W in pixels.
        height: image height H in pixels.

    Returns:
        One ``(class, coords)`` per line: detect lines give ``(4,)`` ``[cx, cy, w, h]``, segment lines give
        ``(P, 2)`` polygon vertices ``(x, y)``; all in absolute pixels.
    """
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts:
            continue
        values = np.array([float(v) for v in parts[1:]], dtype=np.float64)
        scale = np.tile([width, height], len(values) // 2)
        values = values * scale
        out.append((int(parts[0]), values if len(values) == 4 else values.reshape(-1, 2)))
    return out


def read_yolo_names(path: str | Path) -> dict[int, str]:
    """The class names of an ultralytics ``data.yaml``: ``names`` as a list or as ``{class: name}``.

    Raises:
        BadInputError: the file is missing, not YAML, has no usable ``names``, a name twice, or an ``nc``
            that differs from the number of names.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BadInputError(
            path, "data.yaml file not found" if not path.is_dir() else "is a folder, not a yaml file"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise BadInputError(path, f"malformed YAML{where}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(path, f"cannot be read ({type(err).__name__})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        items = list(enumerate(names))
    elif isinstance(names, dict):
        items = list(names.items())
    else:
        raise BadInputError(path, "needs 'names': a list of class names or a mapping {class id: name}")
    if not items:
        raise BadInputError(path, "'names' is empty")
    out: dict[int, str] = {}
    for key, name in items:
        if not isinstance(key, int) or isinstance(key, bool) or key < 0:
            raise BadInputError(path, f"'names' keys must be class ids >= 0, got {key!r}")
        if name is None or isinstance(name, dict | list) or not str(name).strip():
            raise BadInputError(path, f"class {key} has no name ({name!r})")
        out[key] = str(name).strip()
    if len(set(out.values())) != len(out):
        twice = next(n for n in out.values() if list(out.values()).count(n) > 1)
        raise BadInputError(path, f"class name {twice!r} is given twice")
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise BadInputError(path, f"nc is {nc!r} but 'names' has {len(out)} names")
    return dict(sorted(out.items()))


def import_yolo(
    labels_dir: str | Path, images_dir: str | Path, names: Sequence[str] | Mapping[int, str]
) -> dict[str, Any]:
    """Read YOLO (ultralytics) detect / segment labels into one COCO dataset dict (rules: module docstring).

    Args:
        labels_dir: folder of ``*.txt`` label files (mirroring ``images_dir``, e.g. ``labels/train``).
        images_dir: folder of the images (e.g. ``images/train``), searched recursively.
        names: class names, ``names[k]`` for YOLO class ``k`` (see :func:`read_yolo_names` for data.yaml).

    Returns:
        ``{"images", "annotations", "categories"}`` with category ids ``k + 1``; ``file_name`` relative to
        ``images_dir``.

    Raises:
        BadInputError: a missing folder, no images, a bad label line (file and line named), a label file
            without an image.
        UnreadableImage: an image that cannot be decoded.
    """
    from cytobench.io.images import IMAGE_SUFFIXES, image_file_size

    class_names = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
    labels_dir, images_dir = Path(labels_dir), Path(images_dir)
    for folder, what in ((labels_dir, "labels"), (images_dir, "images")):
        if not folder.is_dir():
            raise BadInputError(folder, f"{what} folder not found")
    images = _files_under(images_dir, lambda p: p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BadInputError(images_dir, "no images found (png, jpg, bmp, tif, czi)")
    label_of: dict[Path, Path] = {}
    for image in images:
        rel = image.relative_to(images_dir).with_suffix(".txt")
        if rel in label_of:
            raise BadInputError(image, f"shares the label file {rel} with {label_of[rel]}")
        label_of[rel] = image
    for label in _files_under(labels_dir, lambda p: p.suffix == ".txt"):
        rel = label.relative_to(labels_dir)
        if rel not in label_of and rel != Path("classes.txt"):  # LabelImg's class list sits beside the labels
            raise BadInputError(label, f"has no image {rel.with_suffix('.*')} under {images_dir}")
    out_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (rel, image) in enumerate(label_of.items(), start=1):
        width, height = image_file_size(image)
        out_images.append(
            {
                "id": image_id,
                "file_name": PurePosixPath(*image.relative_to(images_dir).parts).as_posix(),
                "width": width,
                "height": height,
            }
        )
        label = labels_dir / rel
        if not label.is_file():
            continue
        for cls, ann in _read_label_file(label, width, height, class_names):
            ids = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1}
            annotations.append({**ids, **ann, "iscrowd": 0})
    categories = [{"id": k + 1, "name": name, "supercategory": ""} for k, name in sorted(class_names.items())]
    return {"images": out_images, "annotations": annotations, "categories": categories}


def _files_under(folder: Path, keep: Any) -> list[Path]:
    """Files under ``folder`` (recursively, sorted) that ``keep`` accepts; hidden files and folders skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if keep(p) and p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _read_label_file(
    path: Path, width: int, height: int, names: Mapping[int, str]
) -> list[tuple[int, dict[str, Any]]]:
    """``(class, partial COCO annotation)`` per line of one label file (checked as the module says)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(path, f"cannot be read as text ({type(err).__name__})") from None
    out = []
    tol_x, tol_y = BOX_TOLERANCE / width, BOX_TOLERANCE / height
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        item = f"line {n}"
        values = []
        for token in parts:
            try:
                values.append(float(token))
            except ValueError:
                raise BadInputError(path, f"not a number: {token!r}", item) from None
        if not all(math.isfinite(v) for v in values):
            raise BadInputError(path, f"non-finite value in {line.strip()!r}", item)
        if not values[0].is_integer() or values[0] < 0:
            raise BadInputError(path, f"class id must be a whole number >= 0, got {parts[0]!r}", item)
        cls = int(values[0])
        if cls not in names:
            known = f"0..{len(names) - 1}" if sorted(names) == list(range(len(names))) else str(sorted(names))
            raise BadInputError(
                path, f"class id {cls} is out of range: {len(names)} class names ({known})", item
            )
        coords = values[1:]
        if len(coords) == 4:
            cx, cy, w, h = coords
            if w <= 0 or h <= 0:
                raise BadInputError(path, f"box width and height must be > 0, got w={w:g} h={h:g}", item)
            xs, ys = [cx - w / 2, cx + w / 2], [cy - h / 2, cy + h / 2]
            kind = f"box (cx={cx:g} cy={cy:g} w={w:g} h={h:g})"
        elif len(coords) % 2:
            raise BadInputError(path, f"odd number of polygon coordinates ({len(coords)})", item)
        elif len(coords) < 6:
            raise BadInputError(
                path,
                f"{len(coords)} coordinates: neither a box (4) nor a polygon of >= 3 points (>= 6)",
                item,
            )
        else:
            xs, ys = coords[0::2], coords[1::2]
            kind = f"polygon of {len(xs)} points"
        for axis, vals, tol in (("x", xs, tol_x), ("y", ys, tol_y)):
            low, high = min(vals), max(vals)
            if low < -tol or high > 1 + tol:
                bad = low if low < -tol else high
                raise BadInputError(
                    path,
                    f"{kind} reaches {axis} = {bad:g}, outside [0, 1] by more than {BOX_TOLERANCE:g} px of the "
                    f"{width}x{height} image",
                    item,
                )
        # pixels rounded to 1e-9 px: drops float noise (4.000000000000001), far below the files' precision
        px = np.round(np.asarray(xs, dtype=np.float64) * width, _PIXEL_DECIMALS)
        py = np.round(np.asarray(ys, dtype=np.float64) * height, _PIXEL_DECIMALS)
        x0, y0 = float(px.min()), float(py.min())
        bw = round(float(px.max()) - x0, _PIXEL_DECIMALS)
        bh = round(float(py.max()) - y0, _PIXEL_DECIMALS)
        if bw <= 0 or bh <= 0:
            raise BadInputError(path, f"{kind} has a zero width or height", item)
        ann: dict[str, Any] = {"bbox": [x0, y0, bw, bh]}
        if len(coords) == 4:
            ann["area"] = round(bw * bh, _PIXEL_DECIMALS)
        else:
            polygon = np.stack([px, py], axis=1)
            ann["segmentation"] = [polygon.reshape(-1).tolist()]
            ann["area"] = round(_polygon_area(polygon), _PIXEL_DECIMALS)
        out.append((cls, ann))
    return out


def _place_image(source: Path, dest: Path, copy: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if not copy:
        try:
            os.symlink(source.resolve(), dest)
            return
        except OSError:
            pass
    shutil.copy2(source, dest)


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _object_polygon(ann: dict[str, Any], height: int, width: int) -> np.ndarray | None:
    """``(P, 2)`` absolute polygon of one object (see the module rule), or None if degenerate."""
    segm = ann.get("segmentation")
    candidates: list[np.ndarray] = []
    if isinstance(segm, list) and segm:
        candidates = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm if len(p) >= 6]
    elif isinstance(segm, dict):
        candidates = _mask_contours(annotation_to_mask(ann, height, width))
    else:
        x, y, w, h = (float(v) for v in ann["bbox"])
        candidates = [np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])]
    if not candidates:
        return None
    return max(candidates, key=_polygon_area)


def _mask_contours(mask: np.ndarray, upsample: int = _CONTOUR_UPSAMPLE) -> list[np.ndarray]:
    """External contours of an ``(H, W)`` mask as ``(P, 2)`` absolute polygons hugging the pixel edges.

    The mask's crop is upsampled ``upsample`` times (nearest) before tracing, so the traced sub-pixel
    centres lie ``0.5 / upsample`` px inside the true pixel edges instead of half a pixel.
    """
    import cv2

    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return []
    x0, y0 = int(xs.min()), int(ys.min())
    crop = mask[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1].astype(np.uint8)
    big = np.pad(np.kron(crop, np.ones((upsample, upsample), np.uint8)), 1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    offset = np.array([x0, y0], dtype=np.float64)
    return [(c.reshape(-1, 2) - 1 + 0.5) / upsample + offset for c in contours if len(c) >= 3]


def _write_data_yaml(out_dir: Path, names: dict[int, str]) -> None:
    """Write ``data.yaml`` listing every split present under ``images/`` (JSON-quoted strings are YAML)."""
    splits = sorted(p.name for p in (out_dir / "images").iterdir() if p.is_dir())
    train = "train" if "train" in splits else splits[0]
    val = "val" if "val" in splits else train
    lines = [f"path: {json.dumps(str(out_dir.resolve()))}", f"train: images/{train}", f"val: images/{val}"]
    if "test" in splits:
        lines.append("test: images/test")
    lines.append("names:")
    lines += [f"  {cls}: {json.dumps(name)}" for cls, name in sorted(names.items())]
    tmp = out_dir / "data.yaml.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "data.yaml")
