"""Argument checks of the ``cytobench`` commands, run before anything is read at length or written.

Each raises a one-line :class:`~cytobench.errors.CytobenchError` naming the flag or file and the fault
(the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cytobench.errors import BadInputError, CytobenchError, UnreadableImage

__all__ = [
    "add_trust_checkpoint_argument",
    "check_against_ground_truth",
    "check_images_of",
    "check_input_file",
    "check_output_file",
    "check_ranges",
    "check_reproduce_inputs",
    "check_simulate_args",
]


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``, the same flag and warning in every command that loads a YOLO checkpoint."""
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a pickled ultralytics .pt (e.g. COCO-pretrained, or a YOLO run of an older cytobench): "
        "unpickling runs whatever code the file names, so give it only for files whose source you trust; a "
        "YOLO run's own checkpoints load without it",
    )


def check_ranges(checks: Sequence[tuple[str, Any, bool, str]]) -> None:
    """Raise for the first ``(flag, value, ok, rule)`` that is not ok (NaN fails every comparison).

    Raises:
        BadInputError: ``"--flag: must be RULE, got VALUE"``.
    """
    for flag, value, ok, rule in checks:
        if not ok:
            raise BadInputError(flag, f"must be {rule}, got {value}")


def check_input_file(path: str | Path, what: str) -> Path:
    """An input the command reads: it must be an existing file (not a folder).

    Raises:
        BadInputError: ``path`` is missing or a folder (``what`` names it, e.g. "checkpoint").
    """
    path = Path(path)
    if path.is_dir():
        raise BadInputError(path, f"is a folder, not a {what} file")
    if not path.is_file():
        raise BadInputError(path, f"{what} file not found")
    return path


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """A file the command will write: not there yet (unless ``overwrite``), not a folder, and its folder
    creatable (no parent is a file).

    Raises:
        BadInputError: one of those faults, naming the path.
    """
    from cytobench.io.files import refuse_existing

    path = Path(path)
    if path.is_dir():
        raise BadInputError(path, "is a folder; give a file name")
    refuse_existing(path, overwrite)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInputError(path, f"cannot be written: {parent} is a file, not a folder")
            break
    return path


def check_reproduce_inputs(options: argparse.Namespace) -> None:
    """``reproduce``: the checkpoints and run folders named exist, before any test set is simulated.

    Raises:
        BadInputError: a ``--checkpoint`` / ``--deepace`` / ``--baseline`` file or a ``--runs`` folder is missing.
    """
    for flag in ("checkpoint", "deepace", "baseline"):
        value = getattr(options, flag, None)
        for path in [value] if isinstance(value, str) else value or []:
            check_input_file(path, "checkpoint")
    for path in getattr(options, "runs", None) or []:
        if not Path(path).is_dir():
            raise BadInputError(path, "runs folder not found")


def check_images_of(gt_path: str | Path, images_dir: str | Path) -> None:
    """``export yolo``: every image the ground truth lists is a file in ``images_dir``.

    Raises:
        BadInputError, CorruptAnnotation: the ground truth is unreadable or invalid.
        UnreadableImage: an image is missing (names the first).
    """
    from cytobench.io.coco import load_coco

    for img in load_coco(gt_path)["images"]:
        source = Path(images_dir) / img["file_name"]
        if not source.is_file():
            raise UnreadableImage(source, f"file not found (image {img['id']} of {Path(gt_path).name})")


def check_simulate_args(args: argparse.Namespace) -> None:
    """``simulate``: the shared flags in range, and a dataset already in ``--out`` replaced only with
    ``--overwrite``.

    Raises:
        CytobenchError: ``"simulate KIND: --flag must be RULE, got VALUE"``.
        BadInputError: ``--out`` holds a dataset and ``--overwrite`` is not given.
    """
    from cytobench.io.files import refuse_existing

    val_fraction = getattr(args, "val_fraction", None)
    sizes = getattr(args, "size", None) or []
    split = "in (0, 1) (the fraction of images in val.json)"
    checks = [
        ("--n", args.n, args.n >= 1, "a positive integer"),
        ("--seed", args.seed, args.seed >= 0, "an integer >= 0"),
        ("--size", " ".join(map(str, sizes)), all(v >= 1 for v in sizes), "positive (px)"),
        ("--val-fraction", val_fraction, val_fraction is None or 0.0 < val_fraction < 1.0, split),
        (
            "--val-fraction",
            f"{val_fraction} with --n {args.n}",
            val_fraction is None or args.n >= 2,
            "given with --n >= 2 (one image cannot be split)",
        ),
    ]
    for flag, value, ok, rule in checks:
        if not ok:  # NaN fails every comparison
            raise CytobenchError(f"simulate {args.simulator}: {flag} must be {rule}, got {value}")
    out = Path(args.out)
    refuse_existing([out / name for name in ("annotations.json", "train.json", "val.json")], args.overwrite)


def check_against_ground_truth(gt_path: str | Path, gt: dict[str, Any], predicted: dict[str, Any]) -> None:
    """``predict --gt``: the images have the ground truth's sizes, the checkpoint its category names.

    Raises:
        BadInputError: an image's (H, W) differs from its ground-truth entry, or a category id of the
            checkpoint names another category in the ground truth (scores would be silently wrong).
    """
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in gt["images"]}
    for img in predicted["images"]:
        if sizes[img["id"]] != (img["height"], img["width"]):
            h, w = sizes[img["id"]]
            raise BadInputError(
                gt_path,
                f"image {img['file_name']} is {img['width']} x {img['height']} px but the ground truth says {w} x {h}",
            )
    names = {int(c["id"]): str(c.get("name")) for c in gt["categories"]}
    for cat in predicted.get("categories") or []:
        if int(cat["id"]) in names and names[int(cat["id"])] != str(cat.get("name")):
            raise BadInputError(
                gt_path,
                f"category {cat['id']} is {names[int(cat['id'])]!r} here but {cat.get('name')!r} in the checkpoint",
            )
        if int(cat["id"]) not in names:
            raise BadInputError(
                gt_path, f"has no category {cat['id']} ({cat.get('name')!r}) of the checkpoint"
            )
