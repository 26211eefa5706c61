"""Cells to copy: whole cells cut from the phase plane of a brightfield data set (thesis Sec. 4.4.1).

The data set follows the brightfield contract (``cytobench simulate brightfield`` writes it): a folder
with ``train.json`` (else ``annotations.json``), categories ``cell`` and ``nucleus``, image entries with
``planes = [bf_lower, bf_upper, phase]`` (the phase plane is ``planes[2]``), cells with ``segmentation``
(visible), ``amodal_segmentation`` and ``nucleus_id``. Image files lie in ``DIR/images/`` (as the
simulators write them) or in ``DIR`` itself.

Which cells are cut: the thesis copies "non-overlapping cells". A cell is **isolated** when its amodal
mask overlaps no other cell's amodal mask and does not touch the image edge (a cell cut by the edge is not
whole). Its mask is then both its amodal and its visible mask, and its pixels hold no other cell's phase.
When a data set has fewer than :data:`MIN_ISOLATED` isolated cells (dense or small images), the **fully
visible** cells not touching the edge are added (visible mask == amodal mask, i.e. on top of all their
overlaps): their masks are whole, but where such a cell lies over another its phase also holds that
cell's (additive) contribution, which then travels with it. :attr:`CellBank.eligibility` says which
rule was used.

A crop's signal is the phase minus its image's background level (the median phase of pixels outside all
cells), set to zero on other cells' pixels, with ``margin`` px of the cell's surroundings (its halo) kept
for the edge feather. The bank's :attr:`~CellBank.background` is the median of the first images'
background levels: the level of a blank canvas.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.data.rasterize import decode_segmentation
from cytobench.errors import BadInputError, CorruptAnnotation
from cytobench.io.coco import load_coco
from cytobench.io.images import read_image
from cytobench.synth.copy_paste import CellCrop

__all__ = [
    "PHASE_PLANE",
    "CellBank",
    "CellRef",
    "dataset_json",
    "image_root",
    "plane_file",
]

#: Fewer isolated cells than this and the fully visible ones are copied too (variety over purity).
MIN_ISOLATED = 8
#: Index of the phase-contrast plane in an image's ``planes`` (brightfield contract).
PHASE_PLANE = 2
#: Source images whose background levels set the canvas background.
BACKGROUND_IMAGES = 8
#: Decoded source images kept in memory while drawing cells.
CACHED_IMAGES = 8


def dataset_json(data_dir: str | Path, split: str = "train") -> Path:
    """The COCO json of ``split`` in a data set folder: ``SPLIT.json``, else ``annotations.json``.

    Raises:
        BadInputError: the folder or both files are missing.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise BadInputError(folder, "data set folder not found")
    for name in (f"{split}.json", "annotations.json"):
        if (folder / name).is_file():
            return folder / name
    raise BadInputError(folder, f"holds neither {split}.json nor annotations.json (not a data set folder)")


def image_root(data_dir: str | Path, coco: dict[str, Any]) -> Path:
    """The folder the images' file names are relative to: ``DIR/images`` when the first image is there."""
    folder = Path(data_dir)
    first = coco["images"][0]["file_name"] if coco["images"] else None
    if first is not None and (folder / "images" / first).is_file():
        return folder / "images"
    return folder


def plane_file(info: dict[str, Any], index: int, ann_file: str | Path, what: str) -> str:
    """File name of plane ``index`` of an image entry.

    Raises:
        BadInputError: the entry has no ``planes`` list or too few planes (``what`` names the plane).
    """
    planes = info.get("planes")
    if not isinstance(planes, list) or len(planes) <= index or not isinstance(planes[index], str):
        found = len(planes) if isinstance(planes, list) else 0
        raise BadInputError(
            ann_file,
            f"has no {what} plane (planes[{index}]; it lists {found} plane(s)): a brightfield data set "
            "names [bf_lower, bf_upper, phase] per image",
            f"image {info.get('id')}",
        )
    return planes[index]


@dataclass(frozen=True)
class CellRef:
    """An eligible cell: its image (index into the json's images), annotation and nucleus annotation."""

    image_index: int
    cell: dict[str, Any]
    nucleus: dict[str, Any] | None


def _rle_box(rle: dict[str, Any]) -> tuple[float, float, float, float]:
    from pycocotools import mask as mask_utils

    x, y, w, h = mask_utils.toBbox(rle)
    return float(x), float(y), float(w), float(h)


class CellBank:
    """The eligible cells of a data set split, cut lazily from their phase images.

    Args:
        data_dir: the data set folder.
        split: ``train`` (the thesis never copies test cells).
        margin: px of surroundings kept around each cell (>= the feather's reach).
        phase_plane: index of the phase plane in ``planes``.

    Attributes:
        ann_file: the json read.
        refs: the eligible cells.
        eligibility: ``"isolated"`` or ``"isolated + fully visible"`` (module docstring).
        background: canvas background level (phase intensity in [0, 1]).
        image_size: the most common source image size ``(H, W)``.
        cells_per_image: mean number of cells per source image.

    Raises:
        BadInputError: no json, an image without a phase plane, no cell category or no whole cell.
    """

    def __init__(
        self, data_dir: str | Path, split: str = "train", margin: int = 16, phase_plane: int = PHASE_PLANE
    ) -> None:
        self.ann_file = dataset_json(data_dir, split)
        self.coco = load_coco(self.ann_file)
        if not self.coco["images"]:
            raise BadInputError(self.ann_file, "lists no images")
        self.root = image_root(data_dir, self.coco)
        self.margin = int(margin)
        self.phase_plane = int(phase_plane)
        self.phase_files = [
            plane_file(info, self.phase_plane, self.ann_file, "phase") for info in self.coco["images"]
        ]
        self._cells_by_image = self._group_cells()
        self.cells_per_image = float(np.mean([len(c) for c in self._cells_by_image]))
        sizes = Counter((int(i["height"]), int(i["width"])) for i in self.coco["images"])
        self.image_size: tuple[int, int] = sizes.most_common(1)[0][0]
        self.refs, self.eligibility = self._eligible_cells()
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, float]] = OrderedDict()
        levels = [self._load(i)[2] for i in range(min(BACKGROUND_IMAGES, len(self.coco["images"])))]
        self.background = float(np.median(levels))

    def ensure_margin(self, margin: int) -> None:
        """Keep at least ``margin`` px around each crop from now on (the feather's reach)."""
        self.margin = max(self.margin, int(margin))

    # ------------------------------------------------------------------------------------ indexing
    def _category_id(self, name: str, fallback: int) -> int | None:
        ids = [c["id"] for c in self.coco["categories"] if c.get("name") == name]
        if ids:
            return ids[0]
        return fallback if any(c["id"] == fallback for c in self.coco["categories"]) else None

    def _group_cells(self) -> list[list[dict[str, Any]]]:
        cell_id = self._category_id("cell", 1)
        if cell_id is None:
            raise BadInputError(self.ann_file, "has no 'cell' category to copy cells from")
        index = {info["id"]: i for i, info in enumerate(self.coco["images"])}
        groups: list[list[dict[str, Any]]] = [[] for _ in self.coco["images"]]
        for ann in self.coco["annotations"]:
            if ann["category_id"] == cell_id and not ann.get("iscrowd", 0):
                groups[index[ann["image_id"]]].append(ann)
        return groups

    def _rle(self, ann: dict[str, Any], field: str, height: int, width: int) -> dict[str, Any]:
        """Segmentation ``field`` of an annotation (polygons or RLE) as a compressed RLE."""
        from pycocotools import mask as mask_utils

        segm = ann.get(field)
        if isinstance(segm, dict) and isinstance(segm.get("counts"), str | bytes):
            return segm
        if isinstance(segm, dict):
            return mask_utils.frPyObjects(segm, height, width)
        if isinstance(segm, list) and segm:
            return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        raise CorruptAnnotation(self.ann_file, f"cell has no {field}", f"annotation {ann['id']}")

    def _amodal_rle(self, ann: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """The annotation's amodal segmentation (else its visible one) as a compressed RLE."""
        field = "amodal_segmentation" if ann.get("amodal_segmentation") else "segmentation"
        return self._rle(ann, field, height, width)

    def _eligible_cells(self) -> tuple[list[CellRef], str]:
        from pycocotools import mask as mask_utils

        nuclei = {ann["id"]: ann for ann in self.coco["annotations"]}
        isolated: list[CellRef] = []
        on_top: list[CellRef] = []
        for i, (info, cells) in enumerate(zip(self.coco["images"], self._cells_by_image)):
            if not cells:
                continue
            height, width = int(info["height"]), int(info["width"])
            rles = [self._amodal_rle(ann, height, width) for ann in cells]
            touching = mask_utils.iou(rles, rles, [0] * len(rles)) > 0  # any shared pixel
            np.fill_diagonal(touching, False)
            for ann, rle, row in zip(cells, rles, touching):
                x, y, w, h = _rle_box(rle)
                if w <= 0 or x <= 0 or y <= 0 or x + w >= width or y + h >= height:
                    continue  # empty or cut by the image edge
                ref = CellRef(i, ann, nuclei.get(ann.get("nucleus_id")))
                if not row.any():
                    isolated.append(ref)
                elif self._fully_visible(ann, rle, height, width):
                    on_top.append(ref)
        if len(isolated) >= MIN_ISOLATED or (isolated and not on_top):
            return isolated, "isolated"
        if isolated or on_top:
            return isolated + on_top, "isolated + fully visible"
        raise BadInputError(
            self.ann_file, "has no whole cell to copy (every cell is cut by the image edge or partly hidden)"
        )

    def _fully_visible(self, ann: dict[str, Any], amodal: dict[str, Any], height: int, width: int) -> bool:
        """Whether the visible mask is the whole amodal mask (RLE areas, nothing decoded)."""
        from pycocotools import mask as mask_utils

        if not ann.get("segmentation"):
            return False
        visible = self._rle(ann, "segmentation", height, width)
        return int(mask_utils.area(visible)) == int(mask_utils.area(amodal))

    # ------------------------------------------------------------------------------------- reading
    def _load(self, image_index: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``(phase (H, W) float32, union of all cells (H, W) bool, background level)``, cached."""
        if image_index in self._cache:
            self._cache.move_to_end(image_index)
            return self._cache[image_index]
        info = self.coco["images"][image_index]
        height, width = int(info["height"]), int(info["width"])
        data = read_image(self.root / self.phase_files[image_index])
        phase = data.array[:, :, 0]
        if phase.shape != (height, width):
            raise BadInputError(
                self.root / self.phase_files[image_index],
                f"is {phase.shape[1]}x{phase.shape[0]}, the json says {width}x{height}",
            )
        union = np.zeros((height, width), dtype=bool)
        for ann in self._cells_by_image[image_index]:
            union |= self._decode(ann, height, width)
        outside = phase[~union]
        level = float(np.median(outside if outside.size else phase))
        self._cache[image_index] = (phase, union, level)
        if len(self._cache) > CACHED_IMAGES:
            self._cache.popitem(last=False)
        return phase, union, level

    def _decode(self, ann: dict[str, Any], height: int, width: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        return mask_utils.decode(self._amodal_rle(ann, height, width)).astype(bool)

    def crop(self, ref: CellRef) -> CellCrop:
        """Cut one cell: background-subtracted phase, mask and nucleus, ``margin`` px around the mask."""
        phase, union, level = self._load(ref.image_index)
        height, width = phase.shape
        mask = self._decode(ref.cell, height, width)
        x, y, w, h = _rle_box(self._amodal_rle(ref.cell, height, width))
        m = self.margin
        rows = slice(max(int(y) - m, 0), min(int(np.ceil(y + h)) + m, height))
        cols = slice(max(int(x) - m, 0), min(int(np.ceil(x + w)) + m, width))
        cell = mask[rows, cols]
        signal = phase[rows, cols] - np.float32(level)
        signal[union[rows, cols] & ~cell] = 0.0  # no piece of a neighbour travels with the cell
        nucleus = None
        if ref.nucleus is not None and ref.nucleus.get("segmentation"):
            whole = decode_segmentation(
                ref.nucleus["segmentation"],
                height,
                width,
                path=self.ann_file,
                item=f"annotation {ref.nucleus['id']}",
            )
            nucleus = whole[rows, cols].astype(bool) & cell
        info = self.coco["images"][ref.image_index]
        source = {"image_id": info["id"], "cell_id": ref.cell["id"]}
        return CellCrop(signal.astype(np.float32), cell, nucleus, source)

    def draw(self, rng: np.random.Generator) -> CellCrop:
        """One eligible cell drawn uniformly with ``rng``."""
        return self.crop(self.refs[int(rng.integers(len(self.refs)))])

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def n_images(self) -> int:
        return len(self.coco["images"])

    def describe(self) -> str:
        """One line: how many cells of how many images, which rule, the background level."""
        return (
            f"{len(self.refs)} {self.eligibility} cells of {self.n_images} images in {self.ann_file} "
            f"(background {self.background:.3f})"
        )
