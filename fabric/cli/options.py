"""Option definitions shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer

from fabric.errors import InvalidParameterError

MODEL = typer.Option("tiny", "--model", "-m", envvar="FABRIC_OPT_MODEL", help="'tiny', 'toy', a hub id, a diffusers folder, or a .safetensors/.ckpt file.")
DEVICE = typer.Option(None, "--device", envvar="FABRIC_OPT_DEVICE", help="torch device (default: cuda if available, else cpu).")
DTYPE = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (default: float16 on CUDA, float32 on CPU).")
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


def existing_file(path: Path, what: str) -> Path:
    path = path.expanduser()
    if not path.is_file():
        raise InvalidParameterError(f"{what} not found: {path}")
    return path
