"""CocoDetectionDataset on the toy set: item format, label mapping, masks vs boxes, reproducible augmentation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cytobench.data import CocoDetectionDataset, build_transforms, detection_collate, seed_worker
from cytobench.errors import CorruptAnnotation
from cytobench.simulate.toy import simulate_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Toy set with category ids remapped to 7 (cell) and 3 (debris), an empty image and a crowd."""
    out = tmp_path_factory.mktemp("toy")
    data = json.loads(simulate_toy(6, out, size=(80, 64), seed=5, min_objects=2, max_objects=5).read_text())
    remap = {1: 7, 2: 3}
    for cat in data["categories"]:
        cat["id"] = remap[cat["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = remap[ann["category_id"]]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 6]  # image 6: no objects
    crowd = dict(data["annotations"][0], id=999, iscrowd=1)
    data["annotations"].append(crowd)
    ann_file = out / "remapped.json"
    ann_file.write_text(json.dumps(data))
    return out / "images", ann_file


def _dataset(toy: tuple[Path, Path], **kwargs: Any) -> CocoDetectionDataset:
    return CocoDetectionDataset(toy[0], toy[1], with_masks=True, with_keypoints=True, **kwargs)


def test_item_shapes_dtypes_and_meta(toy: tuple[Path, Path]) -> None:
    ds = _dataset(toy)
    assert len(ds) == 6 and ds.num_classes == 3 and ds.category_names == ["cell", "debris"]
    image, target = ds[0]
    n = len(target["boxes"])
    assert image.shape == (3, 64, 80) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
    assert target["masks"].shape == (n, 64, 80) and target["masks"].dtype == torch.uint8
    assert target["keypoints"].shape == (n, 1, 3) and target["keypoints"].dtype == torch.float32
    assert target["iscrowd"].dtype == torch.int64 and target["area"].dtype == torch.float32
    assert target["image_id"] == 1
    assert target["meta"] == {"file_name": "toy_00000.png", "orig_size": (64, 80), "pixel_size_um": None}


def test_labels_are_contiguous_in_category_order(toy: tuple[Path, Path]) -> None:
    ds = _dataset(toy)
    assert ds.cat_ids == [7, 3]
    assert ds.label_to_cat_id == {1: 7, 2: 3} and ds.cat_id_to_label == {7: 1, 3: 2}
    gt = json.loads(toy[1].read_text())
    for index in range(len(ds)):
        _, target = ds[index]
        image_id = target["image_id"]
        expected = [
            ds.cat_id_to_label[a["category_id"]]
            for a in gt["annotations"]
            if a["image_id"] == image_id and not a["iscrowd"]
        ]
        assert target["labels"].tolist() == expected  # crowd annotation 999 is skipped


def test_masks_and_keypoints_agree_with_boxes(toy: tuple[Path, Path]) -> None:
    ds = _dataset(toy)
    for index in range(len(ds)):
        _, target = ds[index]
        for box, mask, kp in zip(target["boxes"], target["masks"], target["keypoints"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            mask_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert torch.allclose(mask_box, box, atol=1.5)
            centre = (box[:2] + box[2:]) / 2
            assert torch.allclose(kp[0, :2], centre, atol=1e-3) and kp[0, 2] == 2


def test_image_without_annotations_gives_empty_target(toy: tuple[Path, Path]) -> None:
    _, target = _dataset(toy, transforms=build_transforms(True, hflip=1.0))[5]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 64, 80) and target["keypoints"].shape == (0, 1, 3)


def test_augmentation_is_a_function_of_seed_epoch_index(toy: tuple[Path, Path]) -> None:
    pipeline = dict(hflip=0.5, vflip=0.5, rotate90=0.5, brightness_contrast=0.8)
    a = _dataset(toy, transforms=build_transforms(True, **pipeline), seed=1)
    b = _dataset(toy, transforms=build_transforms(True, **pipeline), seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    for index in (4, 0, 2):  # any order, separate instances
        (ia, ta), (ib, tb) = a[index], b[index]
        assert (
            torch.equal(ia, ib)
            and torch.equal(ta["boxes"], tb["boxes"])
            and torch.equal(ta["masks"], tb["masks"])
        )
    epoch3 = [a[i][0] for i in range(4)]
    a.set_epoch(4)
    epoch4 = [a[i][0] for i in range(4)]
    assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(epoch3, epoch4))
    a.set_epoch(3)
    assert all(torch.equal(a[i][0], epoch3[i]) for i in range(4))  # resuming epoch 3 replays it
    other_seed = _dataset(toy, transforms=build_transforms(True, **pipeline), seed=2)
    other_seed.set_epoch(3)
    assert any(not torch.equal(other_seed[i][0], epoch3[i]) for i in range(4))


def test_dataloader_workers_reproduce_direct_indexing(toy: tuple[Path, Path]) -> None:
    ds = _dataset(toy, transforms=build_transforms(True, hflip=0.5, brightness_contrast=0.5), seed=4)
    ds.set_epoch(2)
    direct = [ds[i][0] for i in range(len(ds))]
    loader = DataLoader(
        ds, batch_size=2, num_workers=2, collate_fn=detection_collate, worker_init_fn=seed_worker
    )
    images, targets = [], []
    for batch_images, batch_targets in loader:
        assert isinstance(batch_images, list) and isinstance(batch_targets, list)
        images += batch_images
        targets += batch_targets
    assert all(torch.equal(x, y) for x, y in zip(images, direct))
    assert [t["image_id"] for t in targets] == ds.image_ids


def test_callable_transform_gets_a_seeded_generator(toy: tuple[Path, Path]) -> None:
    def jitter(image: np.ndarray, target: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        return np.clip(image + rng.normal(0, 0.1, image.shape).astype(np.float32), 0, 1), target

    ds = CocoDetectionDataset(toy[0], toy[1], transforms=jitter, seed=0)
    assert torch.equal(ds[1][0], ds[1][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], CocoDetectionDataset(toy[0], toy[1], transforms=jitter, seed=0)[1][0])


def test_size_mismatch_between_json_and_image_is_reported(toy: tuple[Path, Path], tmp_path: Path) -> None:
    data = json.loads(toy[1].read_text())
    data["images"][0]["width"] = 81
    ann_file = tmp_path / "wrong.json"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(CorruptAnnotation) as info:
        CocoDetectionDataset(toy[0], ann_file)[0]
    assert str(info.value) == (
        f"CorruptAnnotation: {ann_file}: image 1: size 81x64 in the json differs from 80x64 of toy_00000.png"
    )
