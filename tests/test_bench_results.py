"""bench.results: what every benchmark writes its numbers with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.results import write_json


def test_write_json_creates_the_folder_and_writes_paths_as_text(tmp_path):
    out = tmp_path / "runs" / "deep" / "r.json"
    write_json(out, {"ratio": 1.5, "weights": Path("/w")})
    assert json.loads(out.read_text()) == {"ratio": 1.5, "weights": "/w"}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_previous_result(tmp_path):
    out = tmp_path / "r.json"
    write_json(out, {"run": 1})

    class Unwritable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    with pytest.raises(RuntimeError, match="no text"):
        write_json(out, {"run": 2, "bad": Unwritable()})
    assert json.loads(out.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
