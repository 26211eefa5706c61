"""pix2pix (thesis Sec. 4.4.2): shapes, the 70 x 70 PatchGAN field, losses, one training step, dropout at
inference, safe checkpoints, the training loop and ``synth pix2pix-train`` / ``synth make --pix2pix``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.cli import main
from cytobench.errors import BadInputError
from cytobench.io.checkpoint import load_checkpoint
from cytobench.synth.pix2pix import (
    PatchDiscriminator,
    Pix2Pix,
    Pix2PixConfig,
    UNetGenerator,
    discriminator_loss,
    generator_loss,
    load_pix2pix,
    save_pix2pix,
    train_step,
    translate,
)
from cytobench.synth.pix2pix_train import train_pix2pix
from tests.unit.test_copy_paste import write_tiny_set

SMALL = Pix2PixConfig.for_size(32, width=4, disc_width=4)


def test_generator_maps_one_phase_plane_to_two_brightfield_planes() -> None:
    generator = UNetGenerator(width=4, depth=5)
    out = generator(torch.rand(3, 1, 64, 32) * 2 - 1)
    assert out.shape == (3, 2, 64, 32) and out.abs().max() <= 1.0  # Tanh range
    with pytest.raises(ValueError, match="multiples of 32"):
        generator(torch.zeros(1, 1, 48, 32))
    dropouts = [m for m in generator.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 3 and all(m.p == 0.5 for m in dropouts)
    assert Pix2PixConfig.for_size(256).depth == 8 and Pix2PixConfig.for_size(512).depth == 9
    with pytest.raises(ValueError, match="power of two"):
        Pix2PixConfig.for_size(100)


def test_patch_discriminator_sees_70_by_70_patches() -> None:
    disc = PatchDiscriminator(in_channels=3, width=4).eval()  # eval: no batch statistics coupling pixels
    assert disc(torch.zeros(2, 3, 256, 256)).shape == (2, 1, 30, 30)
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    logits = disc(x)
    logits[0, 0, 8, 8].backward()
    rows = torch.nonzero(x.grad[0].abs().sum(0).sum(1)).flatten()
    cols = torch.nonzero(x.grad[0].abs().sum(0).sum(0)).flatten()
    assert int(rows.max() - rows.min() + 1) == 70 and int(cols.max() - cols.min() + 1) == 70


def test_losses_on_hand_checked_values() -> None:
    zeros = torch.zeros(1, 1, 4, 4)
    assert float(discriminator_loss(zeros, zeros)) == pytest.approx(math.log(2))
    big = torch.full((1, 1, 4, 4), 30.0)  # confident and right: real -> +30, fake -> -30
    assert float(discriminator_loss(big, -big)) == pytest.approx(0.0, abs=1e-6)
    fake, target = torch.zeros(1, 2, 4, 4), torch.full((1, 2, 4, 4), 0.5)
    total, gan, l1 = generator_loss(zeros, fake, target, lambda_l1=100.0)
    assert float(gan) == pytest.approx(math.log(2)) and float(l1) == pytest.approx(0.5)
    assert float(total) == pytest.approx(math.log(2) + 50.0)


def test_one_training_step_updates_both_networks() -> None:
    model = Pix2Pix.build(SMALL, seed=0)
    before_g = [p.detach().clone() for p in model.generator.parameters()]
    before_d = [p.detach().clone() for p in model.discriminator.parameters()]
    phase = torch.rand(2, 1, 32, 32) * 2 - 1
    brightfield = torch.rand(2, 2, 32, 32) * 2 - 1
    losses = train_step(model, phase, brightfield)
    assert set(losses) == {"loss_d", "loss_g", "loss_g_gan", "loss_g_l1"}
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["loss_g"] == pytest.approx(losses["loss_g_gan"] + 100.0 * losses["loss_g_l1"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before_g, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, model.discriminator.parameters()))
    # Adam's settings as pix2pix
    group = model.opt_g.param_groups[0]
    assert group["lr"] == 2e-4 and group["betas"] == (0.5, 0.999)


def test_translate_keeps_dropout_on_unless_disabled() -> None:
    model = Pix2Pix.build(SMALL, seed=1)
    train_step(model, torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 2, 32, 32) * 2 - 1)
    phase = np.random.default_rng(0).random((40, 50)).astype(np.float32)  # padded to 64 x 64 inside
    a = translate(model.generator, phase, seed=1)
    b = translate(model.generator, phase, seed=2)
    assert a.shape == (2, 40, 50) and a.min() >= 0 and a.max() <= 1
    assert not np.array_equal(a, b)  # dropout noise
    assert np.array_equal(a, translate(model.generator, phase, seed=1))  # reproducible for a seed
    c = translate(model.generator, phase, seed=1, dropout=False)
    assert np.array_equal(c, translate(model.generator, phase, seed=2, dropout=False))
    # BatchNorm in eval mode: running statistics untouched, the model's mode restored
    stats = [m.running_mean.clone() for m in model.generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.generator.train()
    translate(model.generator, phase)
    after = [m.running_mean for m in model.generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(x, y) for x, y in zip(stats, after)) and model.generator.training


def test_checkpoint_round_trip_is_weights_only(tmp_path: Path) -> None:
    model = Pix2Pix.build(SMALL, seed=2)
    train_step(model, torch.rand(1, 1, 32, 32) * 2 - 1, torch.rand(1, 2, 32, 32) * 2 - 1)
    path = save_pix2pix(model, tmp_path / "p.pt", epoch=3, history=[{"epoch": 1, "loss_d": 0.5}], seed=2)
    assert load_checkpoint(path)["format"] == "cytobench-pix2pix"  # torch.load(weights_only=True)
    loaded, blob = load_pix2pix(path)
    assert blob["epoch"] == 3 and loaded.config == SMALL
    phase = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    np.testing.assert_array_equal(
        translate(model.generator, phase, dropout=False), translate(loaded.generator, phase, dropout=False)
    )
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(BadInputError, match="not a pix2pix checkpoint"):
        load_pix2pix(tmp_path / "other.pt")


def test_training_loop_writes_checkpoints_and_history(tmp_path: Path) -> None:
    data = write_tiny_set(tmp_path / "src", n_images=3)
    lines: list[str] = []
    result = train_pix2pix(data, tmp_path / "ckpt", epochs=2, size=32, width=4, seed=0, log=lines.append)
    assert result.last.is_file() and result.best.is_file() and len(lines) == 2
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(math.isfinite(h["loss_g"]) and math.isfinite(h["val_l1"]) for h in result.history)
    assert "epoch 2/2" in lines[1] and "val_L1" in lines[1]
    again = train_pix2pix(data, tmp_path / "ckpt2", epochs=1, size=32, width=4, seed=0, log=lambda _: None)
    assert again.history[0]["loss_g"] == result.history[0]["loss_g"]  # same seed, same first epoch


def test_pix2pix_cli_train_then_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_tiny_set(tmp_path / "src", n_images=3)
    ckpt = tmp_path / "ckpt"
    main(
        [
            "synth",
            "pix2pix-train",
            "--data",
            str(data),
            "--out",
            str(ckpt),
            "--epochs",
            "1",
            "--size",
            "32",
            "--width",
            "4",
        ]
    )
    assert "pix2pix trained for 1 epoch" in capsys.readouterr().out
    out = tmp_path / "synth"
    main(
        [
            "synth",
            "make",
            "--data",
            str(data),
            "--n",
            "2",
            "--cells",
            "2",
            "--pix2pix",
            str(ckpt / "best.pt"),
            "--out",
            str(out),
        ]
    )
    assert "phase-domain" not in capsys.readouterr().out
    image = json.loads((out / "train.json").read_text())["images"][0]
    assert image["planes"] == [
        "synth_00000_bf_lower.png",
        "synth_00000_bf_upper.png",
        "synth_00000_phase.png",
    ]
    assert all((out / "images" / name).is_file() for name in image["planes"])
    no_phase = write_tiny_set(tmp_path / "nophase", n_images=2, with_phase=False)
    cases = [
        (
            ["--data", str(data), "--out", str(tmp_path / "a"), "--size", "100"],
            "--size: must be a power of two",
        ),
        (["--data", str(no_phase), "--out", str(tmp_path / "b"), "--size", "32"], "has no phase plane"),
        (["--data", str(data), "--out", str(ckpt), "--size", "32"], "pass --overwrite"),
        (["--data", str(data), "--out", str(tmp_path / "c"), "--size", "128"], "smaller than the 128 px"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["synth", "pix2pix-train", *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "synth",
                "make",
                "--data",
                str(data),
                "--n",
                "1",
                "--pix2pix",
                str(data / "train.json"),
                "--out",
                str(tmp_path / "d"),
            ]
        )
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
