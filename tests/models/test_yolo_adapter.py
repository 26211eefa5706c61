"""YOLO as a model: offline training under the run-folder contract, checkpoints, the eval contract, scoring."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cytobench.data.coco_dataset import CocoDetectionDataset
from cytobench.engine import ultralytics_run
from cytobench.engine.ultralytics_run import (
    coco_splits,
    export_yolo_dataset,
    score_checkpoint,
    train_arguments,
    yolo_metric_key,
)
from cytobench.errors import BadInputError, CorruptAnnotation
from cytobench.evaluation import CocoEvaluator
from cytobench.io.images import read_image, read_image_tensor, write_image
from cytobench.models import yolo as yolo_module
from cytobench.models.yolo import (
    YoloModel,
    build_yolo_model,
    load_yolo_model,
    read_yolo_metadata,
    to_uint8_rgb,
    ultralytics_device,
)
from cytobench.simulate.toy import simulate_toy
from tests.conftest import compose_config


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture(scope="module")
def no_network() -> Iterator[list[str]]:
    """Every socket connect / DNS lookup raises and is recorded (so silently caught attempts show too)."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(repr(args[:2]))
        raise NetworkAttempt(f"network access attempted: {args[:2]}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield attempts


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 toy images (6 train / 2 val) at 96 px with polygon masks of two categories."""
    out = tmp_path_factory.mktemp("toy")
    simulate_toy(8, out, size=(96, 96), seed=3, val_fraction=0.25)
    return out


# --------------------------------------------------------------------------------------------- small units
def test_metric_keys_devices_and_forced_arguments(tmp_path: Path) -> None:
    assert yolo_metric_key("metrics/mAP50-95(M)") == "yolo/mask_mAP50-95"
    assert yolo_metric_key("metrics/precision(B)") == "yolo/box_P"
    assert yolo_metric_key("metrics/recall(M)") == "yolo/mask_R"
    assert yolo_metric_key("val/seg_loss") == "val/seg_loss"
    assert ultralytics_device("cpu") == "cpu" and ultralytics_device("cuda:1") == "1"
    assert ultralytics_device("cuda") == "0"
    args = train_arguments(
        {"lr0": 0.01, "epochs": 3}, imgsz=320, data_yaml=tmp_path / "d.yaml", project=tmp_path, device="0"
    )
    assert args["amp"] is False and args["resume"] is False  # the AMP check would download weights
    assert args["imgsz"] == 320 and args["lr0"] == 0.01 and args["data"] == str(tmp_path / "d.yaml")
    with pytest.raises(BadInputError, match="amp"):
        train_arguments({"amp": True}, imgsz=320, data_yaml=tmp_path, project=tmp_path, device="cpu")


def test_models_come_from_yaml_or_local_files_only(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="weights_path"):
        build_yolo_model("yolov8n-seg.pt")  # a bare .pt name would download
    with pytest.raises(BadInputError, match="weights file not found"):
        build_yolo_model("yolov8n-seg.yaml", weights_path=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="junk.pt"):
        load_yolo_model(junk)


def test_to_uint8_rgb_round_trips_8bit_and_expands_grey() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    np.testing.assert_array_equal(to_uint8_rgb(rgb.astype(np.float32) / 255.0), rgb)
    grey = to_uint8_rgb(np.array([[0.0, 1.0]], np.float32))
    assert grey.shape == (1, 2, 3) and grey[0, 1].tolist() == [255, 255, 255]
    rgba = to_uint8_rgb(np.ones((2, 2, 4), np.uint8))
    assert rgba.shape == (2, 2, 3)


def test_data_config_paths_simulated_and_generic() -> None:
    fish_like = {"images": "/d/images", "train_ann": "/d/train.json", "val_ann": "/d/val.json", "train": {}}
    assert coco_splits(fish_like)["val"] == (Path("/d/images"), Path("/d/val.json"))
    generic = {"train": {"root": "/i", "ann_file": "/t.json"}, "val": {"root": "/v", "ann_file": "/v.json"}}
    assert coco_splits(generic) == {
        "train": (Path("/i"), Path("/t.json")),
        "val": (Path("/v"), Path("/v.json")),
    }
    with pytest.raises(BadInputError, match="val"):
        coco_splits({"train": {"root": "/i", "ann_file": "/t.json"}, "val": {}})


class _FakeResults:
    def __init__(self, shape: tuple[int, int]) -> None:
        self.boxes, self.masks = None, None


class _FakeModel:
    """Stands in for ultralytics.YOLO: records what predict receives."""

    def __init__(self) -> None:
        self.sources: list[np.ndarray] = []

    def predict(self, source: list[np.ndarray], **kwargs: Any) -> list[_FakeResults]:
        self.sources += source
        self.kwargs = kwargs
        return [_FakeResults(s.shape[:2]) for s in source]


def test_model_hands_ultralytics_bgr_and_returns_empty_predictions_at_image_size() -> None:
    fake = _FakeModel()
    model = YoloModel(fake, [{"id": 1, "name": "whole"}], task="segment", imgsz=64, conf=0.5, max_det=2000)
    red = torch.zeros(3, 5, 7)
    red[0] = 200 / 255  # pure red in RGB, C x H x W in [0, 1] as every dataset gives
    (out,) = model.eval()([red])
    assert fake.sources[0][0, 0].tolist() == [0, 0, 200]  # ultralytics reads numpy arrays as BGR
    assert fake.kwargs["retina_masks"] and fake.kwargs["imgsz"] == 64 and fake.kwargs["conf"] == 0.5
    assert fake.kwargs["max_det"] == 2000
    assert out["masks"].shape == (0, 5, 7) and out["masks"].dtype == torch.uint8
    assert out["boxes"].shape == (0, 4) and out["labels"].dtype == torch.int64
    grey = torch.full((1, 4, 6), 0.5)  # one channel: repeated to three, as ultralytics' reader does
    model([grey])
    assert fake.sources[-1].shape == (4, 6, 3) and (fake.sources[-1] == 128).all()
    detect = YoloModel(fake, [{"id": 1, "name": "chromosome"}], task="detect")
    (boxes_only,) = detect([red])
    assert "masks" not in boxes_only and boxes_only["scores"].shape == (0,)
    with pytest.raises(RuntimeError, match="ultralytics' trainer"):
        model([red], [{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(BadInputError, match="pose"):
        YoloModel(fake, [], task="pose")


# --------------------------------------------------------------------------------- class scores, pair prior
def test_detect_predictions_carry_every_class_score_and_match_the_stock_predictor() -> None:
    """The predictor that also returns class_scores keeps ultralytics' own boxes, scores and labels."""
    yolo = build_yolo_model("yolov8n.yaml")  # random init, 80 classes
    categories = [{"id": c + 1, "name": str(c)} for c in range(80)]
    model = YoloModel(yolo, categories, task="detect", imgsz=64, conf=0.0, max_det=50).eval()
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    (ours,) = model([image])
    yolo.predictor = None  # ultralytics keeps its predictor between calls unless told another class
    monkeypatched = pytest.MonkeyPatch()
    monkeypatched.setattr(yolo_module, "_class_scores_predictor", lambda: None)
    try:
        (stock,) = model([image])
    finally:
        monkeypatched.undo()
    n = len(ours["boxes"])
    assert n > 5 and "class_scores" not in stock
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(ours[key], stock[key]), key
    assert ours["class_scores"].shape == (n, 80)
    picked = ours["class_scores"].gather(1, (ours["labels"] - 1)[:, None])[:, 0]
    assert torch.equal(picked, ours["scores"])  # a box's score is its label's class score
    assert torch.equal(ours["class_scores"].max(dim=1).values, ours["scores"])


def test_pair_prior_keeps_one_box_per_chromosome_and_labels_the_cell_jointly() -> None:
    """Hand case: a chromosome torn between 4 and 5 (two boxes), three confident 1s, a faint box."""
    from cytobench.simulate.chromosomes import CLASS_NAMES

    names = list(reversed(CLASS_NAMES))  # YOLO class c is chromosome class 24 - c: the prior maps by name
    categories = [{"id": 100 + c, "name": n} for c, n in enumerate(names)]
    model = YoloModel(None, categories, task="detect", pair_prior=True)
    column = {n: c for c, n in enumerate(names)}

    def scores(**by_class: float) -> np.ndarray:
        row = np.full(24, 0.001, np.float32)
        for name, value in by_class.items():
            row[column[name.lstrip("c")]] = value
        return row

    boxes = np.array(
        [
            [0, 0, 10, 40],  # 4 or 5: 0.40 / 0.35, existence ~0.77
            [0, 1, 10, 41],  # the same chromosome, 5 first: 0.38 / 0.30 (IoU 0.95): dropped
            [20, 0, 30, 60],  # three 1s; the third's runner-up is 2
            [40, 0, 50, 60],
            [60, 0, 70, 60],
            [80, 0, 90, 20],  # faint: existence ~0.2 < 0.5, out of the cell, keeps its likeliest class
        ],
        np.float32,
    )
    class_scores = np.stack(
        [
            scores(c4=0.40, c5=0.35),
            scores(c5=0.38, c4=0.30),
            scores(c1=0.95),
            scores(c1=0.94),
            scores(c1=0.80, c2=0.30),
            scores(c1=0.15, c21=0.03),
        ]
    )
    pred = {
        "boxes": torch.from_numpy(boxes),
        "scores": torch.from_numpy(class_scores.max(axis=1)),
        "labels": torch.from_numpy(class_scores.argmax(axis=1) + 1),
        "class_scores": torch.from_numpy(class_scores),
    }
    out = {k: v.numpy() for k, v in model.cell_step(pred).items()}
    existence = np.minimum(class_scores.sum(axis=1), 1.0)
    kept = [0, 2, 3, 4, 5]  # by existence, then greedy: box 1 overlaps box 0
    assert sorted(out["boxes"][:, 0].tolist()) == sorted(boxes[kept, 0].tolist())
    by_x = {float(b[0]): i for i, b in enumerate(out["boxes"])}
    chromosome = {x: names[int(out["labels"][i]) - 1] for x, i in by_x.items()}
    # the torn one: 4 + 5 evidence of both boxes, 0.70 vs 0.73: a 5; three 1s: the third to its free
    # runner-up 2; the faint one (out of the cell) stays 1
    assert chromosome == {0.0: "5", 20.0: "1", 40.0: "1", 60.0: "2", 80.0: "1"}
    torn = by_x[0.0]  # existence of boxes 0 and 1 together: 1 - (1 - e0)(1 - e1)
    assert out["scores"][torn] == pytest.approx(1 - (1 - existence[0]) * (1 - existence[1]), rel=1e-6)
    np.testing.assert_allclose(out["class_scores"][torn], class_scores[0] + class_scores[1], rtol=1e-6)
    for k in kept[1:]:  # boxes alone: scored by their existence, their class scores carried along
        i = by_x[float(boxes[k, 0])]
        assert out["scores"][i] == pytest.approx(existence[k], rel=1e-6)
        np.testing.assert_array_equal(out["class_scores"][i], class_scores[k])
    assert out["scores"][by_x[80.0]] < 0.5  # the faint box: reported, not in the cell
    assert torch.equal(pred["class_scores"], torch.from_numpy(class_scores))  # the input is left as it was
    empty = {k: v[:0] for k, v in pred.items()}  # an image where nothing was found
    assert {k: tuple(v.shape) for k, v in model.cell_step(empty).items()} == {
        "boxes": (0, 4),
        "scores": (0,),
        "labels": (0,),
        "class_scores": (0, 24),
    }
    with pytest.raises(BadInputError, match="24 chromosome classes"):
        YoloModel(None, [{"id": 1, "name": "chromosome"}], task="detect", pair_prior=True).cell_step(pred)
    with pytest.raises(BadInputError, match="task detect"):
        YoloModel(None, categories, task="segment", pair_prior=True)


# ----------------------------------------------------------------------------------------------- export
def test_export_polygons_read_back_by_ultralytics_match_coco_masks(toy: Path, tmp_path: Path) -> None:
    from ultralytics.data.utils import verify_image_label

    splits = {"train": (toy / "images", toy / "train.json"), "val": (toy / "images", toy / "val.json")}
    data_yaml, categories = export_yolo_dataset(splits, tmp_path / "yolo")
    text = data_yaml.read_text()
    assert "train: [images/train]" in text and "val: images/val" in text
    assert [c["name"] for c in categories] == [
        c["name"] for c in json.loads((toy / "val.json").read_text())["categories"]
    ]
    gt = json.loads((toy / "val.json").read_text())
    for info in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == info["id"] and not a.get("iscrowd")]
        image = tmp_path / "yolo" / "images" / "val" / info["file_name"]
        label = (tmp_path / "yolo" / "labels" / "val" / info["file_name"]).with_suffix(".txt")
        _, lb, shape, segments, *_ = verify_image_label((str(image), str(label), "", False, 2, 0, 0, False))
        assert tuple(shape) == (info["height"], info["width"]) and len(segments) == len(anns) > 0
        cat_index = {c["id"]: i for i, c in enumerate(gt["categories"])}
        assert lb[:, 0].astype(int).tolist() == [cat_index[a["category_id"]] for a in anns]
        for seg, ann in zip(segments, anns):
            polygon = max(ann["segmentation"], key=len)  # toy objects have one polygon each
            assert len(ann["segmentation"]) == 1
            absolute = seg * np.array([info["width"], info["height"]], np.float32)
            np.testing.assert_allclose(absolute, np.reshape(polygon, (-1, 2)), atol=1e-3)


def test_export_converts_16bit_images_like_cytobench_and_checks_categories(tmp_path: Path) -> None:
    images = tmp_path / "src"
    grey = np.zeros((20, 24), np.uint16)
    grey[5:15, 6:18] = 1000
    write_image(images / "a.tif", grey, bit_depth=16)
    ann = {
        "id": 1,
        "image_id": 1,
        "category_id": 7,
        "bbox": [6, 5, 12, 10],
        "iscrowd": 0,
        "area": 120.0,
        "segmentation": [[6, 5, 18, 5, 18, 15, 6, 15]],
    }
    coco = {
        "images": [{"id": 1, "file_name": "a.tif", "width": 24, "height": 20}],
        "annotations": [ann],
        "categories": [{"id": 7, "name": "whole"}],
    }
    (tmp_path / "t.json").write_text(json.dumps(coco))
    other = {**coco, "categories": [{"id": 7, "name": "intact"}]}
    (tmp_path / "v.json").write_text(json.dumps(other))
    with pytest.raises(CorruptAnnotation, match="v.json"):
        export_yolo_dataset(
            {"train": (images, tmp_path / "t.json"), "val": (images, tmp_path / "v.json")}, tmp_path / "y"
        )
    (tmp_path / "v.json").write_text(json.dumps(coco))
    export_yolo_dataset(
        {"train": (images, tmp_path / "t.json"), "val": (images, tmp_path / "v.json")}, tmp_path / "y2"
    )
    png = tmp_path / "y2" / "images" / "train" / "a.png"
    assert png.is_file() and not (tmp_path / "y2" / "images" / "train" / "a.tif").exists()
    import cv2

    written = cv2.imread(str(png), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(written, to_uint8_rgb(read_image(images / "a.tif").array))
    assert written.max() > 200  # real-range scaling, not OpenCV's 16 -> 8 bit shift (which gives 3)


def test_scoring_glue_gives_ap_one_for_ground_truth_predictions(
    toy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score_checkpoint maps images, labels and masks correctly: perfect predictions score AP = 1."""
    dataset = CocoDetectionDataset(toy / "images", toy / "val.json", with_masks=True)
    truth = [dataset[i][1] for i in range(len(dataset))]
    served: list[int] = []

    class Perfect(torch.nn.Module):
        task = "segment"

        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            out = []
            for image in images:
                t = truth[len(served)]
                served.append(1)
                assert image.shape[1:] == t["masks"].shape[1:] and image.dtype == torch.float32
                n = len(t["labels"])
                out.append(
                    {
                        "boxes": t["boxes"],
                        "scores": torch.linspace(0.9, 0.5, n),
                        "labels": t["labels"],
                        "masks": t["masks"],
                    }
                )
            return out

    monkeypatch.setattr(ultralytics_run, "load_yolo_model", lambda *a, **k: Perfect())
    metrics = score_checkpoint(
        Path("unused.pt"), (toy / "images", toy / "val.json"), CocoEvaluator(("bbox", "segm"))
    )
    assert len(served) == len(dataset)
    assert metrics["coco/segm_AP"] == pytest.approx(1.0) and metrics["coco/bbox_AP"] == pytest.approx(1.0)


# -------------------------------------------------------------------------------- training (one small run)
@pytest.fixture(scope="module")
def trained(toy: Path, no_network: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2 epochs of yolov8n-seg at 96 px, started from local weights that the test saves itself (in cytobench's
    safe format; ``pickled`` holds the same weights as ultralytics saves them)."""
    from cytobench.train import run

    base = tmp_path_factory.mktemp("yolo_run")
    yolo_module.setup_ultralytics_offline(base / "cfg")
    weights, pickled = base / "local_init.pt", base / "local_init_ultralytics.pt"
    source = build_yolo_model("yolov8n-seg.yaml")
    yolo_module.save_yolo_checkpoint(source, weights, {})
    source.save(str(pickled))
    cfg = compose_config(
        [
            "model=yolov8_seg",
            f"model.weights_path={weights}",
            "model.imgsz=96",
            "model.train_args.batch=3",
            "model.train_args.workers=0",
            "model.eval.conf=0.0001",
            "trainer=smoke",
            "trainer.monitor=coco/segm_AP",
            "evaluator.iou_types=[bbox,segm]",
            f"data.dir={toy}",
            "data.prepare=null",
        ],
        base / "run",
        base / "data",
    )
    result = run(cfg)
    return {
        "run_dir": base / "run",
        "result": result,
        "weights": weights,
        "pickled": pickled,
        "source": source,
        "attempts": no_network,
    }


@pytest.mark.slow
def test_training_run_offline_writes_the_run_folder_contract(trained: dict[str, Any]) -> None:
    run_dir = trained["run_dir"]
    assert trained["attempts"] == [], "ultralytics tried to reach the network"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["step"] == 2 * 2  # 6 training images in batches of 3
    for entry in metrics["history"]:
        for key in (
            "train/seg_loss",
            "train/box_loss",
            "val/seg_loss",
            "yolo/mask_mAP50",
            "yolo/fitness",
            "train/lr",
        ):
            assert np.isfinite(entry[key]), key
    latest = metrics["latest"]
    for key in (
        "coco/segm_AP",
        "coco/segm_AP50",
        "coco/bbox_AP",
        "yolo/mask_P",
        "yolo/mask_R",
        "yolo/mask_mAP50",
        "yolo/mask_mAP50-95",
    ):
        assert 0.0 <= latest[key] <= 1.0, key
    assert trained["result"] == latest["coco/segm_AP"]  # the sweeper's value is trainer.monitor
    assert metrics["monitor"] == "yolo/fitness" and metrics["best"]["epoch"] in (1, 2)
    assert metrics["best"]["checkpoint"] == str(run_dir / "checkpoints" / "best.pt")
    assert (run_dir / "config.yaml").is_file()
    csv_keys = {line.split(",")[1] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]}
    assert {"yolo/mask_mAP50", "train/seg_loss", "coco/segm_AP"} <= csv_keys
    import ultralytics.utils

    from cytobench.models.yolo_offline import FONT_NAMES

    for font in FONT_NAMES:  # placed before training, so ultralytics never downloads them
        assert (Path(ultralytics.utils.USER_CONFIG_DIR) / font).stat().st_size > 100_000


@pytest.mark.slow
def test_checkpoints_carry_metadata_and_predict_masks_at_image_size(
    trained: dict[str, Any], toy: Path
) -> None:
    run_dir = trained["run_dir"]
    for name in ("best", "last"):
        meta = read_yolo_metadata(run_dir / "checkpoints" / f"{name}.pt")
        assert [c["name"] for c in meta["categories"]] == ["cell", "debris"]
        assert meta["imgsz"] == 96 and meta["model_config"]["_target_"] == "cytobench.models.yolo.build_yolo"
        assert meta["task"] == "segment"
        assert meta["data_config"]["dir"] == str(toy)
    for name in ("best", "last"):  # tensors and plain data only: loads with weights_only=True, runs nothing
        assert (
            torch.serialization.get_unsafe_globals_in_checkpoint(str(run_dir / "checkpoints" / f"{name}.pt"))
            == []
        )
    model = load_yolo_model(run_dir / "checkpoints" / "best.pt", conf=0.0)  # untrained: keep every box
    assert model.categories == meta["categories"] and model.imgsz == 96 and model.task == "segment"
    image = read_image_tensor(toy / "images" / "toy_00007.png")[:, :77, :90]  # odd size
    noise = torch.rand(3, 61, 83, generator=torch.Generator().manual_seed(0))
    preds = model.eval()([image, noise])
    for pred, shape in zip(preds, [(77, 90), (61, 83)]):
        n = len(pred["scores"])
        assert pred["masks"].shape == (n, *shape) and pred["masks"].dtype == torch.uint8
        assert pred["boxes"].shape == (n, 4) and pred["boxes"].dtype == torch.float32
        assert set(pred["labels"].tolist()) <= {1, 2}
        assert torch.all(pred["boxes"][:, [0, 2]] <= shape[1] + 1e-3)
        assert torch.all(pred["boxes"][:, [1, 3]] <= shape[0] + 1e-3)


@pytest.mark.slow
def test_local_weights_are_loaded_without_network(trained: dict[str, Any]) -> None:
    saved = trained["source"].model.state_dict()
    model = build_yolo_model("ignored.yaml", weights_path=trained["weights"])  # the safe format: exact
    loaded = model.model.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    with pytest.raises(BadInputError, match="--trust-checkpoint"):  # ultralytics' pickle: only when trusted
        build_yolo_model("ignored.yaml", weights_path=trained["pickled"])
    loaded = build_yolo_model("ignored.yaml", weights_path=trained["pickled"], trust=True).model.state_dict()
    for key, value in saved.items():  # ultralytics saves fp16
        if value.is_floating_point():
            torch.testing.assert_close(loaded[key].float(), value.half().float(), rtol=0, atol=0)
    assert trained["attempts"] == []


@pytest.mark.slow
def test_cytobench_predict_and_eval_score_a_yolo_run_like_the_run_itself(
    trained: dict[str, Any], toy: Path, tmp_path: Path
) -> None:
    from cytobench.cli import main as cli_main

    run_dir = trained["run_dir"]
    val = json.loads((toy / "val.json").read_text())
    images = [str(toy / "images" / img["file_name"]) for img in val["images"]]
    pred = tmp_path / "pred.json"
    cli_main(["predict", "--checkpoint", str(run_dir / "checkpoints" / "best.pt"), "--images", *images,
              "--gt", str(toy / "val.json"), "--out", str(pred), "--device", "cpu"])  # fmt: skip
    results = json.loads(pred.read_text())
    assert all("segmentation" in r and r["category_id"] in {1, 2} for r in results)
    out = tmp_path / "metrics.json"
    cli_main(["eval", "coco-segm", "--gt", str(toy / "val.json"), "--pred", str(pred), "--out", str(out)])
    ours = json.loads(out.read_text())["coco/segm_AP"]
    own = json.loads((run_dir / "metrics.json").read_text())["latest"]["coco/segm_AP"]
    assert ours == pytest.approx(own, abs=1e-6)  # same weights, same evaluator, same answer


@pytest.mark.slow
def test_yolo_detect_run_is_scored_and_predicted_like_any_model(
    toy: Path, no_network: list[str], tmp_path: Path
) -> None:
    """model=yolov8_det: boxes only; `cytobench predict` + `cytobench eval` give the run's own numbers."""
    from cytobench.cli import main as cli_main
    from cytobench.train import run

    yolo_module.setup_ultralytics_offline(tmp_path / "cfg")
    overrides = ["model=yolov8_det", "model.arch=yolov8n.yaml", "model.imgsz=96", "model.train_args.batch=3",
                 "model.train_args.workers=0", "model.eval.conf=0.0001", "model.eval.max_det=2000",
                 "trainer=smoke", "trainer.monitor=coco/bbox_AP", f"data.dir={toy}", "data.prepare=null"]  # fmt: skip
    cfg = compose_config(overrides, tmp_path / "run", tmp_path / "data")
    result = run(cfg)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    meta = read_yolo_metadata(best)
    assert meta["task"] == "detect" and meta["model_config"]["eval"]["max_det"] == 2000
    model = load_yolo_model(best)
    assert model.task == "detect" and model.max_det == 2000
    own = json.loads((tmp_path / "run" / "metrics.json").read_text())["latest"]
    assert result == own["coco/bbox_AP"] and "coco/segm_AP" not in own
    val = json.loads((toy / "val.json").read_text())
    images = [str(toy / "images" / img["file_name"]) for img in val["images"]]
    pred, out = tmp_path / "pred.json", tmp_path / "metrics.json"
    cli_main(["predict", "--checkpoint", str(best), "--images", *images, "--gt", str(toy / "val.json"),
              "--out", str(pred), "--device", "cpu"])  # fmt: skip
    results = json.loads(pred.read_text())
    assert results and all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    cli_main(["eval", "coco-bbox", "--gt", str(toy / "val.json"), "--pred", str(pred), "--out", str(out)])
    assert json.loads(out.read_text())["coco/bbox_AP"] == pytest.approx(own["coco/bbox_AP"], abs=1e-6)
    assert no_network == []
