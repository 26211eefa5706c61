"""Arguments and runner of ``cytobench fish analyze`` (kept out of ``cli.py`` so that it stays small).

Example::

    cytobench fish analyze --checkpoint runs/fish_cpu/<date>/checkpoints/best.pt --images data/sampleA data/sampleB --out out/
    cytobench fish analyze --segmenter otsu --images scans/*.czi --sample patient7 --out out/ --calibrate 20

Writes ``OUT/nuclei.csv``, ``OUT/overlays/*.png``, ``OUT/report.json`` and ``OUT/report.md`` (and
``OUT/confusion.json`` with ``--calibrate``).

``--images`` also takes a dataset folder as ``cytobench simulate fish`` writes it (``images/`` beside
``annotations.json`` or ``train.json`` / ``val.json``): its ``images/`` are analysed as one sample named
after the folder; the json is not read (``fish analyze`` takes no ground truth).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cytobench.errors import CytobenchError
from cytobench.fish import DEFAULT_NUCLEUS_DIAMETER_UM, RANGE_PERCENTILE

__all__ = ["add_analyze_arguments", "find_fish_images", "run_analyze"]

#: COCO files a dataset folder may hold beside its ``images/`` (what ``cytobench simulate`` writes).


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cytobench fish analyze``."""
    parser.add_argument(
        "--images", required=True, nargs="+", help="image files and/or folders (png jpg bmp tif czi)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--checkpoint", help="YOLOv8-seg checkpoint of a fish_* run (needed by --segmenter yolo)"
    )
    from cytobench.cli_checks import add_trust_checkpoint_argument

    add_trust_checkpoint_argument(parser)
    parser.add_argument("--segmenter", choices=("yolo", "otsu"), default="yolo", help="nucleus segmenter")
    parser.add_argument("--sample", help="sample name of every image (default: each image's folder name)")
    parser.add_argument(
        "--channels",
        help="channel indices, e.g. red=0,green=1,dapi=2, or dapi=0 for nuclei only (default: file channel "
        "names, else RGB; a 1-channel image is DAPI only)",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        metavar="UM",
        help="pixel size in um/px of every image, overriding the files' (TIFF / ImageJ / OME / CZI metadata); "
        "otsu: sizes are physical when a pixel size is known, else measured per image",
    )
    parser.add_argument(
        "--range-percentile",
        type=float,
        default=RANGE_PERCENTILE,
        metavar="Q",
        help="data wider than 8 bits are scaled by the bit depth holding each channel's Q-th percentile, so "
        f"a few hot pixels cannot set the range (default {RANGE_PERCENTILE}; 100: the maximum)",
    )
    parser.add_argument("--confusion", help="confusion-matrix json for the corrected mosaicism estimate")
    parser.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="N",
        help="simulate N balanced images to measure the confusion matrix (written to OUT/confusion.json); "
        "about 100 keep its own uncertainty small",
    )
    parser.add_argument("--imgsz", type=int, help="yolo: inference size (default: the training size)")
    parser.add_argument("--conf", type=float, default=0.25, help="yolo: confidence threshold")
    parser.add_argument(
        "--tile", type=int, help="yolo: window for large images (default: training size; 0: off)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--nucleus-diameter",
        type=float,
        metavar="PX",
        help="otsu: nucleus diameter in px, overriding --nucleus-diameter-um (default: from the pixel size, "
        "else measured per image)",
    )
    parser.add_argument(
        "--nucleus-diameter-um",
        type=float,
        default=DEFAULT_NUCLEUS_DIAMETER_UM,
        metavar="UM",
        help="otsu: typical whole-nucleus diameter in um, used with the pixel size (default "
        f"{DEFAULT_NUCLEUS_DIAMETER_UM:g}); whole nuclei cover 0.5 to 4 times its disc",
    )
    parser.add_argument("--spot-method", choices=("paper", "log"), default="paper", help="signal detector")
    parser.add_argument(
        "--threshold", type=float, default=80.0, help="paper detector: threshold T (8-bit scale)"
    )
    parser.add_argument("--interval", choices=("wilson", "clopper-pearson"), default="wilson")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (corrected estimate)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")


def find_fish_images(paths: Sequence[str | Path]) -> tuple[list[Path], dict[Path, str]]:
    """Image files of ``--images``; a dataset folder (``images/`` + COCO json) stands for its ``images/``.

    A folder with no image files of its own but an ``images/`` subfolder (as ``cytobench simulate fish``
    writes) is read through that subfolder, with one line on stderr saying so and naming any COCO json
    beside it (not used: ``fish analyze`` takes no ground truth).

    Args:
        paths: image files and/or folders, as given to ``--images``.

    Returns:
        ``(images, folder_samples)``: the image files (:func:`cytobench.io.images.list_images` order) and, per
        substituted ``images/`` folder, the sample name to use for its images (the dataset folder's name).

    Raises:
        BadInputError: a path does not exist, or no images are found (one line).
    """
    from cytobench.io.images import dataset_images_folder, list_images

    resolved: list[Path] = []
    folder_samples: dict[Path, str] = {}
    for raw in paths:
        path = Path(raw)
        dataset = dataset_images_folder(path)
        if dataset is not None:
            inner, found = dataset
            note = f"fish analyze: {path} is a dataset folder: reading {inner}"
            if found:
                verb = "is" if len(found) == 1 else "are"
                note += f"; {', '.join(found)} beside it {verb} not used (fish analyze takes no ground truth)"
            print(note, file=sys.stderr)
            folder_samples[inner] = path.resolve().name or "sample"
            path = inner
        resolved.append(path)
    return list_images(resolved), folder_samples


def _check_options(args: argparse.Namespace) -> None:
    """One-line errors for option values that are out of range."""
    if args.confusion and args.calibrate:
        raise CytobenchError("fish analyze: give --confusion FILE or --calibrate N, not both")
    if args.n_boot < 10 or args.calibrate < 0:
        raise CytobenchError("fish analyze: --n-boot must be >= 10 and --calibrate >= 0")
    if args.nucleus_diameter is not None and not (
        math.isfinite(args.nucleus_diameter) and args.nucleus_diameter > 0
    ):
        raise CytobenchError(f"fish analyze: --nucleus-diameter must be > 0 px, got {args.nucleus_diameter}")
    for flag, value in (
        ("--pixel-size", args.pixel_size),
        ("--nucleus-diameter-um", args.nucleus_diameter_um),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CytobenchError(f"fish analyze: {flag} must be > 0 um, got {value}")
    if not (math.isfinite(args.range_percentile) and 50 < args.range_percentile <= 100):
        raise CytobenchError(
            f"fish analyze: --range-percentile must be in (50, 100], got {args.range_percentile}"
        )
    if not (math.isfinite(args.threshold) and args.threshold >= 0):
        raise CytobenchError(f"fish analyze: --threshold must be >= 0 (8-bit scale), got {args.threshold}")
    if not 0.0 <= args.conf <= 1.0:
        raise CytobenchError(f"fish analyze: --conf must be in [0, 1], got {args.conf}")
    if args.imgsz is not None and args.imgsz < 1:
        raise CytobenchError(f"fish analyze: --imgsz must be a positive size in px, got {args.imgsz}")
    if args.tile is not None and args.tile < 0:
        raise CytobenchError(f"fish analyze: --tile must be >= 0 (0: off), got {args.tile}")


def run_analyze(
    args: argparse.Namespace, images: Sequence[Path], folder_samples: Mapping[Path, str] | None = None
) -> None:
    """Run ``fish analyze`` on the listed images with the parsed options; prints a summary.

    Args:
        args: the parsed options (:func:`add_analyze_arguments`).
        images: image files.
        folder_samples: sample name per image folder, used when ``--sample`` is not given (see
            :func:`find_fish_images`); other images take their folder's name.
    """
    from tqdm.auto import tqdm

    from cytobench.fish.analyze import analyze_images
    from cytobench.fish.channels import parse_channel_map
    from cytobench.fish.mosaicism import ConfusionMatrix
    from cytobench.fish.segmenters import build_segmenter
    from cytobench.models.classical.fish_spots import SpotDetectorParams

    _check_options(args)
    try:
        channels = parse_channel_map(args.channels)
        params = SpotDetectorParams(method=args.spot_method, threshold=args.threshold)
    except ValueError as err:
        raise CytobenchError(f"fish analyze: {err}") from None
    segmenter = build_segmenter(
        args.segmenter,
        args.checkpoint,
        imgsz=args.imgsz,
        conf=args.conf,
        device=args.device,
        nucleus_diameter_px=args.nucleus_diameter,
        tile=args.tile,
        nucleus_diameter_um=args.nucleus_diameter_um,
        trust=args.trust_checkpoint,
    )
    out = Path(args.out)
    created = next((p for p in [*reversed(out.parents), out] if not p.exists()), None)
    try:
        confusion = ConfusionMatrix.load(args.confusion) if args.confusion else None
        if args.calibrate:
            from cytobench.fish.calibrate import calibrate_confusion

            print(f"calibrating: simulating {args.calibrate} images with known truth", file=sys.stderr)
            confusion = calibrate_confusion(
                out / "calibration", args.calibrate, segmenter=segmenter, spot_params=params
            )
            confusion.save(out / "confusion.json")

        def progress(paths: Sequence[Path]) -> Sequence[Path]:
            return tqdm(paths, desc="fish analyze", unit="img", disable=len(paths) < 2, file=sys.stderr)

        result = analyze_images(
            images,
            out,
            segmenter,
            spot_params=params,
            channels=channels,
            sample=args.sample,
            folder_samples=folder_samples,
            confusion=confusion,
            overlays=not args.no_overlays,
            method=args.interval,
            n_boot=args.n_boot,
            seed=args.seed,
            progress=progress,
            pixel_size_um=args.pixel_size,
            range_percentile=args.range_percentile,
        )
    except CytobenchError:
        if created is not None:  # bad input leaves nothing behind: remove the folders this run made
            shutil.rmtree(created, ignore_errors=True)
        raise
    timing = result.report["timing"]
    for name, entry in result.report["samples"].items():
        if entry["n_whole"] == 0:
            print(
                f"{name}: no whole nuclei in {entry['n_images']} images "
                f"({entry['n_destroyed']} destroyed); no mosaicism level can be estimated"
            )
            continue
        if entry["n_counted"] == 0:
            print(
                f"{name}: {entry['n_whole']} whole nuclei ({entry['n_destroyed']} destroyed) in "
                f"{entry['n_images']} images; nuclei only (no probe channels): no signals counted, no mosaicism level"
            )
            continue
        est = entry["mosaicism"].get("corrected", entry["mosaicism"]["plain"])
        levels = ", ".join(
            f"{lv['karyotype']} {100 * lv['fraction']:.1f}% [{100 * lv['lower']:.1f}, {100 * lv['upper']:.1f}]"
            for lv in est["levels"]
        )
        print(
            f"{name}: {entry['n_whole']} whole nuclei in {entry['n_images']} images; {est['method']}: {levels}"
        )
    print(
        f"wrote {out / 'nuclei.csv'}, {out / 'report.md'} ({len(images)} images, "
        f"{timing['images_per_s']:.2f} images/s)"
    )
