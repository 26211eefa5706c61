"""Temp files of interrupted checkpoint writes are removed (issue 12, item 10).

A process killed while writing ``last.pt`` leaves the previous file intact and ``.last.pt.XXXXXXXX.tmp``
beside it; the next run in that folder removes it when training starts and after each save, and a
resume removes those beside the checkpoint it continues.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cytobench.engine.hooks import STALE_TEMP_AGE_S, CheckpointHook, Hook
from cytobench.io.files import remove_stale_temp_files, save_atomic
from tests.unit.test_trainer import make_trainer

KILLED_WRITER = """
import sys, time
from cytobench.io.files import save_atomic

def slow_save(obj, handle):
    handle.write(b"x" * 1_000_000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)

save_atomic(None, sys.argv[1], save=slow_save)
"""


def kill_during_write(path: Path) -> Path:
    """Start a process writing ``path`` atomically and ``kill -9`` it mid-write; returns the orphan."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    orphans = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size == 1_000_000
    return orphans[0]


def test_only_temp_files_of_the_named_files_are_removed(tmp_path: Path) -> None:
    keep = [tmp_path / name for name in ("last.pt", "notes.tmp", ".last.pt.tmp", ".other.pt.abcd1234.tmp")]
    keep.append(tmp_path / ".last.pt.abcd1234.tmp.bak")
    gone = [tmp_path / ".last.pt.abcd1234.tmp", tmp_path / ".best.pt.a_b0c9d8.tmp"]
    for path in keep + gone:
        path.write_bytes(b"x")
    removed = remove_stale_temp_files(tmp_path, ("last.pt", "best.pt"))
    assert sorted(removed) == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert remove_stale_temp_files(tmp_path / "missing", ("last.pt",)) == []


def test_recent_temp_files_are_kept_when_another_process_may_write_them(tmp_path: Path) -> None:
    fresh, old = tmp_path / ".last.pt.fresh123.tmp", tmp_path / ".last.pt.old12345.tmp"
    for path in (fresh, old):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert remove_stale_temp_files(tmp_path, ("last.pt",), min_age_s=60) == [old]
    assert fresh.exists()


def test_orphan_of_a_killed_write_is_removed_when_training_starts(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    save_atomic({"epoch": 0}, ckpt_dir / "last.pt")
    orphan = kill_during_write(ckpt_dir / "last.pt")
    assert torch.load(ckpt_dir / "last.pt", weights_only=True) == {"epoch": 0}  # the previous file is intact

    class Check(Hook):  # runs before the checkpoint hook's first save
        def after_step(self, trainer, losses) -> None:
            assert not orphan.exists(), "the orphan survived the start of training"

    trainer = make_trainer(tmp_path, max_epochs=1, extra_hooks=(Check(),))
    trainer.train()
    assert not orphan.exists() and list(ckpt_dir.glob("*.tmp")) == []


def test_orphans_are_removed_after_each_save(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    seen: list[bool] = []

    class DropOrphan(Hook):  # runs before the checkpoint hook: is the last epoch's orphan gone? drop one more
        def after_epoch(self, trainer) -> None:
            seen.append(any(ckpt_dir.glob(".last.pt.*.tmp")))
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            (ckpt_dir / ".last.pt.zzzz9999.tmp").write_bytes(b"x")

    trainer = make_trainer(tmp_path, max_epochs=3, extra_hooks=(DropOrphan(),))
    trainer.train()
    assert seen == [False, False, False] and list(ckpt_dir.glob("*.tmp")) == []
    assert CheckpointHook(ckpt_dir).remove_stale_temp_files() == []


def test_resume_removes_stale_orphans_beside_the_checkpoint_it_continues(tmp_path: Path) -> None:
    first = make_trainer(tmp_path / "first", max_epochs=1)
    first.train()
    last = tmp_path / "first" / "ckpt" / "last.pt"
    stale, fresh = last.parent / ".last.pt.stale123.tmp", last.parent / ".best.pt.fresh123.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"x")
    age = time.time() - STALE_TEMP_AGE_S - 5
    os.utime(stale, (age, age))
    resumed = make_trainer(tmp_path / "second", max_epochs=2)
    resumed.resume(last)
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a run still writing
