"""Arguments and runner of ``cytobench karyotype`` (kept out of ``cli.py`` so that it stays small).

Example::

    cytobench karyotype --checkpoint runs/karyotype_yolo_smoke/<date>/checkpoints/best.pt --images cells/ --out karyo/
    cytobench karyotype --checkpoint best.pt --images spread.png --out karyo/ --score-thr 0.4 --low-confidence 0.8

Any cytobench detector checkpoint whose categories are the 24 karyotype classes ``"1"`` .. ``"22"``, ``"X"``,
``"Y"`` (a model trained on ``simulate karyogram`` data, ``simulate metaphase --labels karyotype`` or
``import ... --classes karyotype``) runs on each image, a metaphase spread or a karyogram alike, at full
resolution (images over 1.5 times the training size in windows of it, as ``cytobench predict``). Per image the
detections scored >= ``--score-thr`` are the cell's chromosomes: they are cut out, stood upright and arranged
as a karyogram (:mod:`cytobench.karyotype.render`), and counted into an ISCN karyotype
(:mod:`cytobench.karyotype.report`). Writes into ``--out``:

* ``<stem>_karyogram.png`` per image with chromosomes (``<stem>_2_karyogram.png`` ... when two images share
  a stem);
* ``karyotypes.json``: ``images`` (per image: status, karyotype, normal, counts per class, low-confidence
  count, karyogram file, each chromosome's class / score / box), ``summary`` (karyotype tally, abnormal
  fraction with a Wilson interval, images without chromosomes) and ``settings``;
* ``karyotypes.md``: one row per image, then the summary.

Bad input stops with one line (exit 2) and leaves nothing behind: a checkpoint of other classes, an
unreadable image (also inside a folder: the run stops, as ``fish analyze`` does, rather than reporting a
partial folder), a single image given as a file in which no chromosome is found. In a folder an image without
chromosomes is reported as such (a row, the summary, a line on stderr) and the run goes on. Karyograms are
written to a hidden folder inside ``--out`` and moved into place when every image is done, so a run that
stops leaves the previous results as they were. An ``--out`` that already holds results
(``karyotypes.json`` / ``.md`` or ``*_karyogram.png``) is refused unless ``--overwrite``; then the karyograms
the previous ``karyotypes.json`` lists and this run does not write again are removed, so the folder matches
the new json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cytobench.errors import BadInputError

__all__ = [
    "RESULT_FILES",
    "add_karyotype_arguments",
    "find_karyotype_images",
    "karyogram_names",
    "karyotype_label_map",
    "run_karyotype",
]

#: what ``--out`` receives besides the karyograms
RESULT_FILES = ("karyotypes.json", "karyotypes.md")
KARYOGRAM_SUFFIX = "_karyogram.png"


def add_karyotype_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cytobench karyotype``."""
    from cytobench.cli_checks import add_trust_checkpoint_argument

    parser.add_argument(
        "--checkpoint",
        required=True,
        help="detector checkpoint whose categories are the 24 classes 1..22, X, Y (any cytobench model)",
    )
    parser.add_argument(
        "--images",
        required=True,
        nargs="+",
        help="image files and/or folders (png jpg bmp tif czi): metaphase spreads or karyograms, one cell each",
    )
    parser.add_argument("--out", required=True, help="output folder (karyograms, karyotypes.json / .md)")
    parser.add_argument(
        "--score-thr", type=float, default=0.5, help="detections scored >= this are the cell's chromosomes"
    )
    parser.add_argument(
        "--low-confidence",
        type=float,
        default=0.7,
        help="chromosomes scored below this are marked in the karyogram (red frame, '?') and counted",
    )
    parser.add_argument(
        "--tile",
        type=int,
        help="window side in px for images larger than the training images (default: the run's training size, "
        "used for images over 1.5 times it; 0: never tile)",
    )
    parser.add_argument(
        "--pair-prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="label each cell under the pair prior (YOLO, SSD, R-FCN and two-stage models; default: as the run "
        "was trained: on for experiment=karyotype_yolo / karyotype_two_stage, off for SSD / R-FCN)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    add_trust_checkpoint_argument(parser)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the results already in --out (karyograms, json, md)"
    )


# ------------------------------------------------------------------------------------------------ inputs
def _check_options(args: argparse.Namespace) -> None:
    from cytobench.cli_checks import check_ranges

    check_ranges(
        [
            ("--score-thr", args.score_thr, 0.0 <= args.score_thr <= 1.0, "in [0, 1]"),
            ("--low-confidence", args.low_confidence, 0.0 <= args.low_confidence <= 1.0, "in [0, 1]"),
            ("--tile", args.tile, args.tile is None or args.tile >= 0, ">= 0 (0: never tile)"),
        ]
    )


def _check_out(out: Path, overwrite: bool) -> None:
    """``--out`` is a folder (or not there yet); one holding results is refused without ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise BadInputError(out, "is a file, not a folder (--out names the output folder)")
    if not out.is_dir() or overwrite:
        return
    found = [out / name for name in RESULT_FILES if (out / name).exists()]
    found += sorted(p for p in out.glob(f"*{KARYOGRAM_SUFFIX}"))
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise BadInputError(
            out, f"already holds karyotype results ({found[0].name}{more}); pass --overwrite to replace them"
        )


def find_karyotype_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files of ``--images``; a dataset folder (``images/`` + COCO json, as ``simulate karyogram``
    writes) stands for its ``images/`` (one line on stderr says so).

    Raises:
        BadInputError: a path does not exist, or no images are found.
    """
    from cytobench.io.images import dataset_images_folder, list_images

    resolved: list[Path] = []
    for raw in paths:
        path = Path(raw)
        dataset = dataset_images_folder(path)
        if dataset is not None:
            inner, found = dataset
            note = f"karyotype: {path} is a dataset folder: reading {inner}"
            if found:
                note += f" ({', '.join(found)} not used: karyotype takes no ground truth)"
            print(note, file=sys.stderr)
            path = inner
        resolved.append(path)
    return list_images(resolved)


def karyotype_label_map(info: Mapping[str, Any], path: str | Path) -> dict[int, int]:
    """Model label -> class index (1-24; X = 23, Y = 24) from a checkpoint's categories.

    Args:
        info: what :func:`cytobench.engine.predict.load_model_from_checkpoint` returns beside the model
            (``categories`` in label order, ``label_to_cat_id``).
        path: the checkpoint (named in the error).

    Raises:
        BadInputError: the categories are not exactly the 24 karyotype classes (e.g. a one-class
            ``chromosome`` detector).
    """
    from cytobench.simulate.chromosomes import CLASS_NAMES

    categories = list(info.get("categories") or [])
    names = [str(c.get("name")) for c in categories]
    if sorted(names) != sorted(CLASS_NAMES):
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        what = (
            f"{len(names)} categor{'y' if len(names) == 1 else 'ies'} ({shown})" if names else "no categories"
        )
        raise BadInputError(
            path,
            f"a detector of {what}; karyotype needs one of the 24 chromosome classes 1..22, X, Y "
            "(trained on `simulate karyogram` data or `--labels karyotype`)",
        )
    class_of_cat = {int(c["id"]): CLASS_NAMES.index(str(c["name"])) + 1 for c in categories}
    label_to_cat = dict(info.get("label_to_cat_id") or {}) or {
        k + 1: int(c["id"]) for k, c in enumerate(categories)
    }
    return {
        int(label): class_of_cat[int(cat)] for label, cat in label_to_cat.items() if int(cat) in class_of_cat
    }


def karyogram_names(images: Sequence[Path]) -> list[str]:
    """``<stem>_karyogram.png`` per image; a stem seen before gets ``_2``, ``_3``, ... (first free)."""
    used: set[str] = set()
    names = []
    for path in images:
        name, k = f"{path.stem}{KARYOGRAM_SUFFIX}", 2
        while name in used:
            name, k = f"{path.stem}_{k}{KARYOGRAM_SUFFIX}", k + 1
        used.add(name)
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------------ running
class _Detector:
    """The checkpoint's model, tiled as ``cytobench predict`` tiles it, returning NumPy detections."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from cytobench.engine.distributed import local_device
        from cytobench.engine.predict import load_model_from_checkpoint
        from cytobench.engine.tiling import TiledPredictor, training_image_size
        from cytobench.models.karyotype_cell import columns_from_label_map, pair_prior_cell

        self.device = local_device(args.device)
        model, info = load_model_from_checkpoint(args.checkpoint, self.device, trust=args.trust_checkpoint)
        self.label_map = karyotype_label_map(info, args.checkpoint)
        # a whole-cell step (the pair prior) runs once on the whole image's detections, also when the image
        # is tiled: YOLO's own, or the shared one on SSD's / R-FCN's per-class scores; a two-stage model's
        # classifier does so inside TiledPredictor
        self.cell_step = None
        if getattr(model, "gives_class_scores", False):
            if args.pair_prior:  # off by default: these models were not trained with it
                columns = torch.as_tensor(columns_from_label_map(self.label_map), device=self.device)
                self.cell_step = partial(pair_prior_cell, columns=columns)
        elif args.pair_prior is not None:
            if not hasattr(model, "pair_prior"):
                raise BadInputError(
                    args.checkpoint, f"a {type(model).__name__} has no pair prior (--pair-prior)"
                )
            model.pair_prior = bool(args.pair_prior)
        if getattr(model, "pair_prior", False) and hasattr(model, "cell_step"):
            model.pair_prior, self.cell_step = False, model.cell_step
        window = training_image_size(info.get("data_config")) if args.tile is None else int(args.tile)
        if getattr(model, "tiles_itself", False):
            window = 0
        self.predictor = TiledPredictor(model, window)

    def __call__(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """``(H, W, C)`` float image -> ``boxes`` (M, 4), ``scores`` (M,), ``classes`` (M,) (0: unknown label),
        and ``masks`` (M, H, W) bool when the model gives masks of the image's size."""
        import torch

        from cytobench.io.coco_convert import binarize_masks, to_numpy

        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).to(self.device)
        with torch.no_grad():
            pred = self.predictor.predict_one(tensor)
            if self.cell_step is not None:
                pred = self.cell_step(pred)
        boxes = to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
        labels = to_numpy(pred["labels"]).astype(np.int64).reshape(-1)
        out = {
            "boxes": boxes,
            "scores": scores,
            "classes": np.array([self.label_map.get(int(v), 0) for v in labels], dtype=np.int64),
        }
        masks = pred.get("masks")
        if masks is not None and len(boxes):
            binary = binarize_masks(masks)
            if binary.shape == (len(boxes), *array.shape[:2]):
                out["masks"] = binary
        return out


def analyze_image(
    path: Path,
    detector: Any,
    out_dir: Path,
    karyogram: str,
    *,
    score_thr: float,
    low_confidence: float,
) -> dict[str, Any]:
    """Detect, cut out, arrange and count one image's chromosomes; writes ``out_dir / karyogram``.

    Args:
        path: the image.
        detector: ``(H, W, C)`` float image -> ``{"boxes", "scores", "classes"[, "masks"]}`` (as ``_Detector``).
        out_dir: where the karyogram goes.
        karyogram: its file name.
        score_thr: detections scored below are left out.
        low_confidence: chromosomes scored below are marked.

    Returns:
        The image's json entry (:func:`cytobench.karyotype.report.image_entry`, or
        :func:`~cytobench.karyotype.report.no_chromosomes_entry` when none is kept).

    Raises:
        UnreadableImage: the file is missing or cannot be decoded.
    """
    from cytobench.io.images import read_image, write_image
    from cytobench.karyotype.render import render_karyogram, to_display_rgb, upright_crop
    from cytobench.karyotype.report import image_entry, no_chromosomes_entry

    image = read_image(path)
    found = detector(image.array)
    known = found["classes"] > 0
    keep = np.flatnonzero(known & (found["scores"] >= score_thr))
    n_below = int(np.count_nonzero(known)) - len(keep)
    if not len(keep):
        return no_chromosomes_entry(path.name, str(path), n_below)
    # homologues side by side, the most confident copy first (a doubtful extra copy ends up rightmost)
    keep = keep[np.lexsort((-found["scores"][keep], found["classes"][keep]))]
    classes = found["classes"][keep]
    scores = found["scores"][keep]
    boxes = found["boxes"][keep]
    masks = found.get("masks")
    display = to_display_rgb(image.array)
    crops = [upright_crop(display, box, None if masks is None else masks[k]) for box, k in zip(boxes, keep)]
    entry = image_entry(
        path.name,
        str(path),
        classes.tolist(),
        scores.tolist(),
        boxes,
        low_confidence=low_confidence,
        karyogram=karyogram,
        n_below_threshold=n_below,
    )
    entry["cut_out_by"] = "mask" if masks is not None else "box"
    title = f"{entry['karyotype']}   {path.name}: {entry['n_chromosomes']} chromosomes"
    if entry["n_low_confidence"]:
        title += f", {entry['n_low_confidence']} below {low_confidence:g} (?)"
    figure = render_karyogram(
        [c.pixels for c in crops],
        classes.tolist(),
        scores.tolist(),
        low_confidence=low_confidence,
        title=title,
    )
    write_image(out_dir / karyogram, figure.image)
    return entry


def run_karyotype(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``cytobench karyotype`` with the parsed options (:func:`add_karyotype_arguments`); prints a summary.

    Returns:
        The report written to ``karyotypes.json`` (``images``, ``summary``, ``settings``).
    """
    from cytobench.cli_checks import check_input_file

    _check_options(args)
    out = Path(args.out)
    _check_out(out, args.overwrite)
    check_input_file(args.checkpoint, "checkpoint")
    images = find_karyotype_images(args.images)
    single = len(args.images) == 1 and Path(args.images[0]).is_file()
    detector = _Detector(args)
    previous = _previous_karyograms(out)
    created = next((p for p in [*reversed(out.parents), out] if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".karyotype.", dir=out))
    except OSError as err:
        raise BadInputError(out, f"cannot be written ({err.strerror or err})") from None
    try:
        report = _run(args, images, detector, out, staging, single)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:  # bad input leaves nothing behind: remove the folders this run made
            shutil.rmtree(created, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    written = {e["karyogram"] for e in report["images"] if e["karyogram"]}
    for name in previous - written:  # --overwrite: the old run's karyograms of images not in this run
        stale = out / name
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
    _print_summary(report, out, single)
    return report


def _run(
    args: argparse.Namespace,
    images: Sequence[Path],
    detector: Any,
    out: Path,
    staging: Path,
    single: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from cytobench.io.files import atomic_file, write_json_atomic
    from cytobench.karyotype.report import NO_CHROMOSOMES, render_markdown, summarize

    names = karyogram_names(images)
    entries = []
    # a bar over folders, in terminals only (tqdm's disable=None): logs and error lines stay clean
    with tqdm(
        list(zip(images, names)),
        desc="karyotype",
        unit="img",
        disable=True if len(images) < 2 else None,
        file=sys.stderr,
    ) as bar:
        for path, name in bar:
            entry = analyze_image(
                path, detector, staging, name, score_thr=args.score_thr, low_confidence=args.low_confidence
            )
            if entry["status"] == NO_CHROMOSOMES:
                fault = f"no chromosomes found (no detection scored >= --score-thr {args.score_thr:g})"
                if single:
                    raise BadInputError(path, fault)
                tqdm.write(f"karyotype: {path}: {fault}; reported in the summary", file=sys.stderr)
            entries.append(entry)
    report = {
        "images": entries,
        "summary": summarize(entries),
        "settings": {
            "checkpoint": str(args.checkpoint),
            "score_thr": args.score_thr,
            "low_confidence": args.low_confidence,
            "tile": "training size" if args.tile is None else args.tile,
            "device": str(detector.device) if hasattr(detector, "device") else args.device,
        },
    }
    for entry in entries:  # every image is done: the karyograms take their place
        if entry["karyogram"]:
            os.replace(staging / entry["karyogram"], out / entry["karyogram"])
    write_json_atomic(out / "karyotypes.json", report, indent=1)
    with atomic_file(out / "karyotypes.md") as handle:
        handle.write(render_markdown(report))
    return report


def _previous_karyograms(out: Path) -> set[str]:
    """Karyogram names a previous run's ``karyotypes.json`` in ``out`` lists (plain names only)."""
    try:
        old = json.loads((out / "karyotypes.json").read_text(encoding="utf-8"))
        names = {str(e.get("karyogram")) for e in old.get("images", []) if e.get("karyogram")}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()
    return {n for n in names if n.endswith(KARYOGRAM_SUFFIX) and Path(n).name == n}


def _print_summary(report: Mapping[str, Any], out: Path, single: bool) -> None:
    from cytobench.karyotype.report import abnormal_text

    summary = report["summary"]
    for entry in report["images"] if single else []:
        low = f", {entry['n_low_confidence']} low-confidence" if entry["n_low_confidence"] else ""
        print(
            f"{entry['image']}: {entry['karyotype']} ({entry['n_chromosomes']} chromosomes{low}, "
            f"{'normal' if entry['normal'] else 'abnormal'})"
        )
    if not single:
        print(f"karyotypes: {summary['tally']}")
        if summary["n_no_chromosomes"]:
            print(f"no chromosomes found in {summary['n_no_chromosomes']} of {summary['n_images']} images")
        print(abnormal_text(summary))
    n_karyograms = sum(1 for e in report["images"] if e["karyogram"])
    print(
        f"wrote {n_karyograms} karyogram{'s' if n_karyograms != 1 else ''}, karyotypes.json and karyotypes.md "
        f"to {out}"
    )
