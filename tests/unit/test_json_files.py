"""Standard JSON (null for undefined metrics), read back as NaN; one refusal before overwriting outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cytobench.errors import BadInputError
from cytobench.io.files import dumps_json, read_json, refuse_existing, standard_json, write_json_atomic


def _strict(text: str) -> object:
    """json.loads that refuses NaN / Infinity, as JavaScript's JSON.parse and most other parsers do."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_undefined_metrics_are_written_as_null_and_read_back_as_nan(tmp_path: Path) -> None:
    summary = {
        "epoch": 2,
        "stopped_early": None,
        "latest": {
            "coco/bbox_AP": 0.5,
            "coco/bbox_APl": float("nan"),
            "x": np.float32("inf"),
            "n": np.int64(3),
        },
        "history": [{"epoch": 1, "enum/wcr": np.float64("nan")}],
        "tensor": torch.tensor(float("nan")),
        "array": np.array([1.0, np.nan]),
    }
    path = write_json_atomic(tmp_path / "metrics.json", summary, indent=2)
    parsed = _strict(path.read_text())
    assert parsed["latest"] == {"coco/bbox_AP": 0.5, "coco/bbox_APl": None, "x": None, "n": 3}
    assert parsed["history"] == [{"epoch": 1, "enum/wcr": None}]
    assert parsed["tensor"] is None and parsed["array"] == [1.0, None]
    back = read_json(path)
    assert math.isnan(back["latest"]["coco/bbox_APl"]) and back["latest"]["coco/bbox_AP"] == 0.5
    assert math.isnan(back["history"][0]["enum/wcr"])
    assert back["stopped_early"] is None  # not a metric dict: its null stays None
    assert _strict(dumps_json({"a": float("nan")})) == {"a": None}
    assert standard_json((1.0, float("-inf"))) == [1.0, None]


def test_existing_outputs_are_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "pred.json"
    refuse_existing([out, tmp_path / "pred.images.json"])  # nothing there yet: fine
    out.write_text("[]")
    with pytest.raises(BadInputError, match="pred.json: exists; pass --overwrite"):
        refuse_existing([tmp_path / "other.json", out])
    refuse_existing(out, overwrite=True)
    assert out.read_text() == "[]"
