"""Loading Stable Diffusion pipelines: hub id, local diffusers folder, single checkpoint file,
or a named model from the registry (``"tiny"``, ``"tiny-v"``, ``"tiny-xl"``, and ``"toy"`` from
the toy world).

Named models come from a small registry: :func:`register_model` adds one in-process, and
installed packages add theirs through the ``fabric_opt.models`` entry-point group (the toy world
registers ``"toy"`` that way), so this package never imports the packages that build on it.

Single-file checkpoints (``.safetensors`` / ``.ckpt`` in the original LDM/CompVis layout, as
A1111 and ComfyUI use them) go through diffusers' ``from_single_file``. Their family is read
from the checkpoint's keys (:func:`detect_model_type`) unless given. ``.ckpt`` files are opened
with ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary
unpickling. diffusers needs the component configs of the family; offline, pass ``config=`` a
local diffusers folder of the same family (weights in it are not used).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from fabric.checkpoints import first_line, read_checkpoint
from fabric.errors import ModelLoadError

__all__ = [
    "load_pipeline",
    "detect_model_type",
    "read_checkpoint",
    "register_model",
    "available_models",
    "BUILTIN_MODELS",
    "MODEL_TYPES",
    "ENTRY_POINT_GROUP",
]

logger = logging.getLogger(__name__)


class _VacuousCastWarning(logging.Filter):
    """Drops diffusers' "modules ... should be kept in float32: []" warning.

    ``ModelMixin.to`` logs it on every dtype cast, also when no module is pinned to float32 (the
    empty list). An fp16 call logged it at every VAE upcast and at its undoing: references are
    encoded, and SDXL images decoded, in float32. Casts that leave pinned modules keep it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_VacuousCastWarning())

#: the random-weight models built in code by :mod:`fabric.tiny` (always available)
BUILTIN_MODELS = ("tiny", "tiny-v", "tiny-xl")
#: entry-point group through which installed packages register named models
ENTRY_POINT_GROUP = "fabric_opt.models"
# a builder takes (device, dtype) keywords and returns a diffusers pipeline
ModelBuilder = Callable[..., object]
_REGISTRY: dict[str, ModelBuilder] = {}
#: values of ``model_type`` / ``--model-type``: the pipeline family of a single-file checkpoint
MODEL_TYPES = ("sd", "xl")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

# detected family -> (pipeline kind, the hub folder diffusers takes configs from when none is given)
_FAMILIES = {
    "sd1": ("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "sd2": ("sd", "stabilityai/stable-diffusion-2-1"),
    "xl": ("xl", "stabilityai/stable-diffusion-xl-base-1.0"),
}
_PIPELINE_CLASS = {"sd": "StableDiffusionPipeline", "xl": "StableDiffusionXLPipeline"}


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
        model: a built-in name (:data:`BUILTIN_MODELS`), a local diffusers folder (with
            ``model_index.json``), a single ``.safetensors`` / ``.ckpt`` checkpoint, or a hub id.
        device: where the pipeline runs.
        dtype: weight dtype (float32 on CPU, float16/bfloat16 on CUDA).
        model_type: ``"sd"`` (SD 1.x/2.x) or ``"xl"`` for single-file checkpoints; detected from
            the checkpoint's keys when ``None``.
        config: a local diffusers folder (or hub id) holding the component configs of a
            single-file checkpoint's family, for machines that cannot reach the hub.

    Raises:
        ModelLoadError: the model cannot be found or loaded (one-line message).
    """
    name = str(model)
    path = Path(name).expanduser()
    single_file = path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if (model_type is not None or config is not None) and not single_file:
        raise ModelLoadError("model_type and config apply to single-file checkpoints (.safetensors/.ckpt) only")
    builder = _named_builder(name)
    if builder is not None:
        return builder(device=device, dtype=dtype)
    if single_file:
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {path}")
        return _load_single_file(path, device, dtype, model_type=model_type, config=config)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return _from_pretrained(str(path), device, dtype)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {name!r}: expected one of {', '.join(available_models())}, a diffusers folder, "
            "a .safetensors/.ckpt file, or a hub id like 'org/name'"
        )
    return _from_pretrained(name, device, dtype)


def register_model(name: str, builder: ModelBuilder, *, override: bool = False) -> None:
    """Make ``load_pipeline(name)`` call ``builder(device=..., dtype=...)``.

    Args:
        name: the model name, e.g. ``"toy"``; it must not look like a path or a hub id.
        builder: returns a diffusers text-to-image pipeline on the given device and dtype.
        override: replace an existing registration instead of raising.
    """
    if not name or "/" in name or name.startswith((".", "~")) or Path(name).suffix.lower() in SINGLE_FILE_SUFFIXES:
        raise ValueError(f"invalid model name {name!r}: it would be read as a path or hub id")
    if (name in _REGISTRY or name in BUILTIN_MODELS) and not override:
        raise ValueError(f"model {name!r} is already registered; pass override=True to replace it")
    _REGISTRY[name] = builder


def _entry_points() -> dict[str, object]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_models() -> list[str]:
    """Names :func:`load_pipeline` resolves without a path: built-in, registered and installed."""
    return list(dict.fromkeys([*BUILTIN_MODELS, *_REGISTRY, *sorted(_entry_points())]))


def _named_builder(name: str) -> ModelBuilder | None:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in BUILTIN_MODELS:
        from fabric.tiny import TINY_MODELS

        return TINY_MODELS[name]
    if "/" in name or Path(name).suffix:
        return None
    entry = _entry_points().get(name)
    if entry is None:
        return None
    try:
        builder = entry.load()  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ModelLoadError(f"model {name!r} is registered by {entry.value} but cannot be imported: {exc}") from None  # type: ignore[attr-defined]
    _REGISTRY[name] = builder
    return builder


def _from_pretrained(source: str, device, dtype):
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=dtype, safety_checker=None)
    except (OSError, ValueError) as exc:
        # diffusers ends some messages with "check out the root cause in the stacktrace above": there is none here
        reason = first_line(exc).split(" Please check out the root cause")[0].rstrip(". ")
        raise ModelLoadError(
            f"could not load model {source!r}: {reason}; with no network, download it once online or give a local "
            "diffusers folder or .safetensors/.ckpt file",
            option="model",
            example="PATH",
        ) from None
    return pipe.to(device)


def check_model(model: str | Path) -> None:
    """Raise :class:`~fabric.errors.ModelLoadError` now if :func:`load_pipeline` could not find ``model``.

    Cheap: it checks names, paths and, for a hub id, the Hugging Face cache (and, when the hub is
    not offline, one HEAD request); it loads nothing. Errors name the argument that fixes them
    (``option="model"``).
    """
    import os

    name = str(model)
    path = Path(name).expanduser()
    try:
        if _named_builder(name) is not None:
            return
    except ModelLoadError as exc:
        raise ModelLoadError(str(exc), option="model", example="PATH") from None
    fix = "download it once with the hub online, or give a local diffusers folder or .safetensors/.ckpt file"
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {path}", option="model", example="PATH")
        return
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path} is not a diffusers pipeline folder (no model_index.json)", option="model", example="PATH"
            )
        return
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {name!r}: expected one of {', '.join(available_models())}, a diffusers folder, "
            "a .safetensors/.ckpt file, or a hub id like 'org/name'",
            option="model",
            example="PATH",
        )
    import huggingface_hub
    from huggingface_hub import constants

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "model_index.json"), str):
        return
    offline = constants.HF_HUB_OFFLINE or any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if offline:
        raise ModelLoadError(
            f"model {name!r} is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE): {fix}",
            option="model",
            example="PATH",
        )
    try:
        found = huggingface_hub.file_exists(name, "model_index.json")
    except Exception as exc:  # noqa: BLE001 - httpx/requests/hub errors differ across versions
        raise ModelLoadError(
            f"model {name!r} is not in the Hugging Face cache and the hub is unreachable "
            f"({first_line(exc)[:80]}): {fix}",
            option="model",
            example="PATH",
        ) from None
    if not found:
        raise ModelLoadError(
            f"hub repository {name!r} has no model_index.json (not a diffusers pipeline)",
            option="model",
            example="PATH",
        )


# ---- single-file checkpoints ------------------------------------------------------------------
def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape, reading only the header of a ``.safetensors`` file."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        except Exception as exc:
            raise ModelLoadError(f"corrupt or unreadable checkpoint {path}: {first_line(exc)}") from None
    return {k: tuple(v.shape) for k, v in read_checkpoint(path).items()}


def detect_model_type(path: str | Path) -> str:
    """The family of an original-layout (LDM) checkpoint: ``"sd1"``, ``"sd2"`` or ``"xl"``.

    Read from the text encoders' key names: SD 1.x has OpenAI CLIP under
    ``cond_stage_model.transformer``, SD 2.x OpenCLIP under ``cond_stage_model.model``, SDXL a
    second (OpenCLIP) encoder under ``conditioner.embedders.1``.

    Raises:
        ModelLoadError: not a Stable Diffusion checkpoint, or a family FABRIC cannot drive
            (SDXL refiner, inpainting).
    """
    path = Path(path)
    shapes = _checkpoint_shapes(path)
    if not any(k.startswith("model.diffusion_model.") for k in shapes):
        raise ModelLoadError(
            f"{path.name} is not an original-layout Stable Diffusion checkpoint (no model.diffusion_model.* keys); "
            "a LoRA goes to --lora, a diffusers folder to --model"
        )
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise ModelLoadError(
            f"{path.name} is an inpainting/edit checkpoint ({conv_in[1]} input channels); use a text-to-image model"
        )
    if any(k.startswith("conditioner.embedders.1.") for k in shapes):
        return "xl"
    if any(k.startswith("conditioner.embedders.0.model.") for k in shapes):
        raise ModelLoadError(f"{path.name} is an SDXL refiner checkpoint (img2img only); use an SDXL base model")
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        return "sd2"
    if any(k.startswith("model.diffusion_model.label_emb.") for k in shapes):
        return "xl"  # a U-Net-only SDXL file: text-time embedding without text encoders
    return "sd1"


def _config_pipeline_class(config: Path) -> str | None:
    index = config / "model_index.json"
    try:
        return json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def _load_single_file(path: Path, device, dtype, *, model_type: str | None, config):
    import diffusers

    family = detect_model_type(path)  # also refuses unsafe .ckpt files before diffusers opens them
    if model_type is None:
        kind = _FAMILIES[family][0]
    elif model_type in MODEL_TYPES:
        kind = model_type
    else:
        raise ModelLoadError(f"unknown model type {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    logger.info("loading %s as %s (detected family %s)", path, _PIPELINE_CLASS[kind], family)

    kwargs: dict = {"torch_dtype": dtype}
    if kind == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if config is not None:
        config_path = Path(config).expanduser()
        if config_path.is_dir():
            expected = _PIPELINE_CLASS[kind]
            found = _config_pipeline_class(config_path)
            if found is None:
                raise ModelLoadError(f"config folder {config_path} has no readable model_index.json")
            if found != expected:
                raise ModelLoadError(
                    f"config folder {config_path} is for {found}, but {path.name} needs {expected}; "
                    "pass a config folder of the same model family"
                )
            kwargs.update(config=str(config_path), local_files_only=True)
        elif str(config).startswith((".", "/", "~")) or str(config).count("/") != 1:
            raise ModelLoadError(f"config folder not found: {config_path}")
        else:
            kwargs["config"] = str(config)  # a hub id

    cls = getattr(diffusers, _PIPELINE_CLASS[kind])
    try:
        pipe = cls.from_single_file(str(path), **kwargs)
    except Exception as exc:  # diffusers raises many types here; all mean "cannot load this file"
        if config is None:
            raise ModelLoadError(
                f"could not load checkpoint {path}: {first_line(exc)} (offline? give config= a local diffusers "
                "folder of "
                f"the same family, e.g. a copy of {_FAMILIES[family][1]})",
                option="config",
                example="FOLDER",
            ) from None
        raise ModelLoadError(f"could not load checkpoint {path}: {first_line(exc)}") from None
    if torch.device(device).type == "cpu":
        _own_aligned_storage(pipe)
    return pipe.to(device)


def _own_aligned_storage(pipe) -> None:
    """Copy every weight that sits at an unaligned address into an allocation of its own.

    diffusers leaves single-file safetensors weights as views at the file's byte offsets (none of
    a tiny U-Net's was 64-byte aligned). CPU kernels take other code paths for unaligned operands,
    so the same weights loaded from a folder and from a single file gave images that differed in
    the last bits on AMD EPYC. PyTorch's CPU allocator aligns to 64 bytes, so after the copy both
    loads run the same kernels on the same layouts. Tied weights stay tied: a parameter is one
    object, copied once. The file's buffer lives until its last view is replaced, so loading
    briefly holds up to twice the model's weights in memory.
    """
    with torch.no_grad():
        for component in pipe.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for module in component.modules():
                for param in module.parameters(recurse=False):
                    if param.data_ptr() % 64:
                        param.data = param.data.clone()
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer.data_ptr() % 64:
                        module._buffers[name] = buffer.clone()
