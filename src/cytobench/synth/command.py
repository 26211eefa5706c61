"""``cytobench synth``: synthetic brightfield data (thesis Sec. 4.4; kept out of ``cli.py``).

Examples::

    cytobench simulate brightfield --n 64 --size 512 512 --val-fraction 0.25 --out data/bf
    cytobench synth pix2pix-train --data data/bf --out runs/pix2pix --epochs 50 --size 256
    cytobench synth make --data data/bf --n 100 --pix2pix runs/pix2pix/best.pt --out data/bf_synth100
    cytobench synth fid --real data/bf --fake data/bf_synth100 [--features inception_v3.pth]

``synth make`` without ``--pix2pix`` writes the phase-domain set only (``planes = [phase]``) and says so.
Bad input (a data set without phase planes, ``--n 0``, an existing output without ``--overwrite``) stops
with one line, exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cytobench.cli_checks import check_input_file, check_ranges
from cytobench.errors import BadInputError, CytobenchError

__all__ = ["add_synth_commands", "run_fid", "run_make", "run_pix2pix_train"]

DATASET_FILES = ("train.json", "val.json", "annotations.json")
PLANE_NAMES = {0: "bf_lower", 1: "bf_upper"}


def add_synth_commands(sub: Any) -> None:
    """Register ``synth pix2pix-train | make | fid`` on the top-level subparsers ``sub``."""
    synth = sub.add_parser("synth", help="synthetic brightfield data: copy-paste in phase + pix2pix, FID")
    synth_sub = synth.add_subparsers(dest="synth_command", required=True)

    train = synth_sub.add_parser(
        "pix2pix-train", help="train pix2pix: phase plane -> the two brightfield planes"
    )
    train.add_argument(
        "--data", required=True, help="brightfield data set folder (train.json, optional val.json)"
    )
    train.add_argument("--out", required=True, help="checkpoint folder (last.pt, best.pt)")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--size", type=int, default=256, help="random crop side, a power of two >= 32 (px)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=1)
    train.add_argument(
        "--width", type=int, default=64, help="network width (pix2pix: 64; 8 for a CPU smoke run)"
    )
    train.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    train.add_argument("--overwrite", action="store_true", help="replace checkpoints already in --out")
    train.set_defaults(func=run_pix2pix_train)

    make = synth_sub.add_parser(
        "make", help="copy-paste cells into new images (+ pix2pix brightfield planes)"
    )
    make.add_argument(
        "--data", required=True, help="brightfield data set folder whose train cells are copied"
    )
    make.add_argument("--n", type=int, required=True, help="number of images")
    make.add_argument("--out", required=True)
    make.add_argument(
        "--pix2pix", metavar="CKPT", help="checkpoint of `synth pix2pix-train` (else phase only)"
    )
    make.add_argument("--seed", type=int, default=0)
    make.add_argument(
        "--size", type=int, nargs=2, metavar=("W", "H"), help="canvas size (default: the source's)"
    )
    make.add_argument("--cells", type=int, help="cells per image (default: Poisson, the source's density)")
    make.add_argument(
        "--max-overlap", type=float, default=0.2, help="bound on each cell's overlap ratio, in [0, 1)"
    )
    make.add_argument(
        "--edge-sigma", type=float, help="edge feather sigma in px (default 20 px at 1080 px, scaled)"
    )
    make.add_argument("--val-fraction", type=float, default=0.2, help="images in val.json, in [0, 1)")
    make.add_argument("--device", default="auto", help="pix2pix device: auto, cpu or cuda[:N]")
    make.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    make.set_defaults(func=run_make)

    fid = synth_sub.add_parser("fid", help="Frechet distance between real and generated brightfield planes")
    fid.add_argument("--real", required=True, help="data set folder (or a folder of images)")
    fid.add_argument("--fake", required=True, help="data set folder (or a folder of images)")
    fid.add_argument(
        "--features", metavar="PATH", help="torchvision Inception-v3 weights file (else a stand-in)"
    )
    fid.add_argument("--device", default="auto")
    fid.add_argument("--batch-size", type=int, default=16)
    fid.set_defaults(func=run_fid)


def _device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without CUDA is a one-line error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError("--device", f"{name} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise BadInputError("--device", f"must be auto, cpu or cuda[:N], got {name}")
    return name


# ------------------------------------------------------------------------------------ pix2pix-train
def run_pix2pix_train(args: argparse.Namespace) -> None:
    """``synth pix2pix-train``: train and report where the checkpoints are."""
    from cytobench.io.files import refuse_existing

    size = args.size
    check_ranges(
        [
            ("--epochs", args.epochs, args.epochs >= 1, ">= 1"),
            ("--size", size, size >= 32 and not size & (size - 1), "a power of two >= 32"),
            ("--seed", args.seed, args.seed >= 0, ">= 0"),
            ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
            ("--width", args.width, args.width >= 1, ">= 1"),
        ]
    )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInputError(out, "is a file, not a folder")
    refuse_existing([out / "last.pt", out / "best.pt"], args.overwrite)
    device = _device(args.device)
    from cytobench.synth.pix2pix_train import train_pix2pix

    result = train_pix2pix(
        args.data,
        out,
        epochs=args.epochs,
        size=size,
        seed=args.seed,
        batch_size=args.batch_size,
        width=args.width,
        device=device,
    )
    print(f"pix2pix trained for {args.epochs} epoch(s) on {args.data}: {result.last} (best: {result.best})")


# --------------------------------------------------------------------------------------------- make
def run_make(args: argparse.Namespace) -> None:
    """``synth make``: copy-paste ``--n`` images from ``--data``'s train cells, translated with ``--pix2pix``."""
    from cytobench.io.files import refuse_existing

    sizes = args.size or []
    check_ranges(
        [
            ("--n", args.n, args.n >= 1, "a positive integer"),
            ("--seed", args.seed, args.seed >= 0, "an integer >= 0"),
            ("--size", " ".join(map(str, sizes)), all(v >= 16 for v in sizes), ">= 16 px"),
            ("--cells", args.cells, args.cells is None or args.cells >= 1, ">= 1"),
            ("--max-overlap", args.max_overlap, 0.0 <= args.max_overlap < 1.0, "in [0, 1)"),
            ("--edge-sigma", args.edge_sigma, args.edge_sigma is None or args.edge_sigma >= 0, ">= 0 px"),
            ("--val-fraction", args.val_fraction, 0.0 <= args.val_fraction < 1.0, "in [0, 1)"),
        ]
    )
    out, data = Path(args.out), Path(args.data)
    if out.resolve() == data.resolve():
        raise BadInputError(out, "--out is the --data folder; write the synthetic set elsewhere")
    refuse_existing([out / name for name in DATASET_FILES], args.overwrite)
    translator, checkpoint_info = None, {}
    if args.pix2pix:
        check_input_file(args.pix2pix, "pix2pix checkpoint")
        translator, checkpoint_info = _translator(args.pix2pix, _device(args.device))
    from cytobench.synth.cells import CellBank
    from cytobench.synth.copy_paste import CopyPasteParams
    from cytobench.synth.dataset import make_synthetic_set

    bank = CellBank(data)
    print(f"copying {bank.describe()}")
    step = max(1, args.n // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            print(f"  {done}/{total} images", flush=True)

    try:
        summary = make_synthetic_set(
            bank,
            out,
            args.n,
            seed=args.seed,
            size=tuple(args.size) if args.size else None,
            cells_per_image=args.cells,
            params=CopyPasteParams(max_overlap=args.max_overlap, edge_sigma=args.edge_sigma),
            translator=translator,
            val_fraction=args.val_fraction,
            progress=progress,
            info=checkpoint_info,
        )
    except (ValueError, OSError) as err:  # bad argument or unwritable --out: one line, no traceback
        raise CytobenchError(f"synth make: {err}") from None
    split = "train.json + val.json" if (out / "val.json").is_file() else "train.json"
    print(f"wrote {summary.n_images} synthetic images with {summary.n_cells} cells to {out} ({split})")
    if summary.n_short:
        print(
            f"  {summary.n_short} image(s) hold fewer cells than asked: no further cell fitted within the "
            f"overlap bound {args.max_overlap} (raise --max-overlap or lower --cells)"
        )
    if summary.phase_only:
        print(
            "  no --pix2pix given: this is the phase-domain set only (planes = [phase]); give a checkpoint of "
            "`cytobench synth pix2pix-train` to add the two brightfield planes"
        )


def _translator(path: str, device: str) -> tuple[Any, dict[str, Any]]:
    """A ``(phase, seed) -> (2, H, W)`` translator from a pix2pix checkpoint, and what to record of it."""
    from cytobench.synth.pix2pix import load_pix2pix, translate

    model, blob = load_pix2pix(path, device)
    generator = model.generator

    def run(phase: Any, seed: int) -> Any:
        return translate(generator, phase, seed, device=device)

    return run, {"pix2pix": str(path), "pix2pix_epoch": int(blob.get("epoch", 0))}


# ---------------------------------------------------------------------------------------------- fid
def _is_dataset(folder: Path) -> bool:
    return any((folder / name).is_file() for name in DATASET_FILES)


def dataset_planes(folder: Path, plane: int) -> list[Path]:
    """Files of plane ``plane`` of every image in a data set folder's json files.

    Raises:
        BadInputError: an image without that plane (e.g. a phase-only synthetic set).
    """
    from cytobench.io.coco import load_coco
    from cytobench.synth.cells import image_root, plane_file

    files: list[Path] = []
    for name in DATASET_FILES:
        path = folder / name
        if not path.is_file():
            continue
        coco = load_coco(path)
        root = image_root(folder, coco)
        for info in coco["images"]:
            if len(info.get("planes") or []) < 3:
                raise BadInputError(
                    path,
                    f"has no brightfield planes (planes = {info.get('planes')}): a phase-only set "
                    "(made without --pix2pix)?",
                    f"image {info['id']}",
                )
            files.append(root / plane_file(info, plane, path, PLANE_NAMES[plane]))
    return files


def _grey(path: Path) -> Any:
    from cytobench.io.images import read_image

    return read_image(path).array.mean(axis=2)


def run_fid(args: argparse.Namespace) -> None:
    """``synth fid``: per brightfield plane, the Frechet distance of real and fake image features."""
    from cytobench.io.files import dumps_json
    from cytobench.io.images import list_images
    from cytobench.synth.fid import ImageStatisticsFeatures, InceptionFeatures, fid

    check_ranges([("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1")])
    real, fake = Path(args.real), Path(args.fake)
    for folder in (real, fake):
        if not folder.is_dir():
            raise BadInputError(folder, "folder not found")
    if _is_dataset(real) != _is_dataset(fake):
        raise BadInputError(
            fake, f"compare two data set folders or two image folders (--real {real} is not alike)"
        )
    if _is_dataset(real):
        sets = {
            f"fid/{name}": (dataset_planes(real, i), dataset_planes(fake, i))
            for i, name in PLANE_NAMES.items()
        }
    else:
        sets = {"fid/images": (list_images([real]), list_images([fake]))}
    for real_files, fake_files in sets.values():
        for folder, files in ((real, real_files), (fake, fake_files)):
            if len(files) < 2:
                raise BadInputError(
                    folder, f"holds {len(files)} image(s); a Frechet distance needs >= 2 per set"
                )
    if args.features:
        check_input_file(args.features, "Inception-v3 weights")
        extractor: Any = InceptionFeatures(args.features, device=_device(args.device))
    else:
        extractor = ImageStatisticsFeatures()
    print(f"features: {extractor.name}")
    first_real, first_fake = next(iter(sets.values()))
    report: dict[str, Any] = {
        "extractor": extractor.name,
        "inception": bool(args.features),
        "n_real": len(first_real),
        "n_fake": len(first_fake),
    }
    for key, (real_files, fake_files) in sets.items():
        report[key] = fid(
            (_grey(p) for p in real_files),
            (_grey(p) for p in fake_files),
            extractor,
            batch_size=args.batch_size,
        )
    if not args.features:
        print("  (no --features: a stand-in extractor; give torchvision Inception-v3 weights for FID proper)")
    print(dumps_json(report, indent=2))
