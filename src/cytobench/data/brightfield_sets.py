"""Brightfield data sets for SEU-Net (thesis Ch. 4-5): the data contract checked up front, real / synthetic /
mixed training sets, and the maps each model configuration needs.

A brightfield set is a COCO json in the contract of ``cytobench simulate brightfield`` (and of
``cytobench synth make``): categories ``cell`` and ``nucleus``, per image ``planes`` (lower and upper
brightfield plane, phase contrast) and ``maps`` (``semantic``: 0 background, 1 cytoplasm, 2 nucleus,
3 border; ``overlap``: 0/1). :func:`brightfield_dataset` builds a
:class:`~cytobench.data.coco_dataset.CocoDetectionDataset` over one such json after checking that it holds
what the model's heads need, so a wrong file stops before training with one line naming the file and the
fault (:class:`~cytobench.errors.BadInputError`, exit 2) instead of failing, or silently training on empty
targets, later:

* ``cell`` category always; ``nucleus`` when the heads include ``nuclei``;
* a ``maps.semantic`` file for every image (the semantic heads read the map file; painting it from the
  masks would depend on the category order), and a ``maps.overlap`` file when the heads include ``overlap``;
* enough ``planes`` for the selected ones (a phase-only synthetic set cannot feed a brightfield model).

The overlap attention map (``overlap_attention_v0`` ... ``_v4``, computed from the cells) is added to the
set's maps only when the model uses it: an ``overlap`` head trained with the focal loss and an
``attention_key`` (the same rule as :class:`cytobench.models.seunet.SEUNet`), so one switch,
``model.attention_key``, selects the Table 5.3 variant.

:func:`brightfield_training_set` picks the training images of Tables 5.4-5.6: ``real`` (the simulated
set standing in for the thesis' hand-labelled one), ``synthetic`` (a ``cytobench synth make`` folder: every
split json it holds) or ``mixed`` (both, :class:`BrightfieldSets`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset

from cytobench.data.coco_dataset import CocoDetectionDataset
from cytobench.errors import BadInputError

__all__ = [
    "TRAINING_SETS",
    "BrightfieldSets",
    "brightfield_dataset",
    "brightfield_training_set",
    "check_brightfield_contract",
    "synthetic_set_files",
]

TRAINING_SETS = ("real", "synthetic", "mixed")
SYNTHETIC_SPLITS = ("train.json", "val.json", "annotations.json")  # every split of a synthetic folder trains
SEMANTIC_HEADS = ("cytoplasm", "nuclei", "border", "background")


def check_brightfield_contract(
    coco: Mapping[str, Any], ann_file: str | Path, heads: Sequence[str] | None, planes: Sequence[int] | None
) -> None:
    """Refuse a COCO dict lacking what ``heads`` need (module docstring); ``heads`` None checks planes only.

    Raises:
        BadInputError: names ``ann_file``, the image when one is at fault, and what is missing.
    """
    names = [str(c.get("name")) for c in coco.get("categories", [])]
    heads = [str(h) for h in heads or ()]
    needed = ["cell", *(["nucleus"] if "nuclei" in heads else [])] if heads else []
    for name in needed:
        if name not in names:
            why = "the nuclei head needs" if name == "nucleus" else "SEU-Net's targets need"
            raise BadInputError(ann_file, f"has no '{name}' category, which {why} (categories: {names})")
    files = [("semantic", h) for h in heads if h in SEMANTIC_HEADS][:1]
    files += [("overlap", "overlap")] if "overlap" in heads else []
    n_planes = max((int(i) + 1 if int(i) >= 0 else -int(i) for i in planes or ()), default=0)
    for info in coco.get("images", []):
        item = f"image {info.get('id')}"
        maps = info.get("maps") or {}
        for name, head in files:
            if not isinstance(maps, Mapping) or name not in maps:
                raise BadInputError(
                    ann_file, f"has no '{name}' map file in its 'maps', which the {head} head needs", item
                )
        have = len(info.get("planes") or [info.get("file_name")])
        if have < n_planes:
            what = " (a phase-only synthetic set: make it with --pix2pix)" if have == 1 else ""
            raise BadInputError(
                ann_file,
                f"has {have} plane(s) but the data set selects planes {list(planes or [])}{what}",
                item,
            )


def _model_maps(
    heads: Sequence[str] | None, attention_key: str | None, overlap_loss: str | None
) -> list[str]:
    """The maps a set yields: ``overlap``, and the attention map when the overlap focal loss uses one."""
    maps = ["overlap"]
    if attention_key and heads is not None and "overlap" in heads and (overlap_loss or "focal") == "focal":
        maps.append(str(attention_key))
    return maps


def brightfield_dataset(
    root: str | Path,
    ann_file: str | Path,
    *,
    heads: Sequence[str] | None = None,
    attention_key: str | None = None,
    overlap_loss: str | None = None,
    planes: Sequence[int] | None = (0, 1),
    transforms: Any = None,
    seed: int = 0,
    cache_computed_maps: bool = True,
) -> CocoDetectionDataset:
    """One brightfield set, checked against the heads (module docstring).

    Args:
        root / ann_file: image folder and COCO json.
        heads: the model's heads (``model.heads``); None skips the head checks and the attention map.
        attention_key / overlap_loss: the model's (``model.attention_key`` / ``model.overlap_loss``): the
            attention map is added to the maps when the overlap focal loss uses it.
        planes: plane indices stacked as channels ((0, 1): the two brightfield planes).
        transforms / seed / cache_computed_maps: as in
            :class:`~cytobench.data.coco_dataset.CocoDetectionDataset`.

    Returns:
        A data set yielding ``semantic`` (from the map files), ``overlap`` and, when used, the attention map.
    """
    heads = None if heads is None else [str(h) for h in heads]
    planes = None if planes is None else [int(i) for i in planes]
    dataset = CocoDetectionDataset(
        root,
        ann_file,
        transforms=transforms,
        seed=seed,
        with_semantic=True,
        maps=_model_maps(heads, attention_key, overlap_loss),
        planes=planes,
        cache_computed_maps=cache_computed_maps,
    )
    check_brightfield_contract(dataset.coco, ann_file, heads, planes)
    return dataset


class BrightfieldSets(ConcatDataset):
    """Several brightfield sets as one training set (the thesis' mixed real + synthetic training).

    Exposes what the trainer reads from a data set (``num_classes``, ``categories``, ``label_to_cat_id``,
    ``category_names``) and forwards ``set_epoch`` to every part, so augmentation stays a function of
    (seed, epoch, index) in each.

    Raises:
        BadInputError: the parts' categories differ (names and ids in order), naming the first that does.
    """

    def __init__(self, parts: Sequence[CocoDetectionDataset]) -> None:
        if not parts:
            raise ValueError("BrightfieldSets needs at least one data set")
        super().__init__(list(parts))
        self.parts = list(parts)
        first = [(c["id"], c["name"]) for c in parts[0].categories]
        for part in self.parts[1:]:
            if [(c["id"], c["name"]) for c in part.categories] != first:
                raise BadInputError(
                    part.ann_file,
                    f"categories {[c['name'] for c in part.categories]} differ from those of "
                    f"{parts[0].ann_file} ({[name for _, name in first]}); mixed sets need the same ones",
                )

    @property
    def num_classes(self) -> int:
        return self.parts[0].num_classes

    @property
    def categories(self) -> list[dict]:
        return self.parts[0].categories

    @property
    def category_names(self) -> list[str]:
        return self.parts[0].category_names

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return self.parts[0].label_to_cat_id

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)


def synthetic_set_files(folder: str | Path) -> list[Path]:
    """The split jsons of a ``cytobench synth make`` folder (all of them train).

    Raises:
        BadInputError: ``folder`` is not set (``data.synthetic_dir``), missing, or holds no split json.
    """
    if folder is None or str(folder) in ("", "None"):
        raise BadInputError(
            "data.synthetic_dir", "is not set: name a `cytobench synth make --out DIR` folder to train on"
        )
    folder = Path(folder)
    files = [folder / name for name in SYNTHETIC_SPLITS if (folder / name).is_file()]
    if not files:
        raise BadInputError(
            folder, f"holds none of {list(SYNTHETIC_SPLITS)}: not a `cytobench synth make` output"
        )
    return files


def brightfield_training_set(
    train_set: str,
    real_root: str | Path,
    real_ann_file: str | Path,
    synthetic_dir: str | Path | None = None,
    **options: Any,
) -> CocoDetectionDataset | BrightfieldSets:
    """The training images of one run: ``real``, ``synthetic`` or ``mixed`` (module docstring).

    Args:
        train_set: one of :data:`TRAINING_SETS`.
        real_root / real_ann_file: the real (simulated) training split.
        synthetic_dir: a ``cytobench synth make`` folder (``images/`` + split jsons), for synthetic / mixed.
        options: passed to :func:`brightfield_dataset` for every part (heads, planes, transforms, seed ...).

    Raises:
        BadInputError: an unknown ``train_set``, a missing synthetic folder, or a part breaking the contract.
    """
    if train_set not in TRAINING_SETS:
        raise BadInputError("data.train_set", f"must be one of {list(TRAINING_SETS)}, got {train_set!r}")
    parts = []
    if train_set in ("real", "mixed"):
        parts.append(brightfield_dataset(real_root, real_ann_file, **options))
    if train_set in ("synthetic", "mixed"):
        for ann_file in synthetic_set_files(synthetic_dir):  # type: ignore[arg-type]
            parts.append(brightfield_dataset(Path(ann_file).parent / "images", ann_file, **options))
    return parts[0] if len(parts) == 1 else BrightfieldSets(parts)
