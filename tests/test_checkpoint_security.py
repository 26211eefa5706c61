"""Loading a checkpoint never runs code from it (issue 12, item 1).

Every command and config key that takes a checkpoint is given crafted files whose pickle would write a
marker file if it were unpickled: each refuses with one line (exit code 2 from the CLI) and the marker
never appears. What cytobench writes (torch runs, YOLO runs) loads with ``torch.load(weights_only=True)``,
RNG state included, and a YOLO run's safe checkpoint predicts exactly as the same weights loaded from
ultralytics' own pickled file.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cytobench.cli import main as cli_main
from cytobench.engine.checkpoint import capture_rng_state, plain_data, restore_rng_state
from cytobench.errors import BadInputError
from cytobench.io.checkpoint import UnsafeCheckpointError, load_checkpoint, load_model_weights
from cytobench.io.files import save_atomic
from tests.conftest import ROOT

# ------------------------------------------------------------------------------------------ crafted files


class Payload:
    """Unpickling this runs ``exec(code)``: the code writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


def _binunicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def pickle_naming(module: str, name: str, marker: Path) -> bytes:
    """A protocol-2 pickle of ``{"model": <module.name>, "x": exec(code writing marker)}``, written by hand
    (so that ``module`` need not be importable here)."""
    code = Payload(marker).code
    return b"".join(
        [
            b"\x80\x02}(",  # PROTO 2, EMPTY_DICT, MARK
            _binunicode("model"),
            b"c" + module.encode() + b"\n" + name.encode() + b"\n",  # GLOBAL
            _binunicode("x"),
            b"cbuiltins\nexec\n",
            _binunicode(code),
            b"\x85R",  # TUPLE1, REDUCE
            b"u.",  # SETITEMS, STOP
        ]
    )


@pytest.fixture()
def payloads(tmp_path: Path) -> dict[str, Path]:
    """Crafted checkpoints: a torch zip, a plain pickle, and one that names ultralytics' model class."""
    marker = tmp_path / "marker"
    folder = tmp_path / "payloads"
    folder.mkdir()
    files = {"zip": folder / "zip.pt", "raw": folder / "raw.pt", "ultralytics": folder / "ultralytics.pt"}
    torch.save({"model": Payload(marker), "model_config": {}, "epoch": 1}, files["zip"])
    files["raw"].write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=4))
    files["ultralytics"].write_bytes(pickle_naming("ultralytics.nn.tasks", "SegmentationModel", marker))
    # the crafted files are live: unpickling them runs the payload (what every loader below must avoid)
    pickle.loads(files["raw"].read_bytes())
    assert marker.read_text() == "pwned"
    marker.unlink()
    return files


def assert_refused(capsys: pytest.CaptureFixture[str], argv: list[str], path: Path, marker: Path) -> str:
    """``cytobench ARGV`` exits 2 with one line on stderr naming ``path``; the payload did not run."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    assert str(path) in err
    assert not marker.exists(), "the checkpoint's code ran"
    return err


def tiny_png(folder: Path) -> Path:
    from cytobench.io.images import write_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_image(folder / "a.png", rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    return folder


# ------------------------------------------------------------------------------------ every command refuses
@pytest.mark.parametrize("kind", ["zip", "raw", "ultralytics"])
def test_every_checkpoint_command_refuses_a_crafted_file(
    kind: str, payloads: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, marker = payloads[kind], tmp_path / "marker"
    images = tiny_png(tmp_path / "images")
    out = tmp_path / "out"
    commands = [
        ["predict", "--checkpoint", str(path), "--images", str(images), "--out", str(out / "p.json")],
        ["fish", "analyze", "--checkpoint", str(path), "--images", str(images), "--out", str(out / "fish")],
        ["reproduce", "qd/table1", "--checkpoint", str(path), "--scale", "smoke", "--out", str(out / "qd")],
        ["reproduce", "fish/table1", "--checkpoint", str(path), "--scale", "smoke", "--out", str(out / "f")],
        [
            "reproduce",
            "deepace/table2",
            "--baseline",
            str(path),
            "--deepace",
            str(path),
            "--out",
            str(out / "d"),
        ],
    ]
    for argv in commands:
        err = assert_refused(capsys, argv, path, marker)
        if kind == "ultralytics":  # a pickled ultralytics .pt: the line says how to load one deliberately
            assert "--trust-checkpoint" in err or "refused" in err
        else:
            assert "refused" in err and ("exec" in err or kind == "raw"), err


def test_trust_flag_is_offered_where_ultralytics_checkpoints_are_taken(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["predict", "-h"], ["fish", "analyze", "-h"], ["reproduce", "fish/table1", "-h"]):
        with pytest.raises(SystemExit):
            cli_main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "--trust-checkpoint" in text and "runs whatever code the file names" in text, argv


def test_predict_refuses_a_pickled_ultralytics_checkpoint_without_the_flag(
    payloads: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tiny_png(tmp_path / "images")
    path = payloads["ultralytics"]
    argv = ["predict", "--checkpoint", str(path), "--images", str(images), "--out", str(tmp_path / "p.json")]
    err = assert_refused(capsys, argv, path, tmp_path / "marker")
    assert "pickled ultralytics checkpoint" in err and "--trust-checkpoint" in err


def test_loaders_refuse_and_name_what_the_file_asks_for(payloads: dict[str, Path], tmp_path: Path) -> None:
    from torch import nn

    marker = tmp_path / "marker"
    for path in payloads.values():
        with pytest.raises(UnsafeCheckpointError) as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value) and not marker.exists()
        with pytest.raises(UnsafeCheckpointError):  # model.weights_path / backbone_weights_path
            load_model_weights(nn.Linear(2, 2), path)
        assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(payloads["zip"])
    assert err.value.names == ["builtins.exec"] and "builtins.exec" in str(err.value)
    assert UnsafeCheckpointError(
        payloads["ultralytics"], ["ultralytics.nn.tasks.SegmentationModel"]
    ).is_ultralytics


def test_trainer_resume_refuses_a_crafted_file(payloads: dict[str, Path], tmp_path: Path) -> None:
    from tests.unit.test_trainer import make_trainer

    trainer = make_trainer(tmp_path / "run")
    for path in payloads.values():
        with pytest.raises(UnsafeCheckpointError):
            trainer.resume(path)
    assert not (tmp_path / "marker").exists()
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}, "epoch": 1}, plain)
    with pytest.raises(BadInputError, match="not a checkpoint of the shared trainer"):
        trainer.resume(plain)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["trainer.resume", "model.weights_path", "model.backbone_weights_path"])
def test_train_py_refuses_a_crafted_checkpoint(
    key: str, payloads: dict[str, Path], tmp_path: Path, data_dir: Path
) -> None:
    """``python train.py KEY=crafted.pt``: one line on stderr, exit code 2, the payload did not run."""
    env = {**os.environ, "CYTOBENCH_DATA_DIR": str(data_dir), "WANDB_MODE": "offline"}
    path = payloads["zip"]
    args = [
        "experiment=faster_rcnn_smoke",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"{key}={path}",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env, timeout=600
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr  # notes (e.g. the data being simulated), then one line
    assert str(path) in lines[-1] and "refused" in lines[-1], proc.stderr
    assert not (tmp_path / "marker").exists()


def test_yolo_weights_refuse_crafted_files_and_foreign_pickles(
    payloads: dict[str, Path], tmp_path: Path
) -> None:
    from cytobench.models.yolo import build_yolo_model, load_yolo_model, read_yolo_metadata

    for path in payloads.values():
        for load in (
            lambda p: build_yolo_model("", weights_path=p),  # model.weights_path of a YOLO run
            load_yolo_model,
            read_yolo_metadata,
        ):
            with pytest.raises(UnsafeCheckpointError):
                load(path)
    assert not (tmp_path / "marker").exists()


# ------------------------------------------------------------------------------ what cytobench writes is safe
def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(4)  # noqa: NPY002 - the global state is what is checkpointed
    torch.manual_seed(5)
    np.random.normal()  # noqa: NPY002 - leaves a cached Gaussian in NumPy's state
    state = capture_rng_state()
    save_atomic({"rng": state}, tmp_path / "rng.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "rng.pt")) == []
    expected = (random.random(), np.random.normal(), torch.rand(3))  # noqa: NPY002
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002
    torch.manual_seed(0)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.normal(), torch.rand(3))  # noqa: NPY002
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_older_checkpoints_with_numpy_rng_state_still_load_and_restore(tmp_path: Path) -> None:
    np.random.seed(7)  # noqa: NPY002
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}  # noqa: NPY002
    torch.save({"rng": legacy, "epoch": 1}, tmp_path / "old.pt")
    expected = np.random.random()  # noqa: NPY002
    restore_rng_state(load_checkpoint(tmp_path / "old.pt")["rng"])
    assert np.random.random() == expected  # noqa: NPY002


def test_plain_data_turns_numpy_values_and_paths_into_plain_data() -> None:
    data = {"a": np.float64(0.5), np.int64(2): [np.arange(2), Path("x")], "t": (np.bool_(True),)}
    assert plain_data(data) == {"a": 0.5, 2: [[0, 1], "x"], "t": (True,)}
    assert type(plain_data(data)["a"]) is float


# ---------------------------------------------------------------------------------------- YOLO safe format
@pytest.fixture(scope="module")
def yolo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A yolov8n-seg (2 classes, fine-tuned from 80) saved by ultralytics (pickle) and converted to the safe format."""
    from cytobench.models import yolo as yolo_module

    base = tmp_path_factory.mktemp("yolo_safe")
    yolo_module.setup_ultralytics_offline()
    from ultralytics.nn.tasks import SegmentationModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        pretrained = SegmentationModel("yolov8n-seg.yaml", nc=80, verbose=False)
        net = SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False)
    # fine-tuned from 80 classes as ultralytics does: its class branches keep the pretrained width
    net.load(pretrained, verbose=False)
    assert (
        net.model[-1].cv3[0][-1].in_channels
        == 80
        != SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False).model[-1].cv3[0][-1].in_channels
    )
    net.names = {0: "whole", 1: "destroyed"}
    net.set_head_attr(max_det=123)  # as ultralytics' trainer does; must survive the conversion
    pickled = base / "ultralytics.pt"
    torch.save({"model": net.half(), "train_args": {"imgsz": 64, "task": "segment"}}, pickled)
    net.float()
    metadata = {
        "backend": "ultralytics",
        "task": "segment",
        "categories": [{"id": 1, "name": "whole"}, {"id": 2, "name": "destroyed"}],
        "imgsz": 64,
    }
    safe = base / "safe.pt"
    yolo_module.save_yolo_checkpoint(pickled, safe, metadata)
    return {"pickled": pickled, "safe": safe, "metadata": metadata, "base": base}


def test_yolo_checkpoint_holds_only_weights_and_plain_data(yolo_files: dict[str, Any]) -> None:
    from cytobench.models.yolo import is_yolo_checkpoint, read_yolo_metadata

    safe = yolo_files["safe"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(safe)) == []
    state = torch.load(safe, weights_only=True)
    assert (
        is_yolo_checkpoint(state)
        and state["task"] == "segment"
        and state["names"] == {0: "whole", 1: "destroyed"}
    )
    assert read_yolo_metadata(safe) == yolo_files["metadata"]
    assert read_yolo_metadata(yolo_files["pickled"], trust=True) == {}  # a plain ultralytics file
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        read_yolo_metadata(yolo_files["pickled"])


def test_safe_yolo_checkpoint_predicts_exactly_as_the_pickled_file(yolo_files: dict[str, Any]) -> None:
    from cytobench.models.yolo import load_yolo_model

    safe = load_yolo_model(yolo_files["safe"], conf=0.0, imgsz=64)
    pickled = load_yolo_model(yolo_files["pickled"], trust=True, conf=0.0, imgsz=64)
    assert safe.yolo.model.model[-1].max_det == pickled.yolo.model.model[-1].max_det == 123
    assert safe.categories == pickled.categories == yolo_files["metadata"]["categories"]
    own, theirs = safe.yolo.model.state_dict(), pickled.yolo.model.state_dict()
    assert own.keys() == theirs.keys() and all(torch.equal(own[k], theirs[k]) for k in own)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=generator), torch.rand(3, 50, 50, generator=generator)]
    n = 0
    for a, b in zip(safe.eval()(images), pickled.eval()(images)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        n += len(a["scores"])
    assert n > 0  # something was predicted and compared
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        load_yolo_model(yolo_files["pickled"])


def test_yolo_weights_path_takes_safe_files_and_trusted_pickles(yolo_files: dict[str, Any]) -> None:
    from cytobench.models.yolo import build_yolo_model

    safe = build_yolo_model("ignored.yaml", weights_path=yolo_files["safe"])
    trusted = build_yolo_model("ignored.yaml", weights_path=yolo_files["pickled"], trust=True)
    assert safe.task == trusted.task == "segment" and safe.names == trusted.names
    with pytest.raises(UnsafeCheckpointError):
        build_yolo_model("ignored.yaml", weights_path=yolo_files["pickled"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("activation", "__import__('builtins').exec(\"open({marker!r}, 'w').write('pwned')\")"),
        ("activation", "nn.SiLU(__import__('os'))"),
        ("layer", "torch_safe_load"),
        ("layer", "os"),
    ],
)
def test_safe_yolo_checkpoint_with_a_crafted_yaml_is_refused(
    field: str, value: str, yolo_files: dict[str, Any], tmp_path: Path
) -> None:
    """ultralytics ``eval``s the yaml's activation and calls its layer names: both are checked first."""
    from cytobench.models.yolo import load_yolo_model

    marker = tmp_path / "marker"
    state = torch.load(yolo_files["safe"], weights_only=True)
    if field == "activation":
        state["yaml"]["activation"] = value.format(marker=str(marker))
    else:
        state["yaml"]["backbone"][0][2] = value
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    with pytest.raises(BadInputError, match="refused") as err:
        load_yolo_model(crafted)
    assert "\n" not in str(err.value) and not marker.exists()
