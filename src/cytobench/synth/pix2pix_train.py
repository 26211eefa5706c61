"""Train pix2pix on (phase -> brightfield) pairs of a brightfield data set (thesis Sec. 4.4.2).

Pairs are the planes of one sample: ``planes[2]`` (phase) is the input, ``planes[0]`` and ``planes[1]``
(lower and upper brightfield focal planes) the target. The thesis trains on its unannotated images; any
set in the brightfield contract works here, e.g. ``cytobench simulate brightfield`` output (its
``train.json``; ``val.json``, when present, gives a validation L1 per epoch).

Each step takes a random ``size`` x ``size`` crop (the same window in the three planes) and a random
horizontal / vertical flip, as pix2pix's jitter and mirroring; crop positions and the image order come
from ``numpy.random.default_rng([seed, epoch])``, the initialisation from ``seed``, and the training dropout
from torch's global RNG, seeded with ``seed`` when training starts. A CPU run is reproducible for a seed; on
a GPU, cuDNN's non-deterministic backward kernels let runs drift apart slightly. Validation uses the centre
crop of each val image, dropout on and a fixed seed (as at inference).

Checkpoints (:func:`~cytobench.synth.pix2pix.save_pix2pix`): ``OUT/last.pt`` after every epoch and
``OUT/best.pt`` at the lowest validation L1 (the last epoch when there is no val split).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytobench.errors import BadInputError
from cytobench.io.coco import load_coco
from cytobench.io.images import read_image
from cytobench.synth.cells import dataset_json, image_root, plane_file
from cytobench.synth.pix2pix import (
    Pix2Pix,
    Pix2PixConfig,
    save_pix2pix,
    to_model_range,
    train_step,
    translate,
)

__all__ = ["PairSource", "TrainResult", "train_pix2pix"]

PHASE, LOWER, UPPER = 2, 0, 1


class PairSource:
    """The (phase, brightfield) planes of a data set split, read on demand.

    Args:
        data_dir: the data set folder.
        split: ``train`` or ``val``.
        size: crop side; every image must be at least this large.

    Raises:
        BadInputError: no json for the split, an image without the three planes, or images smaller
            than ``size``.
    """

    def __init__(self, data_dir: str | Path, split: str, size: int) -> None:
        self.ann_file = dataset_json(data_dir, split)
        coco = load_coco(self.ann_file)
        if not coco["images"]:
            raise BadInputError(self.ann_file, "lists no images")
        self.root = image_root(data_dir, coco)
        self.files = [
            [
                plane_file(info, i, self.ann_file, name)
                for i, name in ((PHASE, "phase"), (LOWER, "bf_lower"), (UPPER, "bf_upper"))
            ]
            for info in coco["images"]
        ]
        small = [i for i in coco["images"] if min(int(i["height"]), int(i["width"])) < size]
        if small:
            raise BadInputError(
                self.ann_file,
                f"image {small[0]['id']} is {small[0]['width']}x{small[0]['height']}, smaller than the "
                f"{size} px training crop (give a smaller --size)",
            )
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.files)

    def planes(self, index: int) -> np.ndarray:
        """``(3, H, W)`` float32 in [0, 1]: phase, lower, upper."""
        arrays = [read_image(self.root / name).array[:, :, 0] for name in self.files[index]]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise BadInputError(
                self.root / self.files[index][0], f"its planes differ in size: {sorted(shapes)}"
            )
        return np.stack(arrays)

    def crop(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        """A ``(3, size, size)`` crop: random position and flips with ``rng``, the centre without."""
        planes = self.planes(index)
        height, width = planes.shape[1:]
        if rng is None:
            top, left = (height - self.size) // 2, (width - self.size) // 2
        else:
            top, left = int(rng.integers(height - self.size + 1)), int(rng.integers(width - self.size + 1))
        crop = planes[:, top : top + self.size, left : left + self.size]
        if rng is not None:
            if rng.random() < 0.5:
                crop = crop[:, :, ::-1]
            if rng.random() < 0.5:
                crop = crop[:, ::-1, :]
        return np.ascontiguousarray(crop)


@dataclass
class TrainResult:
    """Where the checkpoints are and the per-epoch history (mean losses, ``val_l1``, seconds)."""

    last: Path
    best: Path
    history: list[dict[str, float]]


def _batch(
    source: PairSource, indices: list[int], rng: np.random.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    crops = torch.from_numpy(np.stack([source.crop(i, rng) for i in indices])).to(device)
    crops = to_model_range(crops)
    return crops[:, :1], crops[:, 1:]


def validation_l1(model: Pix2Pix, source: PairSource, seed: int) -> float:
    """Mean L1 (in [0, 1] units) between translated and real centre crops of every image in ``source``."""
    errors = []
    for index in range(len(source)):
        crop = source.crop(index, None)
        fake = translate(model.generator, crop[0], seed=seed)
        errors.append(float(np.abs(fake - crop[1:]).mean()))
    return float(np.mean(errors))


def train_pix2pix(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 10,
    size: int = 256,
    seed: int = 0,
    batch_size: int = 1,
    width: int = 64,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train pix2pix on ``data_dir``'s train pairs and write checkpoints into ``out_dir``.

    Args:
        data_dir: brightfield data set folder (``train.json``, optional ``val.json``).
        out_dir: checkpoint folder (created; the caller refuses to replace existing checkpoints).
        epochs: passes over the train images (one random crop per image and pass).
        size: crop side, a power of two >= 32 (pix2pix: 256; the thesis: 512).
        seed: seed of the initialisation, crops, order and dropout.
        batch_size: crops per step (pix2pix: 1).
        width: generator / discriminator width (pix2pix: 64; 8 makes a CPU smoke run take seconds).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        log: receives one progress line per epoch.

    Raises:
        ValueError: an argument out of range; BadInputError: unusable data.
    """
    if epochs < 1 or batch_size < 1 or width < 1 or seed < 0:
        raise ValueError(
            f"epochs, batch_size and width must be >= 1 and seed >= 0, got {epochs}, {batch_size}, {width}, {seed}"
        )
    config = Pix2PixConfig.for_size(size, width=width, disc_width=width)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    train = PairSource(data_dir, "train", size)
    has_val = (Path(data_dir) / "val.json").is_file()
    val = PairSource(data_dir, "val", size) if has_val else None
    model = Pix2Pix.build(config, dev, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    best_l1 = float("inf")
    torch.manual_seed(seed)  # dropout draws during training
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(train)).tolist()
        sums: dict[str, float] = {}
        steps = 0
        for first in range(0, len(order), batch_size):
            phase, brightfield = _batch(train, order[first : first + batch_size], rng, dev)
            for key, value in train_step(model, phase, brightfield).items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
        record: dict[str, Any] = {"epoch": epoch, **{k: v / steps for k, v in sums.items()}}
        if val is not None:
            record["val_l1"] = validation_l1(model, val, seed)
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        last = save_pix2pix(model, out / "last.pt", epoch=epoch, history=history, seed=seed)
        score = record.get("val_l1", -epoch)  # without val: the latest epoch is the best
        if score < best_l1:
            best_l1 = score
            save_pix2pix(model, out / "best.pt", epoch=epoch, history=history, seed=seed)
        val_text = f"  val_L1 {record['val_l1']:.4f}" if "val_l1" in record else ""
        log(
            f"epoch {epoch}/{epochs}: loss_D {record['loss_d']:.4f}  loss_G {record['loss_g']:.4f} "
            f"(GAN {record['loss_g_gan']:.4f}, L1 {record['loss_g_l1']:.4f}){val_text}  [{record['seconds']:.1f} s]"
        )
    return TrainResult(last, out / "best.pt", history)
