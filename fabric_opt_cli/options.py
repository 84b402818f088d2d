"""Option definitions shared by several commands."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from fabric.errors import ConfigError, InvalidParameterError

MODEL = typer.Option(
    "tiny",
    "--model",
    "-m",
    envvar="FABRIC_OPT_MODEL",
    help="'tiny', 'toy', a hub id, a diffusers folder, or a .safetensors/.ckpt file.",
)
DEVICE = typer.Option(
    None, "--device", envvar="FABRIC_OPT_DEVICE", help="torch device (default: cuda if available, else cpu)."
)
DTYPE = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (default: float16 on CUDA, float32 on CPU).")
TOKEN_CACHE_GB = typer.Option(
    None,
    "--token-cache-gb",
    envvar="FABRIC_OPT_TOKEN_CACHE_GB",
    help="Memory bound of the reference-token cache in GiB, on the generator's device (default 1; 0 turns it off). "
    "References seen in an earlier round or trial are not run again while they fit: about 23 MB per reference and "
    "active step at SD 1.5 512x512 fp16, 210 MB at SDXL 1024x1024.",
)
SCHEDULER = typer.Option(None, "--scheduler", help="euler-a, euler, ddim, dpm++, ... (default: the model's own).")


STORAGE = typer.Option(
    None, "--storage", envvar="FABRIC_OPT_STORAGE",
    help="Optuna storage: a journal file (default <runs-dir>/optuna.journal) or an RDB URL (sqlite:///x.db, postgresql://...).",
)  # fmt: skip
RUNS_DIR = typer.Option(
    Path("runs"),
    "--runs-dir",
    envvar="FABRIC_OPT_RUNS_DIR",
    help="Folder for the default storage, baseline cache, plots and presets.",
)
TRACKING_URI = typer.Option(
    None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI (default sqlite:///<runs-dir>/mlflow.db, artifacts beside it in "
    "<runs-dir>/mlflow-artifacts): sqlite:///file.db, http://host:port, a database URL, or 'none' to disable.",
)  # fmt: skip


def tracking_uri(uri: str | None, runs_dir: Path) -> str:
    """``--tracking-uri``, or the database beside the study storage in the runs folder."""
    return uri if uri is not None else f"sqlite:///{Path(runs_dir) / 'mlflow.db'}"


def weights_table(items: list[str]) -> dict[str, str]:
    table: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(
                "--objective-weights takes NAME=PATH (e.g. pickscore=/models/pickscore or pickscore=tiny), got "
                f"{item!r}"
            )
        table[name.strip()] = value.strip()
    return table


#: library argument names (``FabricOptError.option``, a log record's ``option``) -> command-line flags
FLAGS = {
    "name": "--name",
    "storage": "--storage",
    "tracking_uri": "--tracking-uri",
    "study": "--study",
    "objective": "--objective",
    "objective_weights": "--objective-weights",
    "config": "--config",
    "model": "--model",
    "cache_bytes": "--token-cache-gb",
    # fabric-opt app
    "password": "--password",
    "host": "--host",
    "port": "--port",
    "user": "--user",
    "tuner": "--tuner",
}


def with_flag(message: str, option: str | None, example: str | None = None) -> str:
    """``message`` with the command-line flag that fixes it, e.g. ``"... (--name NEW)"``."""
    flag = FLAGS.get(option or "")
    if flag is None:
        return message
    return f"{message} ({flag} {example})" if example else f"{message} ({flag})"


def resolve_device_dtype(device: str | None, dtype: str | None):
    """Explicit device and dtype, with CUDA/fp16 or CPU/fp32 as the defaults."""
    from fabric.devices import default_placement

    return default_placement(device, dtype)


def token_cache_bytes(gib: float | None) -> int | None:
    """``--token-cache-gb`` in bytes (``None``: the generator's default)."""
    if gib is None:
        return None
    if not math.isfinite(gib) or gib < 0:
        raise InvalidParameterError(f"--token-cache-gb must be a size in GiB >= 0, got {gib}")
    return int(gib * 2**30)


def existing_file(path: Path, what: str) -> Path:
    path = path.expanduser()
    if not path.is_file():
        raise InvalidParameterError(f"{what} not found: {path}")
    return path
