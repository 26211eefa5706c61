"""Brightfield instance baselines: the cells-only data path (derived json, composites, targets, crops) and
the smoke experiments of Mask R-CNN, YOLOv8-seg and SEU-Net + watershed writing the same COCO keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cytobench.data.brightfield_instances import brightfield_instance_dataset, ensure_brightfield_instances
from cytobench.data.transforms import A, apply_transforms, build_transforms
from cytobench.errors import BadInputError
from cytobench.io.coco_convert import encode_mask
from cytobench.io.images import read_image, write_image
from cytobench.models.yolo import to_uint8_rgb
from cytobench.ops.instances import mask_boxes
from cytobench.simulate.brightfield import simulate_brightfield
from cytobench.train import run
from tests.conftest import compose_config

SMOKES = (  # Mask R-CNN ResNet-50-FPN: 64 s on a loaded 2-core machine; the others a few seconds
    pytest.param("mask_rcnn_brightfield_smoke", marks=pytest.mark.slow),
    "yolov8_seg_brightfield_smoke",
    "seunet_watershed_smoke",
    "sparse_seunet_smoke",
)
COCO_KEYS = {
    f"coco/segm_{s}" for s in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AR500", "AR2000")
} | {f"coco/segm_AR{s}" for s in "sml"}


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The derived folder of a tiny simulated set (6 images of 160 px, 2 planes)."""
    root = tmp_path_factory.mktemp("bf_instances") / "bf"
    return ensure_brightfield_instances(
        root / "instances",
        [0, 1],
        simulate_brightfield,
        root,
        n_images=6,
        size=160,
        seed=0,
        val_fraction=0.34,
    )


def test_derived_json_is_cells_only_with_the_selected_planes(instances: Path) -> None:
    source = json.loads((instances.parent / "train.json").read_text())
    derived = json.loads((instances / "train.json").read_text())
    assert derived["categories"] == [{"id": 1, "name": "cell"}]
    cells = [a for a in source["annotations"] if a["category_id"] == 1]
    assert len(derived["annotations"]) == len(cells) > 0
    assert [a["id"] for a in derived["annotations"]] == [a["id"] for a in cells]
    assert all("amodal_segmentation" in a for a in derived["annotations"])
    for image, original in zip(derived["images"], source["images"]):
        assert image["planes"] == [f"../images/{p}" for p in original["planes"][:2]]
        assert image["maps"]["semantic"] == f"../images/{original['maps']['semantic']}"
        # the composite is exactly what the YOLO model feeds the network for the two planes
        planes = np.concatenate([read_image(instances / p).array for p in image["planes"]], axis=2)
        np.testing.assert_array_equal(
            read_image(instances / image["file_name"]).array * 255, to_uint8_rgb(planes)
        )
    assert (instances / ".cytobench-complete.json").is_file()
    with pytest.raises(FileExistsError, match="other settings"):  # another plane selection: another folder
        ensure_brightfield_instances(
            instances,
            [0],
            simulate_brightfield,
            instances.parent,
            n_images=6,
            size=160,
            seed=0,
            val_fraction=0.34,
        )


def test_targets_carry_cells_with_visible_and_amodal_masks(instances: Path) -> None:
    dataset = brightfield_instance_dataset(instances, instances / "train.json")
    image, target = dataset[0]
    n = len(target["boxes"])
    assert image.shape[0] == 2 and n > 0
    assert target["labels"].tolist() == [1] * n
    assert target["masks"].shape == target["amodal_masks"].shape == (n, *image.shape[1:])
    visible, amodal = target["masks"].bool(), target["amodal_masks"].bool()
    assert not (visible & ~amodal).any() and (
        amodal.sum() > visible.sum()
    )  # hidden parts exist at 30 % overlap
    np.testing.assert_array_equal(target["boxes"].numpy(), mask_boxes(target["masks"].numpy()))
    assert "semantic" not in target
    seunet = brightfield_instance_dataset(
        instances, instances / "train.json", heads=["cytoplasm", "nuclei", "border", "background"]
    )
    assert set(torch.unique(seunet[0][1]["semantic"]).tolist()) == {0, 1, 2, 3}


def test_the_overlap_head_gets_its_maps(instances: Path) -> None:
    """SparseSEU-Net's overlap head: the overlap map (pixels of 2+ amodal cells), and its attention map."""
    plain = brightfield_instance_dataset(instances, instances / "train.json")[0][1]
    assert "overlap" not in plain and "overlap_attention" not in plain
    _, target = brightfield_instance_dataset(
        instances,
        instances / "train.json",
        overlap_map=True,
        attention_mask=True,
        attention_key="overlap_attention",
    )[0]
    covered = target["amodal_masks"].sum(dim=0)
    np.testing.assert_array_equal(target["overlap"].numpy(), (covered >= 2).numpy().astype(np.uint8))
    assert target["overlap_attention"].shape == target["overlap"].shape
    no_attention = brightfield_instance_dataset(instances, instances / "train.json", overlap_map=True)[0][1]
    assert "overlap" in no_attention and "overlap_attention" not in no_attention


def test_the_two_category_json_is_refused(instances: Path) -> None:
    with pytest.raises(BadInputError, match="'cell' only"):
        brightfield_instance_dataset(
            instances.parent / "images", instances.parent / "train.json", planes=[0, 1]
        )


def test_random_crops_keep_objects_consistent(instances: Path) -> None:
    """Crops of 64 px: every kept object has visible pixels, its box is its mask's, its amodal mask contains
    the visible one, every per-object field has the same length, and some objects are dropped."""
    whole = brightfield_instance_dataset(instances, instances / "train.json")
    cropped = brightfield_instance_dataset(
        instances, instances / "train.json", transforms=build_transforms(train=True, crop=64, vflip=0.5)
    )
    dropped = 0
    for epoch in range(3):
        cropped.set_epoch(epoch)
        for index in range(len(cropped)):
            image, target = cropped[index]
            n = len(target["boxes"])
            assert image.shape[1:] == (64, 64) and all(
                len(target[k]) == n for k in ("labels", "masks", "amodal_masks")
            )
            assert (target["masks"].flatten(1).sum(1) > 0).all()
            np.testing.assert_array_equal(target["boxes"].numpy(), mask_boxes(target["masks"].numpy()))
            assert not (target["masks"].bool() & ~target["amodal_masks"].bool()).any()
            dropped += len(whole[index][1]["boxes"]) - n
    assert dropped > 0


def test_an_object_whose_visible_part_leaves_the_crop_is_dropped(tmp_path: Path) -> None:
    """Hand-built: an L-shaped cell whose clipped box survives a crop that holds none of its pixels."""
    h = w = 40
    lshape = np.zeros((h, w), np.uint8)
    lshape[0:4, :] = 1
    lshape[:, 0:4] = 1
    disc = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc[(xx - 30) ** 2 + (yy - 30) ** 2 <= 16] = 1
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, np.full((h, w), 0.5, np.float32))
    anns = [
        {
            "id": k + 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": encode_mask(m),
            "iscrowd": 0,
            "bbox": [
                float(v)
                for v in (
                    *mask_boxes(m[None])[0, :2],
                    *(mask_boxes(m[None])[0, 2:] - mask_boxes(m[None])[0, :2]),
                )
            ],
            "area": float(m.sum()),
        }
        for k, m in enumerate((lshape, disc))
    ]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "planes": ["a.png", "b.png"], "width": w, "height": h}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cell"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    crop = A.Compose(
        [A.Crop(x_min=20, y_min=20, x_max=40, y_max=40)],
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["ann_idx"], min_visibility=0.0, clip=True
        ),
        keypoint_params=A.KeypointParams(format="xy", label_fields=["kp_idx"], remove_invisible=False),
    )

    def transforms(image: np.ndarray, target: dict[str, Any], rng: np.random.Generator):
        return apply_transforms(crop, image, target)

    dataset = brightfield_instance_dataset(tmp_path, tmp_path / "ann.json", transforms=transforms)
    image, target = dataset[0]
    # the shared transforms keep the L's clipped box (0, 0, 20, 20) with an empty mask; the set drops it
    assert len(target["boxes"]) == 1 and target["masks"].shape == (1, 20, 20)
    np.testing.assert_array_equal(target["masks"][0].numpy(), disc[20:, 20:])
    assert target["boxes"].tolist() == [[6.0, 6.0, 15.0, 15.0]]
    assert target["amodal_masks"].shape == (1, 20, 20)


@pytest.mark.parametrize(
    "name", ["mask_rcnn_brightfield", "yolov8_seg_brightfield", "seunet_watershed", "sparse_seunet"]
)
@pytest.mark.parametrize("level", ["smoke", "cpu", "paper"])
def test_experiments_share_data_and_evaluator(name: str, level: str, tmp_path: Path) -> None:
    cfg = compose_config([f"experiment={name}", f"scale={level}"], tmp_path, tmp_path / "data")
    c = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert c["data"]["train"]["_target_"].endswith("brightfield_instance_training_set")
    assert c["evaluator"]["max_dets"] == [100, 500, 2000] and c["trainer"]["monitor"] == "coco/segm_AP"
    sizes = {"smoke": (160, 128, None), "cpu": (256, None, None), "paper": (1080, None, 512)}[level]
    assert (c["data"]["size"], c["data"]["crop"], c["data"]["resize"]) == sizes
    if name == "mask_rcnn_brightfield":
        assert c["model"]["in_channels"] == 2 and c["model"]["box_detections_per_img"] == 500
    elif name == "yolov8_seg_brightfield":
        assert c["model"]["imgsz"] == {"smoke": 160, "cpu": 256, "paper": 512}[level]
        assert c["model"]["eval"]["max_det"] == 1000
    elif name == "sparse_seunet":
        n = {"smoke": 20, "cpu": 50, "paper": 100}[level]
        assert c["model"]["num_instances"] == n and c["model"]["aggregation"] == "single"
        assert c["data"]["train"]["overlap_map"] is False  # on only with model.overlap_head
    else:
        depth = {"smoke": 2, "cpu": 3, "paper": 4}[level]
        assert c["model"]["depth"] == depth and c["model"]["heads"] == [
            "cytoplasm",
            "nuclei",
            "border",
            "background",
        ]


@pytest.fixture(scope="module")
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", SMOKES)
def test_smoke_experiment_writes_the_coco_keys(
    name: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: Any
) -> None:
    run_dir = tmp_path / "run"
    run(compose_config([f"experiment={name}"], run_dir, tmp_path_factory.getbasetemp() / "bf_inst_data"))
    summary = json.loads((run_dir / "metrics.json").read_text())
    latest = summary["latest"]
    assert {k for k in latest if k.startswith("coco/")} == COCO_KEYS
    for key in COCO_KEYS:
        value = latest[key]
        assert value is None or 0.0 <= value <= 1.0, (key, value)
    assert latest["coco/segm_AP"] is not None and summary["epoch"] == 2
    assert (run_dir / "checkpoints" / "best.pt").is_file()
