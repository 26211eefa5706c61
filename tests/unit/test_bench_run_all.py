"""bench/run_all.py (`make bench`): every bench's rows in one table, and a failed bench is a NO row and exit 1."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import run_all  # noqa: E402  (bench/ is a folder of scripts, not a package)

GOOD = """
    import sys
    sys.path.insert(0, {bench!r})
    from summary import row
    row("fake speed, ms", 2.0, 10.0, 5.0, ">= 2x", True)
    row("fake memory, MiB", 120.0, 100.0, 1.2, "<= 1.1x", False)
"""
SILENT = "print('no rows')\n"
FAILING = "raise SystemExit(3)\n"


@pytest.fixture()
def fake_benches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, body in {"bench_a_good": GOOD, "bench_b_silent": SILENT, "bench_c_failing": FAILING}.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body.format(bench=str(ROOT / "bench"))))
    monkeypatch.setattr(run_all, "BENCH_DIR", tmp_path)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    return tmp_path


def test_only_selects_by_any_spelling_of_the_name(fake_benches: Path) -> None:
    names = [p.stem for p in run_all.bench_scripts(["a_good", "bench_c_failing.py"])]
    assert names == ["bench_a_good", "bench_c_failing"]
    assert len(run_all.bench_scripts(None)) == 3
    with pytest.raises(SystemExit, match="no bench named 'nope'"):
        run_all.bench_scripts(["nope"])


def test_summary_table_has_every_row_and_a_no_for_each_failure(
    fake_benches: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        run_all.main()
    assert exit_info.value.code == 1
    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert table[0] == "| measure | ours | baseline | ratio | goal | held |"
    assert table[1:] == [
        "| fake speed, ms | 2 | 10 | 5x | >= 2x | yes |",
        "| fake memory, MiB | 120 | 100 | 1.2x | <= 1.1x | NO |",
        "| bench_b_silent: wrote no summary row | - | - | - | runs to the end and writes its rows | NO |",
        "| bench_c_failing: exit status 3 | - | - | - | runs to the end and writes its rows | NO |",
    ]
    printed = capsys.readouterr().out
    assert "4 rows: 1 goal(s) not held; 2 bench(es) failed (bench_b_silent, bench_c_failing)" in printed
