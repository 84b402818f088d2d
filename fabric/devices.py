"""Device and dtype names, parsed in one place for the library and the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPE_NAMES", "resolve_dtype", "resolve_device", "default_placement"]

#: accepted dtype names -> torch attribute name
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip


def resolve_dtype(dtype: Any) -> torch.dtype:
    """``None`` -> float32; torch dtypes pass through; ``"fp16"``, ``"bfloat16"``, ``"torch.float16"``... are parsed."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in DTYPE_NAMES:
        raise InvalidParameterError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return getattr(torch, DTYPE_NAMES[key])


def resolve_device(device: Any) -> torch.device:
    """A ``torch.device``; a CUDA device on a machine without CUDA is a one-line error."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidParameterError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {device!r} requested but CUDA is not available")
    return dev


def default_placement(device: Any = None, dtype: Any = None) -> tuple[torch.device, torch.dtype]:
    """Explicit device and dtype, defaulting to CUDA in float16 when available, else CPU in float32."""
    import torch

    dev = resolve_device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        return dev, (torch.float16 if dev.type == "cuda" else torch.float32)
    return dev, resolve_dtype(dtype)
