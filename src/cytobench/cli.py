"""``cytobench`` command line: train, eval, predict, simulate, reproduce, export, import.

Every command reads and writes COCO json so that any model or external tool can be scored.
Bad input stops with one line naming the file, the item and the fault (exit code 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cytobench.cli_checks import (
    add_trust_checkpoint_argument,
    check_against_ground_truth,
    check_images_of,
    check_input_file,
    check_output_file,
    check_ranges,
    check_reproduce_inputs,
)
from cytobench.cli_simulate import add_simulate_parser
from cytobench.errors import BadInputError, CytobenchError

#: help of ``--trust-checkpoint`` (predict, fish analyze, reproduce fish/table1)
EVAL_KINDS = ("coco-bbox", "coco-segm", "coco-keypoints", "enumeration", "localization")


# ------------------------------------------------------------------------------------------------ eval
def evaluate_files(
    kind: str,
    gt_path: str | Path,
    pred_path: str | Path,
    *,
    iou_thr: float = 0.5,
    score_thr: float = 0.5,
    eps: Sequence[float] = (1.0, 2.0, 3.0),
    max_dets: Sequence[int] | None = None,
    overlap_tau: float = 0.5,
    livecell: bool = False,
) -> dict[str, float]:
    """Score a COCO results file against a COCO ground-truth file; returns namespaced metrics.

    ``max_dets``: COCO's maxDets; None = (1, 10, 100), or LIVECell's (100, 500, 2000) with ``livecell``.
    ``livecell`` (coco-bbox / coco-segm): the ground truth is LIVECell json (annotations keyed by id are
    read too, :func:`cytobench.io.livecell.load_livecell`) and it is scored under LIVECell's protocol:
    its maxDets and area ranges (small < 18^2, medium 18^2 - 31^2, large > 31^2 pixels) with the
    categories pooled (class-agnostic) and, for segm, each prediction's area measured by its mask.

    Raises:
        BadInputError: a threshold out of range (score and IoU thresholds in [0, 1], eps > 0, maxDets >= 1),
            or ``livecell`` with a kind other than coco-bbox / coco-segm.
    """
    if livecell and kind not in ("coco-bbox", "coco-segm"):
        raise BadInputError("--livecell", f"applies to coco-bbox and coco-segm, not {kind}")
    if max_dets is None:
        max_dets = (100, 500, 2000) if livecell else (1, 10, 100)
    check_ranges(
        [
            ("--score-thr", score_thr, 0.0 <= score_thr <= 1.0, "in [0, 1]"),
            ("--iou-thr", iou_thr, 0.0 < iou_thr <= 1.0, "in (0, 1]"),
            ("--overlap-tau", overlap_tau, overlap_tau >= 0.0, ">= 0"),
            ("--eps", list(eps), all(e > 0 and math.isfinite(e) for e in eps), "finite and > 0"),
            ("--max-dets", list(max_dets), all(m >= 1 for m in max_dets), ">= 1"),
        ]
    )
    from cytobench.evaluation import EnumerationEvaluator, LocalizationEvaluator, evaluate_coco
    from cytobench.io.coco import load_coco, load_coco_results
    from cytobench.io.coco_convert import coco_to_targets, results_to_predictions

    if livecell:
        from cytobench.io.livecell import load_livecell

        gt = load_livecell(gt_path)
    else:
        gt = load_coco(gt_path)
    results = load_coco_results(pred_path, gt)
    if kind.startswith("coco-"):
        iou_type = kind.removeprefix("coco-")
        if iou_type == "keypoints" and not any(c.get("keypoints") for c in gt["categories"]):
            raise BadInputError(gt_path, "no category defines keypoints, so keypoint AP is undefined")
        area_ranges = None
        if livecell:
            from cytobench.evaluation.coco import LIVECELL_AREA_RANGES, class_agnostic_coco, without_boxes

            gt, results = class_agnostic_coco(gt, results)  # fresh per-item dicts, still ours to consume
            if iou_type == "segm":  # measured by their masks, as LIVECell's evaluation
                results = without_boxes(results)
            area_ranges = LIVECELL_AREA_RANGES
        try:
            metrics = evaluate_coco(
                gt, results, iou_type, max_dets=tuple(max_dets), area_ranges=area_ranges, copy_inputs=False
            )
        except BadInputError as err:  # the evaluator names its inputs "ground truth" / "predictions"
            if err.path not in ("ground truth", "predictions"):
                raise
            raise type(err)(
                gt_path if err.path == "ground truth" else pred_path, err.fault, err.item
            ) from None
        return {f"coco/{iou_type}_{k}": v for k, v in metrics.items()}
    targets = coco_to_targets(gt)
    predictions = results_to_predictions(results, [img["id"] for img in gt["images"]])
    if kind == "enumeration":
        evaluator: Any = EnumerationEvaluator(score_thr=score_thr, iou_thr=iou_thr, overlap_tau=overlap_tau)
    else:
        evaluator = LocalizationEvaluator(eps=tuple(eps))
    evaluator.process(targets, predictions)
    return evaluator.compute()


def _cmd_eval(args: argparse.Namespace) -> None:
    if args.out:
        check_output_file(args.out, args.overwrite)
    metrics = evaluate_files(
        args.kind,
        args.gt,
        args.pred,
        iou_thr=args.iou_thr,
        score_thr=args.score_thr,
        eps=args.eps,
        max_dets=args.max_dets,
        overlap_tau=args.overlap_tau,
        livecell=args.livecell,
    )
    from cytobench.io.files import dumps_json, write_json_atomic

    if args.out:
        write_json_atomic(args.out, metrics, indent=2)
    print(dumps_json(metrics, indent=2))


# --------------------------------------------------------------------------------------------- predict
def _cmd_predict(args: argparse.Namespace) -> None:
    from cytobench.engine.predict import predict_images
    from cytobench.io.coco import load_coco, save_coco, save_coco_results
    from cytobench.io.images import list_images

    check_ranges(
        [
            ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
            ("--tile", args.tile, args.tile is None or args.tile >= 0, ">= 0 (0: never tile)"),
            (
                "--tile-overlap",
                args.tile_overlap,
                args.tile_overlap is None or args.tile_overlap >= 0,
                ">= 0",
            ),
            ("--scale", args.scale, args.scale > 0 and math.isfinite(args.scale), "finite and > 0"),
        ]
    )
    index_path = Path(args.out).with_suffix(".images.json")
    for path in (args.out, index_path):
        check_output_file(path, args.overwrite)
    maps_dir = Path(args.out).with_suffix(".maps")  # dense models (SEU-Net, tiny_segnet): PNGs + maps.json
    if maps_dir.exists() and any(maps_dir.iterdir()) and not args.overwrite:
        raise BadInputError(
            maps_dir, "already exists and is not empty (give --overwrite to replace its maps)"
        )
    check_input_file(args.checkpoint, "checkpoint")
    images = list_images(args.images)
    if args.planes:  # one file per plane: a sample is named by its first plane
        images = [p for p in images if p.stem.endswith(args.planes[0])]
        if not images:
            raise BadInputError(args.images[0], f"no image whose name ends in {args.planes[0]!r} (--planes)")
    gt = load_coco(args.gt) if args.gt else None
    image_ids = None
    if gt is not None:  # number the images as the ground truth does, so `cytobench eval` can score the output
        by_name = {img["file_name"]: img["id"] for img in gt["images"]}
        missing = [p.name for p in images if p.name not in by_name]
        if missing:
            raise BadInputError(
                args.gt, f"has no image named {missing[0]} ({len(missing)} of the given images missing)"
            )
        image_ids = [by_name[p.name] for p in images]
    results, dataset = predict_images(
        args.checkpoint,
        images,
        device=args.device,
        batch_size=args.batch_size,
        image_ids=image_ids,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        scale=args.scale,
        trust=args.trust_checkpoint,
        maps_folder=maps_dir,
        plane_suffixes=args.planes,
    )
    if gt is not None:
        check_against_ground_truth(args.gt, gt, dataset)
    save_coco_results(args.out, results)
    save_coco(index_path, dataset)
    print(f"wrote {len(results)} detections on {len(images)} images to {args.out} (image ids: {index_path})")
    if (maps_dir / "maps.json").exists():
        print(f"wrote dense maps (PNG per image and head, RLE masks in maps.json) to {maps_dir}")


# ------------------------------------------------------------------------------------------------ fish
def _cmd_fish_analyze(args: argparse.Namespace) -> None:
    from cytobench.fish.command import find_fish_images, run_analyze

    run_analyze(args, *find_fish_images(args.images))


def _cmd_karyotype(args: argparse.Namespace) -> None:
    from cytobench.karyotype.command import run_karyotype

    run_karyotype(args)


def _cmd_reproduce(args: argparse.Namespace) -> None:
    from cytobench.reproduce import load_reproduction

    try:
        module, reproduce = load_reproduction(args.name)
    except KeyError as err:
        raise CytobenchError(str(err.args[0])) from None
    parser = argparse.ArgumentParser(prog=f"cytobench reproduce {args.name}", description=module.__doc__)
    module.add_arguments(parser)
    options = parser.parse_args(args.rest)
    check_reproduce_inputs(options)
    reproduce(options)


def _cmd_export_yolo(args: argparse.Namespace) -> None:
    from cytobench.io.files import refuse_existing
    from cytobench.io.yolo import export_yolo

    refuse_existing(Path(args.out) / "labels" / args.split, args.overwrite)
    check_images_of(args.gt, args.images)  # all there before anything is written
    mapping = export_yolo(args.gt, args.images, args.out, split=args.split, task=args.task)
    print(f"exported {args.gt} to YOLO format in {args.out} (class ids: {mapping})")


def _import_class_names(args: argparse.Namespace) -> list[str] | None:
    """``--classes a,b,...`` / ``--classes karyotype`` / ``--classes-file F`` of ``import``; None if neither."""
    from cytobench.io.voc import parse_class_names, read_class_names

    if args.classes is not None:
        return parse_class_names(args.classes)
    if args.classes_file is not None:
        return read_class_names(args.classes_file)
    return None


def _cmd_import(args: argparse.Namespace) -> None:
    from cytobench.io.coco import save_coco

    check_output_file(args.out, args.overwrite)  # refused before anything is read
    if args.import_format == "voc":
        from cytobench.io.voc import import_voc

        data = import_voc(args.xml, args.images, _import_class_names(args), difficult=args.difficult)
        source = args.xml
    else:
        from cytobench.io.yolo import import_yolo, read_yolo_names

        names = read_yolo_names(args.data) if args.data else _import_class_names(args)
        data = import_yolo(args.labels, args.images, names or [])
        source = args.labels
    save_coco(args.out, data)
    print(
        f"imported {len(data['images'])} images, {len(data['annotations'])} objects and "
        f"{len(data['categories'])} categories from {source} into {args.out}"
    )


# ----------------------------------------------------------------------------------------------- train
def _cmd_train(overrides: list[str]) -> None:
    from cytobench.train import main as train_main

    sys.argv = ["cytobench train", *overrides]
    train_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cytobench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("train", help="train an experiment (same as `python train.py`; Hydra overrides follow)")

    ev = sub.add_parser("eval", help="score COCO predictions against COCO ground truth; prints json metrics")
    ev.add_argument("kind", choices=EVAL_KINDS)
    ev.add_argument("--gt", required=True, help="COCO ground-truth dataset json")
    ev.add_argument("--pred", required=True, help="COCO results json (list of detections)")
    ev.add_argument("--iou-thr", type=float, default=0.5, help="enumeration: IoU to count a match")
    ev.add_argument("--score-thr", type=float, default=0.5, help="enumeration: keep detections >= this score")
    ev.add_argument("--overlap-tau", type=float, default=0.5, help="enumeration: IoG sum defining S_o")
    ev.add_argument("--eps", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="localization: pixels")
    ev.add_argument(
        "--max-dets",
        type=int,
        nargs=3,
        default=None,
        help="coco: maxDets (default 1 10 100; --livecell: 100 500 2000)",
    )
    ev.add_argument(
        "--livecell",
        action="store_true",
        help="coco-bbox / coco-segm: LIVECell json (annotations keyed by id are read too) scored by LIVECell's "
        "protocol: maxDets 100 500 2000, areas small < 18^2, medium 18^2-31^2, large > 31^2, classes pooled",
    )
    ev.add_argument("--out", help="also write the metrics json here")
    ev.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ev.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="run a trained checkpoint on images; writes COCO results json")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument(
        "--planes",
        nargs="+",
        metavar="SUFFIX",
        help="samples stored as one file per plane, stacked as channels in this order, e.g. "
        "`--planes _bf_lower _bf_upper` for SEU-Net's two focal planes (x_bf_lower.png + x_bf_upper.png)",
    )
    add_trust_checkpoint_argument(pr)
    pr.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    pr.add_argument("--out", required=True, help="results json to write")
    pr.add_argument("--gt", help="COCO ground truth whose image ids (matched by file name) the results use")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--batch-size", type=int, default=2)
    pr.add_argument(
        "--overwrite", action="store_true", help="replace --out (and its .images.json) if they exist"
    )
    pr.add_argument(
        "--tile",
        type=int,
        help="window side in px for images larger than the training images (default: the run's training "
        "image size, used for images over 1.5 times it; 0: never tile)",
    )
    pr.add_argument(
        "--tile-overlap", type=int, help="overlap of neighbouring windows in px (default: tile / 4)"
    )
    pr.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="resize images by this factor before inference, e.g. training pixel size / these images' "
        "pixel size (results stay in the images' own pixels)",
    )
    pr.set_defaults(func=_cmd_predict)

    add_simulate_parser(sub)

    from cytobench.fish.command import add_analyze_arguments

    fish = sub.add_parser("fish", help="interphase-FISH analysis: nuclei, signal counts, mosaicism")
    fish_sub = fish.add_subparsers(dest="fish_command", required=True)
    fish_an = fish_sub.add_parser("analyze", help="segment nuclei, count red/green signals, report mosaicism")
    add_analyze_arguments(fish_an)
    fish_an.set_defaults(func=_cmd_fish_analyze)

    from cytobench.karyotype.command import add_karyotype_arguments

    kar = sub.add_parser(
        "karyotype", help="karyograms, ISCN karyotypes and a summary from a 24-class chromosome detector"
    )
    add_karyotype_arguments(kar)
    kar.set_defaults(func=_cmd_karyotype)

    from cytobench.synth.command import add_synth_commands

    add_synth_commands(sub)  # synth pix2pix-train | make | fid (handlers in cytobench/synth/command.py)

    rep = sub.add_parser("reproduce", help="print a paper's table beside ours (e.g. qd/table1)")
    rep.add_argument("name", help="which table, e.g. qd/table1")
    rep.add_argument("rest", nargs=argparse.REMAINDER, help="its options (see `cytobench reproduce NAME -h`)")
    rep.set_defaults(func=_cmd_reproduce)

    ex = sub.add_parser("export", help="convert a COCO dataset to another format")
    ex_sub = ex.add_subparsers(dest="format", required=True)
    yolo = ex_sub.add_parser("yolo", help="YOLO detect/segment labels + data.yaml")
    yolo.add_argument("--gt", required=True)
    yolo.add_argument("--images", required=True)
    yolo.add_argument("--out", required=True)
    yolo.add_argument("--split", default="train")
    yolo.add_argument("--task", choices=("detect", "segment"), default="detect")
    yolo.add_argument("--overwrite", action="store_true", help="replace this split if --out already has it")
    yolo.set_defaults(func=_cmd_export_yolo)

    im = sub.add_parser(
        "import", help="convert labels of another format (PASCAL-VOC / LabelImg xml, YOLO) to COCO"
    )
    im_sub = im.add_subparsers(dest="import_format", required=True)
    classes_help = (
        "class names in category id order, comma-separated (e.g. 1,2,...,22,X,Y), or 'karyotype' for the 24 "
        "chromosome classes 1..22, X, Y"
    )
    classes_file_help = "text file of class names, one per line (e.g. LabelImg's classes.txt)"
    voc = im_sub.add_parser("voc", help="a folder of PASCAL-VOC / LabelImg xml files (boxes) -> COCO json")
    voc.add_argument("--xml", required=True, help="folder of .xml files (one per image; subfolders included)")
    voc.add_argument(
        "--images", help="folder of the images (default: beside the xml files); sizes are checked"
    )
    voc_classes = voc.add_mutually_exclusive_group()
    voc_classes.add_argument("--classes", help=f"{classes_help} (default: the names found, naturally sorted)")
    voc_classes.add_argument("--classes-file", help=classes_file_help)
    voc.add_argument(
        "--difficult",
        choices=("crowd", "keep", "skip"),
        default="crowd",
        help="objects marked difficult become iscrowd=1 (ignored by the evaluators), ordinary objects, or nothing",
    )
    voc.add_argument("--out", required=True, help="COCO json to write")
    voc.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    voc.set_defaults(func=_cmd_import)
    yimp = im_sub.add_parser("yolo", help="YOLO detect / segment label files -> COCO json")
    yimp.add_argument("--labels", required=True, help="folder of .txt label files (e.g. labels/train)")
    yimp.add_argument("--images", required=True, help="folder of the images they label (e.g. images/train)")
    yimp_classes = yimp.add_mutually_exclusive_group(required=True)
    yimp_classes.add_argument("--data", help="ultralytics data.yaml whose 'names' name the class ids")
    yimp_classes.add_argument("--classes", help=f"{classes_help}; YOLO class k is the k-th name")
    yimp_classes.add_argument("--classes-file", help=classes_file_help)
    yimp.add_argument("--out", required=True, help="COCO json to write")
    yimp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    yimp.set_defaults(func=_cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from cytobench.tool_dirs import use_private_tool_dirs

    use_private_tool_dirs()  # before torch / matplotlib load: their caches stay out of HOME and TMPDIR
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        _cmd_train(argv[1:])
        return
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CytobenchError as err:
        print(str(err), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
