"""Where a benchmark's numbers go: one JSON file per run, which docs/BENCHMARKS.md quotes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fabric.files import write_text_atomic

__all__ = ["write_json"]


def write_json(path: Path, data: Any, *, indent: int = 1) -> None:
    """Write ``data`` to ``path`` as JSON, creating its folder.

    The file is written beside its target and then renamed over it, so an interrupted benchmark
    leaves the previous result or none, never half a file. Values JSON does not know (paths,
    dtypes, devices) are written as their ``str``.
    """
    write_text_atomic(path, json.dumps(data, indent=indent, default=str) + "\n")
