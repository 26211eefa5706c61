"""LIVECell (Edlund et al. 2021) annotations as cytobench's COCO ground truth.

LIVECell ships COCO json (``livecell_coco_{train,val,test}.json``, the single-cell-type and the
dataset-size splits) over 704 x 520 single-channel phase-contrast ``.tif`` images, with polygon
outlines and one category ``cell``. It is COCO with two departures that stop standard loaders:

* in the released files ``annotations`` is an object keyed by the annotation id (``{"1234": {...}}``),
  not a list (some re-exports do use a list: both are read);
* the images lie in one folder per cell type (``livecell_train_val_images/A172/A172_Phase_...tif``)
  while ``file_name`` is the bare name.

:func:`load_livecell` reads such a file into a standard COCO dict (annotations as a list in id order,
missing ``iscrowd`` / ``area`` / ``bbox`` filled from the polygons, ``file_name`` made relative to an
image root when the image lies in its cell-type folder) and validates it with the checks of
:func:`~cytobench.io.coco.load_coco`. :func:`prepare_livecell` writes that dict to a json any cytobench
tool reads (``data=coco``, ``cytobench eval``, :class:`~cytobench.data.coco_dataset.CocoDetectionDataset`);
:func:`livecell_dataset` does both and returns the data set. ``cytobench eval coco-segm --livecell``
reads LIVECell json directly and scores it under LIVECell's protocol
(:data:`~cytobench.evaluation.coco.LIVECELL_MAX_DETS`, :data:`~cytobench.evaluation.coco.LIVECELL_AREA_RANGES`,
categories pooled).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cytobench.errors import BadInputError, CorruptAnnotation
from cytobench.io.coco import BOX_TOLERANCE, check_coco, save_coco

__all__ = ["LIVECELL_SIZE", "livecell_dataset", "load_livecell", "normalize_livecell", "prepare_livecell"]

#: (width, height) of LIVECell's images.
LIVECELL_SIZE = (704, 520)


def _polygon_bbox(polygons: list[list[float]]) -> list[float]:
    """[x, y, w, h] of the points of all polygons."""
    xs = [v for poly in polygons for v in poly[0::2]]
    ys = [v for poly in polygons for v in poly[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _polygon_area(polygons: list[list[float]], height: int, width: int) -> float:
    """Pixel area of the rasterised polygons (pycocotools, as the COCO libraries measure masks)."""
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))))


def _annotation_list(path: str | Path, annotations: Any) -> list[dict[str, Any]]:
    """LIVECell's ``{"<id>": annotation}`` object (or a plain list) as a list in id order."""
    if isinstance(annotations, list):
        return annotations
    if not isinstance(annotations, Mapping):
        raise CorruptAnnotation(
            path, f"'annotations' must be a list or an object keyed by id, got {type(annotations).__name__}"
        )
    out = []
    for key, ann in annotations.items():
        if not isinstance(ann, dict):
            raise CorruptAnnotation(path, "is not an object", f"annotation {key}")
        if "id" not in ann:
            try:
                ann["id"] = int(key)
            except ValueError:
                raise CorruptAnnotation(
                    path, "has no 'id' and its key is not an integer", f"annotation {key}"
                ) from None
        elif str(ann["id"]) != str(key):
            raise CorruptAnnotation(
                path, f"is stored under key {key!r} but has id {ann['id']!r}", f"annotation {key}"
            )
        out.append(ann)
    return sorted(out, key=lambda a: (not isinstance(a["id"], int), a["id"]))


def _locate(image_root: Path, file_name: str) -> str:
    """``file_name`` relative to ``image_root``: as given if it is there, else in its cell-type folder."""
    if (image_root / file_name).is_file():
        return file_name
    cell_type = Path(file_name).name.split("_")[0]
    for folder in (cell_type, cell_type.upper(), cell_type.lower()):
        if (image_root / folder / file_name).is_file():
            return f"{folder}/{file_name}"
    return file_name  # missing: the data set names the file when it reads it


def normalize_livecell(
    data: Any, path: str | Path = "LIVECell json", image_root: str | Path | None = None
) -> dict[str, Any]:
    """A parsed LIVECell json as a standard COCO dataset dict (changed in place and returned).

    Args:
        data: the parsed json (``images``, ``annotations`` as a list or an object keyed by id,
            ``categories``; ``info`` / ``licenses`` are kept as they are).
        path: the file it came from (named in errors).
        image_root: folder the images are under; when given, a ``file_name`` found only in its cell-type
            sub-folder (``A172/A172_Phase_...tif``) is rewritten to that relative path.

    Returns:
        The dict with ``annotations`` a list in id order, and every annotation with ``iscrowd`` (0 when
        missing), ``bbox`` (from its polygons when missing) and ``area`` (pixel area of its polygons when
        missing). Not yet validated: see :func:`load_livecell`.
    """
    if not isinstance(data, dict):
        raise CorruptAnnotation(path, "expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise CorruptAnnotation(path, f"missing required key '{key}'")
    data["annotations"] = _annotation_list(path, data["annotations"])
    sizes = {
        img.get("id"): (img.get("height"), img.get("width"))
        for img in data["images"]
        if isinstance(img, dict)
    }
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        polygons = ann.get("segmentation")
        if not (
            isinstance(polygons, list)
            and polygons
            and all(isinstance(p, list) and len(p) >= 6 for p in polygons)
        ):
            continue  # RLE or missing: bbox / area must be given (load_coco says so if not)
        if "bbox" not in ann:
            ann["bbox"] = _polygon_bbox(polygons)
        height, width = sizes.get(ann.get("image_id"), (None, None))
        if "area" not in ann and isinstance(height, int) and isinstance(width, int):
            ann["area"] = _polygon_area(polygons, height, width)
    if image_root is not None:
        root = Path(image_root)
        for img in data["images"]:
            if isinstance(img, dict) and isinstance(img.get("file_name"), str) and img["file_name"]:
                img["file_name"] = _locate(root, img["file_name"])
    return data


def load_livecell(
    path: str | Path, image_root: str | Path | None = None, *, tolerance: float = BOX_TOLERANCE
) -> dict[str, Any]:
    """Read and validate a LIVECell annotation json as a standard COCO dataset dict.

    Args:
        path: ``livecell_coco_test.json`` or any LIVECell-format json.
        image_root: see :func:`normalize_livecell`.
        tolerance: how far (pixels) a box may exceed its image (see :func:`~cytobench.io.coco.load_coco`).

    Raises:
        BadInputError: the file is missing or unreadable.
        CorruptAnnotation: malformed json, or a check of :func:`~cytobench.io.coco.load_coco` fails.
    """
    if not Path(path).is_file():
        raise BadInputError(
            path, "file not found" if not Path(path).is_dir() else "is a folder, not a json file"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise CorruptAnnotation(
            path, f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(path, f"cannot be read ({type(err).__name__})") from None
    return check_coco(normalize_livecell(data, path, image_root), path, tolerance=tolerance)


def prepare_livecell(path: str | Path, out_file: str | Path, image_root: str | Path | None = None) -> Path:
    """Write a LIVECell json as standard COCO json (:func:`load_livecell`) to ``out_file`` (atomically).

    The result works wherever cytobench takes COCO json: ``data=coco`` with ``ann_file`` = ``out_file``
    and ``root`` = ``image_root``, or ``cytobench eval --gt out_file``.
    """
    return save_coco(out_file, load_livecell(path, image_root))


def livecell_dataset(
    image_root: str | Path, ann_file: str | Path, out_file: str | Path | None = None, **kwargs: Any
) -> Any:
    """A :class:`~cytobench.data.coco_dataset.CocoDetectionDataset` over LIVECell images and annotations.

    Args:
        image_root: the folder of the split's images (e.g. ``images/livecell_test_images``), flat or in
            cell-type sub-folders.
        ann_file: the LIVECell json of the split.
        out_file: where the standard COCO json is written; None = a private temporary folder removed when
            the process exits (the data set reads it once, when built).
        **kwargs: passed to the data set (``with_masks=True`` for instance masks, ``transforms``, ...).
    """
    from cytobench.data.coco_dataset import CocoDetectionDataset

    if out_file is None:
        from cytobench.tool_dirs import private_temp_dir

        out_file = private_temp_dir("livecell") / f"{Path(ann_file).stem}.coco.json"
    prepared = prepare_livecell(ann_file, out_file, image_root)
    return CocoDetectionDataset(image_root, prepared, **kwargs)
