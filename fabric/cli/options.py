"""Option definitions shared by several commands."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from fabric.errors import InvalidParameterError

MODEL = typer.Option("tiny", "--model", "-m", envvar="FABRIC_OPT_MODEL", help="'tiny', 'toy', a hub id, a diffusers folder, or a .safetensors/.ckpt file.")
DEVICE = typer.Option(None, "--device", envvar="FABRIC_OPT_DEVICE", help="torch device (default: cuda if available, else cpu).")
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


def resolve_device_dtype(device: str | None, dtype: str | None):
    """Explicit device and dtype, with CUDA/fp16 or CPU/fp32 as the defaults."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidParameterError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {device!r} requested but CUDA is not available")
    names = {"float32": torch.float32, "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype is None:
        return dev, (torch.float16 if dev.type == "cuda" else torch.float32)
    if dtype not in names:
        raise InvalidParameterError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return dev, names[dtype]


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
