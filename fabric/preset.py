"""Versioned JSON presets: FABRIC parameters plus, for generation sidecars, everything needed
to reproduce a run (prompt, seeds, model, reference images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, FabricOptError
from fabric.files import write_text_atomic
from fabric.params import FabricParams

__all__ = ["PRESET_FORMAT", "PRESET_VERSION", "preset_dict", "write_preset", "read_preset", "load_params"]

PRESET_FORMAT = "fabric-opt.preset"
PRESET_VERSION = 1


def preset_dict(params: FabricParams, **extra: Any) -> dict[str, Any]:
    """The JSON document of a preset; ``extra`` holds run context (prompt, seed, model, ...)."""
    return {"format": PRESET_FORMAT, "version": PRESET_VERSION, "params": params.to_dict(), **extra}


def write_preset(path: str | Path, params: FabricParams, **extra: Any) -> Path:
    return write_text_atomic(path, json.dumps(preset_dict(params, **extra), indent=2) + "\n")


def read_preset(path: str | Path) -> dict[str, Any]:
    """The validated preset document at ``path`` (``params`` already a :class:`FabricParams`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"preset not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"preset {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a JSON object")
    if data.get("format") != PRESET_FORMAT:
        raise ConfigError(
            f"{path} is not a fabric-opt preset (format {data.get('format')!r}); "
            "A1111/ComfyUI files are exports, not inputs"
        )
    version = data.get("version")
    if version != PRESET_VERSION:
        raise ConfigError(f"preset {path} has version {version!r}; this fabric-opt reads version {PRESET_VERSION}")
    try:
        data["params"] = FabricParams.from_dict(data.get("params", {}))
    except FabricOptError as exc:
        raise ConfigError(f"preset {path}: {exc}") from None
    return data


def load_params(path: str | Path) -> FabricParams:
    return read_preset(path)["params"]
