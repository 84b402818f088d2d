"""Loading Stable Diffusion pipelines: hub id, local diffusers folder, single checkpoint file,
or the built-in ``"tiny"`` / ``"toy"`` models."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fabric.errors import ModelLoadError

__all__ = ["load_pipeline", "BUILTIN_MODELS"]

logger = logging.getLogger(__name__)

BUILTIN_MODELS = ("tiny", "toy")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def _pipeline_class(kind: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if kind == "xl" else StableDiffusionPipeline


def load_pipeline(
    model: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    model_type: str | None = None,
    config: str | Path | None = None,
):
    """Build a diffusers text-to-image pipeline.

    Args:
        model: ``"tiny"``, ``"toy"``, a local diffusers folder (with ``model_index.json``), a
            single ``.safetensors`` / ``.ckpt`` checkpoint, or a hub id.
        device: where the pipeline runs.
        dtype: weight dtype (float32 on CPU, float16/bfloat16 on CUDA).
        model_type: ``"sd"`` or ``"xl"`` for single-file checkpoints; detected when ``None``.
        config: a local diffusers folder holding the component configs of a single-file
            checkpoint, for machines that cannot reach the hub.

    Raises:
        ModelLoadError: the model cannot be found or loaded (one-line message).
    """
    name = str(model)
    if name == "tiny":
        from fabric.tiny import build_tiny_pipeline

        return build_tiny_pipeline(device=device, dtype=dtype)
    if name == "toy":
        try:
            from fabric.toy.model import build_toy_pipeline
        except ImportError as exc:  # the toy world ships separately from the core generator
            raise ModelLoadError(f"the 'toy' model is not available in this installation ({exc})") from None
        return build_toy_pipeline(device=device, dtype=dtype)

    path = Path(name).expanduser()
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {path}")
        return _load_single_file(path, device, dtype, model_type=model_type, config=config)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return _from_pretrained(str(path), device, dtype)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {name!r}: expected 'tiny', 'toy', a diffusers folder, a .safetensors/.ckpt file, "
            "or a hub id like 'org/name'"
        )
    return _from_pretrained(name, device, dtype)


def _from_pretrained(source: str, device, dtype):
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=dtype, safety_checker=None)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not load model {source!r}: {first} (offline? pass a local folder or checkpoint file)"
        ) from None
    return pipe.to(device)


def _detect_single_file_type(path: Path) -> str:
    """``"xl"`` when the checkpoint has SDXL's second text encoder, else ``"sd"``."""
    keys = _checkpoint_keys(path)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "xl"
    return "sd"


def _checkpoint_keys(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ModelLoadError(f"corrupt or unreadable checkpoint {path}: {exc}") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {path} safely ({type(exc).__name__}); only tensor-only .ckpt files are accepted"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return list(state)


def _load_single_file(path: Path, device, dtype, *, model_type: str | None, config):
    kind = model_type or _detect_single_file_type(path)
    if kind not in ("sd", "xl"):
        raise ModelLoadError(f"unknown model type {kind!r}; use 'sd' or 'xl'")
    cls = _pipeline_class(kind)
    kwargs = {"torch_dtype": dtype}
    if config is not None:
        kwargs["config"] = str(config)
    try:
        pipe = cls.from_single_file(str(path), **kwargs)
    except Exception as exc:  # diffusers raises many types here; all mean "cannot load this file"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load checkpoint {path}: {first}") from None
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    return pipe.to(device)
