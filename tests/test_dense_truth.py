"""Dense truth end to end: stacked planes, semantic / amodal / map rasterisation, augmentation, a semantic
model trained by the shared trainer and scored by the pixel evaluator."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from torch.utils.data import DataLoader

from cytobench.data import CocoDetectionDataset, build_transforms, detection_collate
from cytobench.data.rasterize import overlap_map, semantic_map
from cytobench.errors import BadInputError, CorruptAnnotation, UnreadableImage
from cytobench.io.coco_convert import annotation_to_mask, encode_mask
from cytobench.io.images import write_image

H, W = 24, 32
NUCLEUS_POLYGON = [[4.0, 4.0, 8.0, 4.0, 8.0, 8.0, 4.0, 8.0]]


def _rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[r0:r1, c0:c1] = 1
    return mask


CELL_A = _rect(2, 12, 2, 14)  # no amodal outline: fully visible
CELL_B_FULL = _rect(8, 20, 10, 32)  # touches the right image edge; its top-left lies under cell A
CELL_B = CELL_B_FULL & (1 - CELL_A)
NUCLEUS = _rect(4, 8, 4, 8)  # inside cell A


def _ann(ann_id: int, image_id: int, category: int, mask: np.ndarray, **extra: Any) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "bbox": bbox,
        "area": int(mask.sum()),
        "iscrowd": 0,
        "segmentation": encode_mask(mask),
        **extra,
    }


def _plane(k: int) -> np.ndarray:
    """uint8 plane k: a value unique to (plane, row, column) up to 255."""
    rows, cols = np.mgrid[0:H, 0:W]
    return (40 * k + 2 * cols + rows).astype(np.uint8)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Image 1: three planes, cells A and B (B partly hidden under A, amodal RLE) and a nucleus inside A
    (amodal polygon); image 2: three planes, no objects, map files for weights, semantic and overlap."""
    root = tmp_path_factory.mktemp("dense")
    for image_id in (1, 2):
        for k in range(3):
            write_image(root / f"s{image_id}_p{k}.png", _plane(k) + image_id - 1)
    rng = np.random.default_rng(0)
    np.save(root / "w2.npy", rng.random((H, W)).astype(np.float32))
    write_image(root / "s2_classes.png", rng.integers(0, 4, (H, W)).astype(np.uint8))
    tifffile.imwrite(root / "o2.tif", rng.integers(0, 2, (H, W)).astype(np.uint8))
    images = [
        {
            "id": i,
            "file_name": f"s{i}_p0.png",
            "width": W,
            "height": H,
            "planes": [f"s{i}_p{k}.png" for k in range(3)],
        }
        for i in (1, 2)
    ]
    images[1]["maps"] = {"weights": "w2.npy", "semantic": "s2_classes.png", "overlap": "o2.tif"}
    data = {
        "images": images,
        "categories": [{"id": 5, "name": "cell"}, {"id": 9, "name": "nucleus"}],
        "annotations": [
            _ann(1, 1, 5, CELL_A),
            _ann(2, 1, 5, CELL_B, amodal_segmentation=encode_mask(CELL_B_FULL)),
            _ann(3, 1, 9, NUCLEUS, amodal_segmentation=NUCLEUS_POLYGON),
        ],
    }
    ann_file = root / "dense.json"
    ann_file.write_text(json.dumps(data))
    return root, ann_file


def _ring(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image edge repeats, so it is no outside)."""
    m = np.pad(mask.astype(bool), 1, mode="edge")
    interior = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~interior


def test_planes_are_stacked_as_channels_in_the_listed_order(sample: tuple[Path, Path]) -> None:
    image, target = CocoDetectionDataset(*sample)[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    for k in range(3):
        np.testing.assert_allclose(image[k].numpy(), _plane(k) / 255.0, atol=1e-6)
    assert target["meta"]["planes"] == ["s1_p0.png", "s1_p1.png", "s1_p2.png"]
    image, target = CocoDetectionDataset(*sample, planes=[2, 0])[0]
    np.testing.assert_allclose(image.numpy(), np.stack([_plane(2), _plane(0)]) / 255.0, atol=1e-6)
    assert target["meta"]["planes"] == ["s1_p2.png", "s1_p0.png"]


def test_plane_faults_are_one_line_errors(sample: tuple[Path, Path], tmp_path: Path) -> None:
    root, ann_file = sample
    with pytest.raises(
        CorruptAnnotation, match=r"image 1: has 3 plane\(s\) but the data set selects planes \[3\]"
    ):
        CocoDetectionDataset(root, ann_file, planes=[3])[0]
    data = json.loads(ann_file.read_text())
    write_image(tmp_path / "small.png", np.zeros((H, W - 1), np.uint8))
    data["images"][0]["planes"] = [str(root / "s1_p0.png"), str(tmp_path / "small.png")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(
        CorruptAnnotation, match=f"image 1: size {W}x{H} in the json differs from {W - 1}x{H} of"
    ):
        CocoDetectionDataset(root, bad)[0]
    data["images"][0]["planes"] = ["s1_p0.png", "missing.png"]
    bad.write_text(json.dumps(data))
    with pytest.raises(UnreadableImage, match="missing.png: file not found"):
        CocoDetectionDataset(root, bad)[0]
    data["images"][0]["planes"] = "s1_p0.png"
    bad.write_text(json.dumps(data))
    with pytest.raises(CorruptAnnotation, match="'planes' must be a non-empty list of file names"):
        CocoDetectionDataset(root, bad)[0]


def test_semantic_map_paints_categories_in_order_with_a_border_class(sample: tuple[Path, Path]) -> None:
    ds = CocoDetectionDataset(*sample, with_semantic=True)
    assert ds.num_semantic_classes == 3 and ds.semantic_class_names == ["background", "cell", "nucleus"]
    semantic = ds[0][1]["semantic"]
    assert semantic.dtype == torch.int64 and semantic.shape == (H, W)
    expected = np.zeros((H, W), np.int64)
    expected[(CELL_A | CELL_B) > 0] = 1
    expected[NUCLEUS > 0] = 2  # the later category lies on top
    np.testing.assert_array_equal(semantic.numpy(), expected)

    reordered = CocoDetectionDataset(*sample, with_semantic=True, semantic_order=["nucleus", "cell"])
    np.testing.assert_array_equal(reordered[0][1]["semantic"].numpy(), np.minimum(expected, 1))

    bordered = CocoDetectionDataset(
        *sample, with_semantic=True, semantic_border=1, semantic_border_categories=["cell"]
    )
    assert bordered.num_semantic_classes == 4 and bordered.semantic_class_names[-1] == "border"
    expected[_ring(CELL_A) | _ring(CELL_B)] = 3
    got = bordered[0][1]["semantic"].numpy()
    np.testing.assert_array_equal(got, expected)
    assert got[11, 14] == 3  # B's visible edge along the cell on top of it
    assert got[12, W - 1] == 1  # the image edge is no border
    thick = CocoDetectionDataset(*sample, with_semantic=True, semantic_border=2)[0][1]["semantic"].numpy()
    inner_a = CELL_A & ~_ring(CELL_A)
    assert (thick[_ring(CELL_A) | _ring(inner_a)] == 3).all() and thick[6, 10] == 1
    assert (thick[NUCLEUS > 0] == 3).all()  # every category has a border; 2 px eat a 4 x 4 nucleus


def test_amodal_masks_fall_back_to_visible_and_overlap_counts_one_category(sample: tuple[Path, Path]) -> None:
    ds = CocoDetectionDataset(*sample, with_masks=True, with_amodal_masks=True, maps=["overlap"])
    _, target = ds[0]
    amodal = target["amodal_masks"]
    assert amodal.dtype == torch.uint8 and amodal.shape == (3, H, W)
    np.testing.assert_array_equal(amodal[0].numpy(), CELL_A)  # no amodal field: the visible mask
    np.testing.assert_array_equal(amodal[1].numpy(), CELL_B_FULL)  # RLE
    polygon = annotation_to_mask({"segmentation": NUCLEUS_POLYGON}, H, W)
    np.testing.assert_array_equal(amodal[2].numpy(), polygon)  # polygon
    np.testing.assert_array_equal(target["masks"][1].numpy(), CELL_B)
    assert target["overlap"].dtype == torch.uint8
    np.testing.assert_array_equal(target["overlap"].numpy(), CELL_A & CELL_B_FULL)  # not the nucleus in A
    assert target["overlap"].sum() == 16


def test_maps_and_semantic_come_from_the_image_entry_files_raw(sample: tuple[Path, Path]) -> None:
    root, ann_file = sample
    ds = CocoDetectionDataset(root, ann_file, with_semantic=True, maps=["weights", "overlap"])
    _, target = ds[1]
    np.testing.assert_array_equal(target["weights"].numpy(), np.load(root / "w2.npy"))
    assert target["weights"].dtype == torch.float32
    classes = np.asarray(__import__("cv2").imread(str(root / "s2_classes.png"), -1))
    np.testing.assert_array_equal(target["semantic"].numpy(), classes)  # labels as stored, not scaled
    np.testing.assert_array_equal(target["overlap"].numpy(), tifffile.imread(root / "o2.tif"))
    with pytest.raises(
        CorruptAnnotation, match=r"image 1: has no 'weights' file in its 'maps' and 'weights' cannot"
    ):
        ds[0]


def test_bad_dense_options_and_map_files_are_reported(sample: tuple[Path, Path], tmp_path: Path) -> None:
    root, ann_file = sample
    with pytest.raises(BadInputError, match="semantic_order names unknown category 'cytoplasm'"):
        CocoDetectionDataset(root, ann_file, semantic_order=["cytoplasm"])
    with pytest.raises(BadInputError, match="map name 'masks' is reserved"):
        CocoDetectionDataset(root, ann_file, maps=["masks"])
    data = json.loads(ann_file.read_text())
    np.save(tmp_path / "float_classes.npy", np.zeros((H, W), np.float32))
    data["images"][1]["maps"]["semantic"] = str(tmp_path / "float_classes.npy")
    data["annotations"][1]["amodal_segmentation"] = {"size": [H + 1, W], "counts": "abc"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    ds = CocoDetectionDataset(root, bad, with_semantic=True, with_amodal_masks=True)
    with pytest.raises(UnreadableImage, match="a class map must hold integer classes, got float32"):
        ds[1]
    with pytest.raises(
        CorruptAnnotation, match=r"annotation 2: amodal_segmentation RLE size \[25, 32\] differs"
    ):
        ds[0]


ALL_DENSE = dict(with_semantic=True, semantic_border=1, with_amodal_masks=True, maps=["overlap"])


def test_dense_options_are_off_by_default_and_do_not_change_the_other_tensors(
    sample: tuple[Path, Path],
) -> None:
    pipeline = dict(hflip=0.5, vflip=0.5, rotate90=0.5, brightness_contrast=0.5, crop=20)
    plain = CocoDetectionDataset(
        *sample, transforms=build_transforms(True, **pipeline), with_masks=True, seed=3
    )
    dense = CocoDetectionDataset(
        *sample, transforms=build_transforms(True, **pipeline), with_masks=True, seed=3, **ALL_DENSE
    )
    _, target = plain[0]
    assert set(target) == {"boxes", "labels", "iscrowd", "area", "masks", "image_id", "meta"}
    for epoch in range(3):
        plain.set_epoch(epoch)
        dense.set_epoch(epoch)
        for index in range(len(plain)):
            (a_image, a), (b_image, b) = plain[index], dense[index]
            assert torch.equal(a_image, b_image)
            assert all(torch.equal(a[k], b[k]) for k in ("boxes", "labels", "iscrowd", "area", "masks"))


def test_augmented_dense_truth_equals_truth_rebuilt_from_augmented_masks(sample: tuple[Path, Path]) -> None:
    compose = build_transforms(
        True, hflip=0.5, vflip=0.5, rotate90=0.5, crop=16, min_visibility=0.0, min_area=0.0
    )
    ds = CocoDetectionDataset(*sample, transforms=compose, with_masks=True, seed=1, **ALL_DENSE)
    for epoch in range(8):
        ds.set_epoch(epoch)
        _, t = ds[0]
        size = t["semantic"].shape
        labels, masks = t["labels"].numpy(), t["masks"].numpy()
        assert size == (16, 16) and t["amodal_masks"].shape == (len(labels), *size)
        rebuilt = semantic_map(masks, labels, *size, border_label=3, border_width=1)
        # borders are the objects' own: where a crop edge cuts an object the rebuilt map sees none, and
        # where an object's real edge lies on the crop edge only the data set's map knows it
        np.testing.assert_array_equal(t["semantic"].numpy()[1:-1, 1:-1], rebuilt[1:-1, 1:-1])
        np.testing.assert_array_equal(
            t["overlap"].numpy(), overlap_map(t["amodal_masks"].numpy(), labels, *size)
        )


# ----------------------------------------------------------- a semantic model through trainer + evaluator


def _learnable_set(root: Path, n: int, seed: int) -> Path:
    """Two planes per image: bright rectangles ("cell") on plane 0, pure noise on plane 1."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n + 1):
        masks = []
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, 20, 2)
            h, w = rng.integers(5, 12, 2)
            masks.append(np.zeros((32, 32), np.uint8))
            masks[-1][r : r + h, c : c + w] = 1
        union = np.max(masks, axis=0)
        write_image(
            root / f"s{seed}_{i}_bf.png", (0.2 + 0.5 * union + rng.normal(0, 0.05, union.shape)).clip(0, 1)
        )
        write_image(root / f"s{seed}_{i}_noise.png", rng.random((32, 32)))
        images.append(
            {
                "id": i,
                "file_name": f"s{seed}_{i}_bf.png",
                "width": 32,
                "height": 32,
                "planes": [f"s{seed}_{i}_bf.png", f"s{seed}_{i}_noise.png"],
            }
        )
        for mask in masks:
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": bbox,
                    "segmentation": encode_mask(mask),
                }
            )
    ann_file = root / f"set{seed}.json"
    ann_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]})
    )
    return ann_file


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_segnet_learns_through_the_shared_trainer_and_pixel_evaluator(tmp_path: Path) -> None:
    from cytobench.engine.checkpoint import seed_everything
    from cytobench.engine.hooks import EvalHook, Hook
    from cytobench.engine.schedule import build_optimizer, build_scheduler
    from cytobench.engine.trainer import Trainer
    from cytobench.evaluation import PixelEvaluator
    from cytobench.models.tiny_segnet import build_tiny_segnet

    train_json, val_json = _learnable_set(tmp_path, 8, seed=0), _learnable_set(tmp_path, 4, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only contend
    dense = dict(with_semantic=True, maps=["overlap"])  # an extra map rides along untouched by the model
    train_set = CocoDetectionDataset(
        tmp_path, train_json, build_transforms(True, hflip=0.5, vflip=0.5), **dense
    )
    val_set = CocoDetectionDataset(tmp_path, val_json, **dense)
    seed_everything(0)
    loader = DataLoader(train_set, batch_size=2, shuffle=False, collate_fn=detection_collate)
    val_loader = DataLoader(val_set, batch_size=2, collate_fn=detection_collate)
    model = build_tiny_segnet(train_set.num_classes, in_channels=2, width=8, num_layers=3)
    optimizer = build_optimizer(model.parameters(), name="adamw", lr=0.02, weight_decay=0.0)
    epochs = 12
    scheduler = build_scheduler(optimizer, steps_per_epoch=len(loader), max_epochs=epochs, name="constant")

    class Losses(Hook):
        values: list[float] = []

        def after_step(self, trainer: Trainer, losses: dict[str, float]) -> None:
            self.values.append(losses["loss_semantic"])

    losses = Losses()
    evaluator = PixelEvaluator(num_classes=train_set.num_semantic_classes)
    trainer = Trainer(
        model,
        loader,
        optimizer,
        scheduler,
        max_epochs=epochs,
        device=torch.device("cpu"),
        hooks=[losses, EvalHook(evaluator, val_loader, period=6)],
        progress=False,
    )
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert len(losses.values) == 4 * epochs and len(trainer.history) == 2
    assert np.mean(losses.values[-4:]) < 0.3 * np.mean(losses.values[:4])
    first, last = trainer.history[0], trainer.history[-1]
    keys = {f"pix/{m}_c{c}" for m in ("accuracy", "precision", "recall", "f1", "iou") for c in (0, 1)}
    assert keys | {"pix/pixel_accuracy", "pix/miou", "pix/miou_fg"} <= set(last)
    assert all(0.0 <= v <= 1.0 for k, v in last.items() if k.startswith("pix/") and not math.isnan(v))
    fg = np.mean([val_set[i][1]["semantic"].float().mean().item() for i in range(len(val_set))])
    assert last["pix/iou_c1"] > max(0.7, 2 * fg)  # all-foreground guessing scores IoU = fg fraction
    assert last["pix/miou"] > first["pix/miou"] - 0.05 and last["pix/pixel_accuracy"] > 0.9
    assert evaluator.state()["confusion"].sum() == len(val_set) * 32 * 32  # compact state: pixel counts


def test_configs_train_a_semantic_model_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    """``model=tiny_segnet evaluator=pixel`` on toy data with semantic maps, through ``train.py``'s run."""
    from cytobench.train import run
    from tests.conftest import compose_config

    overrides = [
        "model=tiny_segnet",
        "evaluator=pixel",
        "trainer=smoke",
        "trainer.monitor=pix/miou",
        "trainer.optimizer.name=adamw",
        "logger=csv",
        "data=toy",
        "data.n_images=8",
        "data.size=32",
        "+data.num_semantic_classes=3",
        "+data.train.with_semantic=true",
        "+data.val.with_semantic=true",
        "model.width=4",
        "model.num_layers=2",
    ]
    cfg = compose_config(overrides, tmp_path, data_dir)
    assert cfg.evaluator.num_classes == 3 and cfg.model.in_channels == 3 and cfg.model.extra_classes == 0
    run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    latest = metrics["latest"]
    assert {"pix/miou", "pix/iou_c0", "pix/iou_c1", "pix/iou_c2", "pix/pixel_accuracy"} <= set(latest)
    assert all(0.0 <= v <= 1.0 for k, v in latest.items() if k.startswith("pix/") and v == v)
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
