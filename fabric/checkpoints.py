"""Reading checkpoint files safely: ``.safetensors``, and ``.ckpt``/``.bin``/``.pt`` pickles with
``torch.load(weights_only=True)`` (tensors and plain containers only, never arbitrary objects).

Model checkpoints (:mod:`fabric.models`) and LoRA files (:mod:`fabric.lora`) both read through
:func:`read_checkpoint`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from fabric.errors import ModelLoadError

__all__ = ["read_checkpoint", "first_line"]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a pickled state dict, loaded safely on the CPU.

    Pickles go through ``torch.load(weights_only=True)``, which rebuilds tensors and plain
    containers only and refuses any other pickled object. A nested ``"state_dict"`` (the
    Lightning layout) is unwrapped; entries that are not tensors are left out.

    Args:
        path: the file.
        what: how errors name the file (``"checkpoint"``, ``"LoRA file"``).

    Raises:
        ModelLoadError: the file is unreadable, or holds something other than a state dict.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ModelLoadError(f"corrupt or unreadable {what} {path}: {first_line(exc)}") from None
    try:
        # mmap needs the zip-based format of torch >= 1.6; older pickles load into memory
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {what} {path} safely ({type(exc).__name__}): only tensor-only files are accepted; "
            "convert it to .safetensors with a tool you trust"
        ) from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{what} {path} holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
