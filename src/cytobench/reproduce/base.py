"""The one base of every ``cytobench reproduce`` table: paper numbers, held-out test set, loop, report.

A table module needs four things, all here:

1. **The paper's numbers** as package data: :func:`load_paper` reads
   ``cytobench/reproduce/papers/<name>.yaml`` through :mod:`importlib.resources`, so an installed
   wheel has them as well as a source checkout.
2. **A held-out test set** rebuilt from a checkpoint's own data config: :func:`held_out_test_set`
   reads the simulator and its settings from the config's ``prepare`` node
   (:func:`simulator_settings`, one list of keys that are not image settings), simulates the set once
   with another seed into a folder named by its content, and returns a :class:`TestSet`.
3. **The evaluation loop**: :func:`run_on_test_set` feeds the set's images (and ground truth) to the
   one streaming loop :func:`cytobench.engine.inference.inference_on_dataset`; :func:`in_batches`
   does the same for sets held in memory (e.g. simulated QD frames).
4. **Ours beside the paper's**: :func:`format_beside_paper` (markdown rows ``<name> (paper)`` and
   ``<name> (ours)``) and :func:`write_report` (``<stem>.md`` + ``<stem>.json``, written atomically);
   plots go beside them through :mod:`cytobench.reporting`.

A new table, in short::

    paper = load_paper("mypaper_table1")
    model, info = load_model_from_checkpoint(checkpoint, device)
    test_set = held_out_test_set(info["data_config"], n_images=50, seed=2024, cache_dir=out / "test_data")
    metrics = run_on_test_set(model, test_set, CocoEvaluator(...), device)
    table = format_beside_paper(["method", *columns], paper["rows"], {"ours": [metrics[k] for k in keys]})
    write_report(out, "table1", table, {"paper": paper, "ours": metrics, "table": table})
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from cytobench.errors import BadInputError, CytobenchError
from cytobench.io.files import atomic_file, write_json_atomic
from cytobench.reporting.tables import format_table

__all__ = [
    "NOT_SIMULATOR_SETTINGS",
    "TEST_SEED_OFFSET",
    "TestSet",
    "checkpoint_configs",
    "check_scale",
    "coco_loader",
    "format_beside_paper",
    "held_out_test_set",
    "in_batches",
    "load_paper",
    "load_test_data",
    "run_on_test_set",
    "simulator_settings",
    "write_report",
    "write_text_atomic",
]

TEST_SEED_OFFSET = 10_000  # default test seed = the training data's seed + this
# keys of a data config's ``prepare`` node that are not settings of the images (besides any "_..." key)
# prepare keys that are not image settings: where and how many, and the arguments of a prepare that derives a
# view of the simulation (data=brightfield_instances: its folder and plane selection)
NOT_SIMULATOR_SETTINGS = frozenset(
    {"simulator", "out_dir", "n_images", "seed", "val_fraction", "instances_dir", "planes"}
)


# ------------------------------------------------------------------------------------------ paper
def load_paper(name: str) -> dict[str, Any]:
    """The paper's numbers of one table module: ``cytobench/reproduce/papers/<name>.yaml`` (package data).

    Args:
        name: file stem, e.g. ``"qd_table1"``, ``"fish_table1"``, ``"deepace_tables"``.
    """
    resource = resources.files("cytobench.reproduce").joinpath("papers", f"{name}.yaml")
    if not resource.is_file():
        raise CytobenchError(f"no paper numbers named {name!r} in cytobench/reproduce/papers/")
    return yaml.safe_load(resource.read_text(encoding="utf-8"))


def check_scale(scale: str, scales: Mapping[str, Any]) -> Any:
    """``scales[scale]``, or a one-line error naming the known scales."""
    if scale not in scales:
        raise CytobenchError(f"unknown scale {scale!r}: use one of {sorted(scales)}")
    return scales[scale]


# ------------------------------------------------------------------------------------------ test set
class TestSet(NamedTuple):
    """A simulated held-out test set on disk: COCO ground truth ``annotations.json`` and its images."""

    __test__ = False  # not a pytest test class

    ann_file: Path
    images_dir: Path
    seed: int

    def load_targets(self) -> tuple[list[dict[str, Any]], list[Path]]:
        """Ground truth per image and the image paths (:func:`load_test_data`)."""
        return load_test_data(self.ann_file, self.images_dir)

    def loader(self, batch_size: int = 1, with_targets: bool = True) -> torch.utils.data.DataLoader:
        """Batches of ``(images, targets)`` in file order (:func:`coco_loader`)."""
        return coco_loader(self.ann_file, self.images_dir, batch_size, with_targets)


def simulator_settings(
    data_config: Mapping[str, Any], default_simulator: str | None = None
) -> tuple[str, dict[str, Any], int | None]:
    """The simulator, its image settings and its seed, from a checkpoint's ``data_config``.

    Args:
        data_config: the resolved ``data`` node saved in a training checkpoint: its ``prepare`` node
            (:func:`cytobench.data.prepare.ensure_simulated`) names the simulator and its arguments.
        default_simulator: import path used when the config names none.

    Returns:
        ``(simulator import path, settings, training seed or None)``: every ``prepare`` key except
        :data:`NOT_SIMULATOR_SETTINGS` and keys starting with ``_``; ``size`` falls back to ``data.size``
        and is ints (``[W, H]`` or one side).
    """
    prepare = dict(data_config.get("prepare") or {})
    simulator = prepare.get("simulator")
    path = simulator.get("path") if isinstance(simulator, Mapping) else simulator
    path = path or default_simulator
    if not path:
        raise BadInputError("data config", "names no simulator (data.prepare.simulator)")
    settings = {
        k: v for k, v in prepare.items() if not str(k).startswith("_") and k not in NOT_SIMULATOR_SETTINGS
    }
    if "size" not in settings:
        if "size" not in data_config:
            raise BadInputError("data config", "names no image size (data.size or data.prepare.size)")
        settings["size"] = data_config["size"]
    size = settings["size"]
    settings["size"] = [int(v) for v in size] if isinstance(size, (list, tuple)) else int(size)
    seed = prepare.get("seed", data_config.get("sim_seed"))
    return str(path), settings, None if seed is None else int(seed)


def held_out_test_set(
    data_config: Mapping[str, Any],
    n_images: int,
    seed: int | None = None,
    cache_dir: str | Path | None = None,
    *,
    default_simulator: str | None = None,
) -> TestSet:
    """Simulate (once; cached) a held-out test set like a checkpoint's training data, with another seed.

    The set goes to ``cache_dir/test_{W}x{H}_n{n_images}_seed{seed}_{hash}`` (the hash covers the
    simulator and every setting), so sets of different checkpoints never collide and a second call
    reuses the first one's images.

    Args:
        data_config: the checkpoint's ``data_config`` (see :func:`simulator_settings`).
        n_images: number of test images (>= 1).
        seed: simulator seed; default the training seed + :data:`TEST_SEED_OFFSET`. It must differ from
            the training data's seed (the same seed would reproduce training images).
        cache_dir: parent folder of cached test sets; default ``$CYTOBENCH_DATA_DIR/test_sets``
            (or ``data/test_sets``).
        default_simulator: import path used when the config names no simulator.

    Returns:
        The :class:`TestSet` (``annotations.json``, ``images/``, seed).
    """
    from hydra.utils import get_method

    from cytobench.data.prepare import ensure_simulated

    simulator, settings, train_seed = simulator_settings(data_config, default_simulator)
    seed = (train_seed or 0) + TEST_SEED_OFFSET if seed is None else int(seed)
    if train_seed is not None and seed == train_seed:
        raise BadInputError(
            "--seed", f"{seed} is the training data's simulation seed: the test set would be training images"
        )
    if int(n_images) < 1:
        raise CytobenchError(f"a test set needs at least one image, got n_images={n_images}")
    if cache_dir is None:
        cache_dir = Path(os.environ.get("CYTOBENCH_DATA_DIR", "data")) / "test_sets"
    spec = json.dumps({"simulator": simulator, **settings}, sort_keys=True)
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    size = settings["size"]
    width, height = (size, size) if isinstance(size, int) else size
    folder = Path(cache_dir) / f"test_{width}x{height}_n{int(n_images)}_seed{seed}_{digest}"
    ensure_simulated(get_method(simulator), out_dir=folder, n_images=int(n_images), seed=seed, **settings)
    return TestSet(folder / "annotations.json", folder / "images", seed)


def load_test_data(ann_file: str | Path, images_dir: str | Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """Ground truth per image (:func:`cytobench.io.coco_convert.coco_to_targets`) and the image paths."""
    from cytobench.io.coco import load_coco
    from cytobench.io.coco_convert import coco_to_targets

    gt = load_coco(ann_file)
    targets = coco_to_targets(gt)
    paths = [Path(images_dir) / img["file_name"] for img in gt["images"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BadInputError(
            ann_file, f"{len(missing)} images not found in {images_dir}, e.g. {missing[0].name}"
        )
    return targets, paths


def coco_loader(
    ann_file: str | Path, images_dir: str | Path, batch_size: int = 1, with_targets: bool = True
) -> torch.utils.data.DataLoader:
    """Batches of ``(images, targets)`` of a COCO set in file order.

    Args:
        ann_file / images_dir: the COCO ground truth and its image folder.
        batch_size: images per batch.
        with_targets: targets carry the ground truth (boxes, labels, ...); without, only ``image_id`` and
            ``meta`` (file name, size), e.g. for a :class:`~cytobench.engine.predict.CocoResultsWriter`.
    """
    from torch.utils.data import DataLoader

    from cytobench.data.collate import detection_collate
    from cytobench.data.image_list import ImageListDataset
    from cytobench.io.coco import load_coco

    if with_targets:
        targets, paths = load_test_data(ann_file, images_dir)
        dataset = ImageListDataset(paths, [t["image_id"] for t in targets], targets)
    else:
        images = load_coco(ann_file)["images"]
        dataset = ImageListDataset(
            [Path(images_dir) / img["file_name"] for img in images], [img["id"] for img in images]
        )
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)


# ------------------------------------------------------------------------------------------ loop
def run_on_test_set(
    model: torch.nn.Module,
    test_set: TestSet,
    evaluator: Any,
    device: torch.device | str = "cpu",
    *,
    batch_size: int = 1,
    with_targets: bool = True,
) -> Any:
    """Score ``model`` on a test set through :func:`~cytobench.engine.inference.inference_on_dataset`.

    Args:
        model: a model of the cytobench contract (``model(images) -> list[Prediction]``).
        test_set: the set (:func:`held_out_test_set`).
        evaluator: an evaluator, or ``{mode: evaluator}`` for a model with ``predict_modes``.
        device: where the model runs.
        batch_size: images per forward pass.
        with_targets: pass the ground truth to the evaluators (see :func:`coco_loader`).

    Returns:
        The loop's metrics (``{mode: metrics}`` for a mapping of evaluators).
    """
    from cytobench.engine.inference import inference_on_dataset

    return inference_on_dataset(model, test_set.loader(batch_size, with_targets), evaluator, device)


def in_batches(
    images: Sequence[torch.Tensor] | torch.Tensor, targets: Sequence[Mapping[str, Any]], batch_size: int
) -> list[tuple[list[torch.Tensor], list[Mapping[str, Any]]]]:
    """A test set held in memory as the loop's ``(images, targets)`` batches, in order.

    Args:
        images: N images (C, H, W), a list or one (N, C, H, W) tensor.
        targets: N targets (with ``image_id`` and the ground truth the evaluators need).
        batch_size: images per batch.
    """
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    return [
        (list(images[i : i + batch_size]), list(targets[i : i + batch_size]))
        for i in range(0, len(targets), batch_size)
    ]


def checkpoint_configs(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_config, data_config)`` of a torch training checkpoint or a YOLO run's checkpoint (its
    ``cytobench`` metadata), without building the model."""
    from cytobench.io.checkpoint import load_checkpoint
    from cytobench.models.yolo_checkpoint import CKPT_KEY, is_yolo_checkpoint

    ckpt = load_checkpoint(path)
    if is_yolo_checkpoint(ckpt):
        ckpt = ckpt.get(CKPT_KEY) or {}
    if not isinstance(ckpt, Mapping) or not ckpt.get("model_config") or not ckpt.get("data_config"):
        raise BadInputError(path, "not a cytobench training checkpoint (no model_config / data_config)")
    return dict(ckpt["model_config"]), dict(ckpt["data_config"])


# ------------------------------------------------------------------------------------------ report
def format_beside_paper(
    header: Sequence[str],
    paper: Mapping[str, Sequence[object]],
    ours: Mapping[str, Sequence[object]],
    *,
    pairs: Mapping[str, str] | None = None,
    repeats: Mapping[str, int] | None = None,
    extra: Sequence[Sequence[object]] = (),
    digits: int = 2,
) -> str:
    """Markdown table of the paper's rows and ours.

    Args:
        header: column names, the first one over the row labels.
        paper: ``{row name: cells}`` as the paper prints them, labelled ``"<name> (paper)"``.
        ours: ``{row name: cells}`` of our results, labelled ``"<name> (ours)"``.
        pairs: ``{paper row: our row}``: each paper row is followed by its own (labelled with the
            paper's name); ours without a paper row are left out. Without it the paper's rows come
            first, then ours.
        repeats: ``{our row: K}``: those rows are labelled ``"(ours, n=K)"`` (cells as mean +- std).
        extra: rows appended as they are (e.g. p-values).
        digits: decimals of float cells (strings are printed as they are).
    """
    repeats = repeats or {}

    def our_row(label: str, key: str) -> list[object]:
        tag = f" (ours, n={repeats[key]})" if key in repeats else " (ours)"
        return [f"{label}{tag}", *ours[key]]

    rows: list[list[object]] = []
    if pairs is None:
        rows += [[f"{name} (paper)", *cells] for name, cells in paper.items()]
        rows += [our_row(name, name) for name in ours]
    else:
        for name, cells in paper.items():
            rows.append([f"{name} (paper)", *cells])
            if pairs.get(name) in ours:
                rows.append(our_row(name, pairs[name]))
    rows += [list(row) for row in extra]
    return format_table(header, rows, digits=digits)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (its folder is created)."""
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


def write_report(
    out_dir: str | Path, stem: str, table: str, result: Any | None = None, *, indent: int | None = 2
) -> list[Path]:
    """``<stem>.md`` (the table) and ``<stem>.json`` (``result``, if given) in ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    written = [write_text_atomic(out_dir / f"{stem}.md", table + "\n")]
    if result is not None:
        written.append(write_json_atomic(out_dir / f"{stem}.json", result, indent=indent))
    return written
