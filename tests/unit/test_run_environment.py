"""The environment a run records in its status.json: versions, threads and the checkout's commit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from cytobench.engine.run_setup import _git_commit, run_environment


def test_run_environment_names_versions_and_threads() -> None:
    env = run_environment()
    assert env["torch"] == torch.__version__
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["cuda"] == torch.cuda.is_available()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_of_a_checkout_an_edit_and_an_ignored_copy(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    package = tmp_path / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert _git_commit(package) == head

    (package / "__init__.py").write_text("x = 2\n")
    assert _git_commit(package) == f"{head}+dirty"

    # an installed copy inside the repository's ignored venv is not that commit
    installed = tmp_path / ".venv" / "site-packages" / "pkg"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("x = 3\n")
    assert _git_commit(installed) is None
    assert _git_commit(tmp_path.parent) is None  # no repository at all (or not tracking __init__.py)
