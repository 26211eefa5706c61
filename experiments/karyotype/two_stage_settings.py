"""Is a whole cell's count limited by the two-stage model's settings or by its enumerator?

Scores one trained two-stage karyotyper (``experiment=karyotype_two_stage_yolo`` or ``karyotype_two_stage``)
on a held-out test set under several prediction settings: the enumerator's NMS IoU (a YOLO enumerator
only), the score that decides a detection (``product``: detector score x class probability, or
``detection``: the detector's alone) and the threshold at which a detection joins the cell
(``cell_score_thr``; the evaluator counts the same detections). Per setting: recall, precision, F1 and
class accuracy of the chromosomes, and the whole-cell count match and exact match.

    python experiments/karyotype/two_stage_settings.py \
        --checkpoint RUN/checkpoints/best.pt --test-json OUT/test_data/<set>/annotations.json \
        [--setting 0.7:product:0.5 0.7:detection:0.3 ...]

``--test-json``: a held-out set that ``cytobench reproduce karyotype/accuracy`` wrote under its ``--out``
(the same cells as its table; ``--images`` defaults to the ``images/`` folder beside it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

# detector NMS IoU : score mode : cell threshold; the first is the model's default
DEFAULT_SETTINGS = (
    "0.7:product:0.5",
    "0.7:detection:0.5",
    "0.7:detection:0.3",
    "0.7:detection:0.2",
    "0.5:detection:0.3",
    "0.9:detection:0.3",
)
COLUMNS = ("recall", "precision", "f1", "class_accuracy", "count_match", "exact_match")


def parse_setting(text: str) -> tuple[float | None, str, float]:
    """``"IOU:MODE:THR"`` -> ``(iou, mode, thr)``; ``IOU`` may be ``-`` (the detector's own)."""
    try:
        iou, mode, thr = text.split(":")
        return (None if iou == "-" else float(iou)), mode, float(thr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IOU:MODE:THR, e.g. 0.7:detection:0.3") from None


def settings_adjuster(iou: float | None, mode: str, thr: float) -> Any:
    """A ``score_model(adjust=...)`` callback setting a two-stage model's prediction settings."""

    def adjust(net: torch.nn.Module) -> None:
        if not hasattr(net, "cell_score_thr"):
            raise SystemExit(f"{type(net).__name__} is not a two-stage karyotyper")
        if iou is not None:
            if not hasattr(net.detector, "iou"):
                raise SystemExit(
                    f"the NMS IoU of a {type(net.detector).__name__} enumerator is not set here: use -"
                )
            net.detector.iou = iou
        net.score_mode, net.cell_score_thr = mode, thr

    return adjust


def score_settings(
    checkpoint: Path, test_json: Path, images: Path, settings: list[tuple[float | None, str, float]]
) -> list[dict[str, float]]:
    """The :data:`COLUMNS` of ``checkpoint`` on a COCO test set, per ``(iou, mode, thr)`` setting."""
    from cytobench.reproduce.base import TestSet
    from cytobench.reproduce.karyotype_models import models_from_checkpoints, score_model

    (model,) = models_from_checkpoints([checkpoint])
    test_set = TestSet(test_json, images, -1)
    rows = []
    for iou, mode, thr in settings:
        scored = score_model(model, test_set, "cpu", score_thr=thr, adjust=settings_adjuster(iou, mode, thr))
        rows.append({c: float(scored["metrics"][c]) for c in COLUMNS})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from cytobench.reproduce.karyotype_models import add_held_out_arguments, held_out_images

    add_held_out_arguments(parser)
    parser.add_argument("--setting", type=parse_setting, nargs="+", default=None)
    args = parser.parse_args(argv)
    settings = args.setting or [parse_setting(text) for text in DEFAULT_SETTINGS]
    images = held_out_images(args)
    print("| NMS IoU | score | cell thr. | " + " | ".join(COLUMNS) + " |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    for (iou, mode, thr), row in zip(
        settings, score_settings(args.checkpoint, args.test_json, images, settings)
    ):
        values = " | ".join(f"{row[c]:.3f}" for c in COLUMNS)
        print(f"| {'-' if iou is None else iou} | {mode} | {thr} | {values} |", flush=True)


if __name__ == "__main__":
    main()
