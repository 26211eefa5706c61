"""Trained karyotype detectors for the karyotyping tables (:mod:`cytobench.reproduce.karyotype_tables`):
which row and data kind a checkpoint belongs to, collecting them from runs or files, and scoring one on a
held-out test set with the karyotype evaluator (classes mapped to 1-22, X, Y by the checkpoint's names)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cytobench.errors import BadInputError
from cytobench.evaluation.karyotype import KaryotypeEvaluator
from cytobench.reproduce.base import TestSet, checkpoint_configs, simulator_settings

if TYPE_CHECKING:
    import torch

__all__ = [
    "add_held_out_arguments",
    "check_one_variant_per_row",
    "held_out_images",
    "DATA_KINDS",
    "KIND_TITLES",
    "MODEL_ROWS",
    "KaryotypeModel",
    "data_kind",
    "model_row",
    "model_variant",
    "models_from_checkpoints",
    "models_from_runs",
    "score_model",
    "truth_class_map",
]

#: data kind -> the simulator whose data it is (``data.prepare.simulator``), and its title in the tables
DATA_KINDS = {
    "karyogram": "cytobench.simulate.karyogram.simulate_karyogram",
    "spread": "cytobench.simulate.metaphase.simulate_metaphase",
}
KIND_TITLES = {"karyogram": "karyograms", "spread": "metaphase spreads"}
#: model builder (``model._target_``) -> our row
MODEL_ROWS = {
    "cytobench.models.yolo.build_yolo": "YOLOv8",
    "cytobench.models.faster_rcnn.build_faster_rcnn": "Faster R-CNN",
    "cytobench.models.rfcn.build_rfcn": "R-FCN",
    "cytobench.models.ssd.build_ssd": "SSD",
    "cytobench.models.two_stage.build_two_stage": "Two-stage",
}


# ------------------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class KaryotypeModel:
    """One trained karyotype detector to score.

    Attributes:
        checkpoint: its weights (``best.pt``).
        row: our table row (:data:`MODEL_ROWS`).
        kind: the data it was trained on (:data:`DATA_KINDS`).
        variant: backbone / architecture, for the json and the notes.
        data_config: the resolved ``data`` node it was trained with (the test set's settings).
        source: the run folder or checkpoint named on the command line.
    """

    checkpoint: Path
    row: str
    kind: str
    variant: str
    data_config: dict[str, Any]
    source: str


def model_row(model_config: Mapping[str, Any], source: str | Path = "checkpoint") -> str:
    """Our row of a model config (:data:`MODEL_ROWS`).

    Raises:
        BadInputError: the model is none of the five karyotype models.
    """
    target = str(model_config.get("_target_", ""))
    if target not in MODEL_ROWS:
        known = ", ".join(MODEL_ROWS.values())
        raise BadInputError(source, f"a {target or 'unknown'} model; Table 5.1 compares {known}")
    return MODEL_ROWS[target]


def model_variant(model_config: Mapping[str, Any]) -> str:
    """What the model is inside its row: YOLO's architecture, the R-CNNs' backbone, SSD's variant."""
    target = str(model_config.get("_target_", ""))
    if target.endswith("build_yolo"):
        return Path(str(model_config.get("arch", "?"))).stem
    if target.endswith("build_ssd"):
        return str(model_config.get("variant", "ssdlite320_mobilenet_v3_large"))
    if target.endswith("build_two_stage"):
        detector = model_config.get("detector") or {}
        if str(detector.get("_target_", "")).endswith("build_yolo_detector"):
            return "YOLO detector (trained before) + crop classifier"
        return f"{detector.get('backbone', '?')} detector + crop classifier"
    backbone = str(model_config.get("backbone", "?"))
    stride = int(model_config.get("output_stride", 16))
    return backbone if stride == 16 else f"{backbone}, output stride {stride}"


def check_one_variant_per_row(models: Sequence[KaryotypeModel]) -> None:
    """Refuse models of one row and data kind that differ in :func:`model_variant`: a row averages repeats of
    one model (seeds), so R-FCN at stride 16 and at stride 8, or two different two-stage detectors, would be
    averaged into one number without a word.

    Raises:
        BadInputError: naming the row, its variants and a source of each.
    """
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for model in models:
        groups.setdefault((model.kind, model.row), {}).setdefault(model.variant, model.source)
    for (kind, row), variants in groups.items():
        if len(variants) > 1:
            listed = "; ".join(f"{variant} ({source})" for variant, source in variants.items())
            raise BadInputError(
                "--runs / --checkpoint",
                f"{row} models of different kinds on {kind} data ({listed}): a row averages repeats of one "
                "model; score each in its own command (its own --out)",
            )


def data_kind(data_config: Mapping[str, Any], source: str | Path = "checkpoint") -> str:
    """``"karyogram"`` or ``"spread"``: the 24-class data a model was trained on.

    Raises:
        BadInputError: the data config names another simulator, or one-class (``label_mode`` not
            ``karyotype``) metaphase spreads.
    """
    try:
        simulator = simulator_settings(data_config)[0]
    except BadInputError:
        simulator = ""
    prepare = data_config.get("prepare") or {}
    if simulator == DATA_KINDS["karyogram"]:
        return "karyogram"
    if simulator == DATA_KINDS["spread"] and prepare.get("label_mode") == "karyotype":
        return "spread"
    raise BadInputError(
        source,
        f"trained on {simulator or 'data without a simulator'}"
        f"{'' if simulator != DATA_KINDS['spread'] else ' with one class'}; the karyotype tables need "
        "data=karyogram or data=karyotype_spreads (24 classes)",
    )


def _model(checkpoint: Path, model_config: Mapping[str, Any], data_config: Mapping[str, Any], source: str):
    return KaryotypeModel(
        checkpoint,
        model_row(model_config, source),
        data_kind(data_config, source),
        model_variant(model_config),
        dict(data_config),
        source,
    )


def models_from_checkpoints(paths: Sequence[str | Path]) -> list[KaryotypeModel]:
    """One :class:`KaryotypeModel` per checkpoint file (configs read from the file)."""
    return [_model(Path(p), *checkpoint_configs(p), str(p)) for p in paths]


def models_from_runs(roots: Sequence[str | Path]) -> list[KaryotypeModel]:
    """The finished runs below ``roots`` with a ``checkpoints/best.pt`` (others are named on stderr)."""
    from cytobench.reproduce.runs import runs_with_checkpoint

    return [
        _model(checkpoint, run.config.get("model") or {}, run.config.get("data") or {}, str(run.path))
        for checkpoint, run in runs_with_checkpoint(roots)
    ]


# ------------------------------------------------------------------------------------------------ scoring
class _ClassIdEvaluator(KaryotypeEvaluator):
    """:class:`KaryotypeEvaluator` on class ids 1-24: the model's labels and the truth's category ids mapped
    by name; detections of an unknown label are dropped. Keeps the first ``keep`` images' detections."""

    def __init__(
        self, label_map: Mapping[int, int], truth_map: Mapping[int, int], keep: int, **kwargs: Any
    ) -> None:
        self.label_map, self.truth_map, self.keep = dict(label_map), dict(truth_map), int(keep)
        self.kept: list[dict[str, np.ndarray]] = []
        super().__init__(**kwargs)

    def process_image(self, target: Any, pred: Any) -> None:
        from cytobench.evaluation.base import to_numpy

        classes = np.array(
            [self.label_map.get(int(v), 0) for v in to_numpy(pred["labels"]).ravel()], np.int64
        )
        known = classes > 0
        mapped = {
            "boxes": to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)[known],
            "scores": to_numpy(pred["scores"]).astype(np.float64).ravel()[known],
            "labels": classes[known],
        }
        truth = dict(target)
        truth["labels"] = np.array(
            [self.truth_map[int(v)] for v in to_numpy(target["labels"]).ravel()], dtype=np.int64
        )
        super().process_image(truth, mapped)
        if len(self.kept) < self.keep:
            self.kept.append(mapped)


def truth_class_map(test_set: TestSet) -> dict[int, int]:
    """Category id -> class id (1-24) of the test set's ground truth, by category name."""
    from cytobench.io.coco import load_coco
    from cytobench.simulate.chromosomes import CLASS_NAMES

    categories = load_coco(test_set.ann_file)["categories"]
    unknown = [c["name"] for c in categories if str(c["name"]) not in CLASS_NAMES]
    if unknown:
        raise BadInputError(test_set.ann_file, f"categories {unknown[:3]} are not chromosome classes")
    return {int(c["id"]): CLASS_NAMES.index(str(c["name"])) + 1 for c in categories}


def score_model(
    model: KaryotypeModel,
    test_set: TestSet,
    device: Any = "cpu",
    *,
    score_thr: float = 0.5,
    keep: int = 1,
    trust: bool = False,
    pair_prior: bool | None = None,
    adjust: Callable[[torch.nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Score one checkpoint on a test set with the karyotype evaluator.

    Args:
        pair_prior: the pair prior as cell post-processing, on or off: a YOLO karyotyper's own
            (``YoloModel``'s ``pair_prior``; None: as the run saved it); for SSD and R-FCN, whose detections
            carry per-class scores (``gives_class_scores``), True wraps the model in
            :class:`~cytobench.models.karyotype_cell.PairPriorCells`. Other models ignore it.
        adjust: called with the loaded model before scoring, to change its prediction settings (e.g. the
            two-stage model's ``cell_score_thr``: experiments/karyotype/two_stage_settings.py).

    Returns:
        ``{"metrics": unprefixed summary, "confusion": 24 x 24 list, "karyotypes": per image,
        "predictions": the first ``keep`` images' detections (lists, class ids 1-24),
        "switchable_prior": whether ``pair_prior`` applies to this model}``.
    """
    from cytobench.engine.predict import load_model_from_checkpoint
    from cytobench.karyotype.command import karyotype_label_map
    from cytobench.models.karyotype_cell import PairPriorCells, columns_from_label_map
    from cytobench.models.yolo import YoloModel
    from cytobench.reproduce.base import run_on_test_set

    net, info = load_model_from_checkpoint(model.checkpoint, device, trust=trust)
    label_map = karyotype_label_map(info, model.checkpoint)
    own_prior = isinstance(net, YoloModel) and net.task == "detect"
    wrappable = bool(getattr(net, "gives_class_scores", False))
    if own_prior and pair_prior is not None:
        net.pair_prior = bool(pair_prior)
    if adjust is not None:
        adjust(net)
    if wrappable and pair_prior:
        net = PairPriorCells(net, columns_from_label_map(label_map))
    evaluator = _ClassIdEvaluator(label_map, truth_class_map(test_set), keep, score_thr=score_thr)
    run_on_test_set(net, test_set, evaluator, device)
    result = evaluator.result()
    return {
        "metrics": result.summary(),
        "confusion": result.confusion.tolist(),
        "karyotypes": evaluator.karyotypes(),
        "predictions": [{k: v.tolist() for k, v in p.items()} for p in evaluator.kept],
        "switchable_prior": own_prior or wrappable,
    }


def add_held_out_arguments(parser: Any) -> None:
    """``--checkpoint``, ``--test-json`` and ``--images`` of the scripts that score one karyotype checkpoint
    on a held-out set a ``cytobench reproduce karyotype/...`` run wrote (experiments/karyotype/)."""
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--test-json", type=Path, required=True, help="OUT/test_data/<set>/annotations.json")
    parser.add_argument("--images", type=Path, default=None, help="default: images/ beside --test-json")


def held_out_images(args: Any) -> Path:
    """The images folder of :func:`add_held_out_arguments`' test set: ``--images`` or ``images/`` beside the json."""
    return args.images or args.test_json.parent / "images"
