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
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cytobench.errors import UnreadableImage
from cytobench.io.coco import load_coco
from cytobench.io.coco_convert import annotation_to_mask

__all__ = ["export_yolo", "read_yolo_labels"]

_CONTOUR_UPSAMPLE = 4


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
