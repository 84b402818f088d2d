"""LoRA adapters on a diffusers pipeline, through diffusers' PEFT backend.

Formats (told apart by the file's keys, not its name):

* diffusers / PEFT LoRA files (``pytorch_lora_weights.safetensors``, kohya ``lora_unet_*``
  files, LoRAs from reward fine-tuning such as AlignProp's): loaded by
  ``pipeline.load_lora_weights``, which reads their alphas and metadata;
* the legacy per-attention-processor layout of diffusers <= 0.20 ``LoRAAttnProcessor``
  (``...attn1.processor.to_q_lora.down.weight``), in which the HPS LoRA (``adapted_model.bin``,
  Wu et al. 2023) ships: converted here to PEFT keys (``...attn1.to_q.lora_A.weight``, scale 1:
  ``lora_alpha = rank``) and loaded the same way.

Each file becomes a named adapter; all loaded adapters stay active with their own scale
(``set_adapters``), so FABRIC's processors, which call the layer's ``to_q``/``to_k``/``to_v``/
``to_out`` modules, go through the LoRA-wrapped layers like the stock processors do.

The HPS LoRA was trained with "Weird image. " as a negative prompt for non-preferred images; its
authors require that prefix on the negative prompt at inference. :attr:`LoraInfo.negative_prefix`
carries it, and :class:`~fabric.fabric_generator.FabricGenerator` applies it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from fabric.checkpoints import read_checkpoint
from fabric.errors import InvalidParameterError, ModelLoadError

__all__ = [
    "HPS_NEGATIVE_PREFIX",
    "LoraInfo",
    "load_lora",
    "load_loras",
    "parse_lora_spec",
    "convert_attn_procs_lora",
    "is_attn_procs_lora",
    "negative_prefix_of",
]

logger = logging.getLogger(__name__)

HPS_NEGATIVE_PREFIX = "Weird image. "
# file names looked up, in order, when a LoRA path is a folder
_FOLDER_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin", "adapted_model.bin")
_LEGACY_KEY = re.compile(r"^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@dataclass(frozen=True)
class LoraInfo:
    """One loaded LoRA adapter.

    Attributes:
        adapter_name: the PEFT adapter name on the pipeline's modules.
        path: the file it came from.
        scale: its weight in ``set_adapters`` (0 gives the base model's output).
        format: ``"diffusers"`` (anything ``load_lora_weights`` reads) or ``"attn-procs"``
            (the legacy per-processor layout, converted on load).
        negative_prefix: text to put before the negative prompt while this LoRA is in use.
    """

    adapter_name: str
    path: str
    scale: float
    format: str
    negative_prefix: str = ""


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """``"PATH[:scale]"`` -> ``(PATH, scale)``; scale 1.0 when omitted.

    The scale is what follows the last ``:`` when it parses as a number, so Windows drive
    letters (``C:\\loras\\x.safetensors``) stay part of the path.
    """
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            scale = float(tail)
        except ValueError:
            return spec, 1.0
        return path, _check_scale(scale)
    return spec, 1.0


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InvalidParameterError(f"LoRA scale must be a finite number, got {scale!r}")
    return float(scale)


def is_attn_procs_lora(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether every key is in the legacy ``...processor.to_q_lora.down.weight`` layout."""
    return bool(state_dict) and all(_LEGACY_KEY.match(k) for k in state_dict)


def convert_attn_procs_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Legacy per-attention-processor LoRA keys -> PEFT keys under ``unet.``.

    ``<module>.processor.to_q_lora.down.weight`` -> ``unet.<module>.to_q.lora_A.weight``
    (``up`` -> ``lora_B``; ``to_out_lora`` -> ``to_out.0``). Tensors are shared, not copied.

    Raises:
        ModelLoadError: a key is not in that layout, or an up/down pair is incomplete.
    """
    out = {}
    for key, value in state_dict.items():
        m = _LEGACY_KEY.match(key)
        if m is None:
            raise ModelLoadError(f"not a per-attention-processor LoRA key: {key!r}")
        module, proj, half = m.groups()
        proj = "to_out.0" if proj == "to_out" else proj
        out[f"unet.{module}.{proj}.lora_{'A' if half == 'down' else 'B'}.weight"] = value
    halves = {k.rsplit(".lora_", 1)[0] for k in out}
    for base in halves:
        if f"{base}.lora_A.weight" not in out or f"{base}.lora_B.weight" not in out:
            raise ModelLoadError(f"LoRA layer {base} has only one of its down/up matrices")
    return out


def _resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        for name in _FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise ModelLoadError(f"no LoRA weights in {path} (looked for {', '.join(_FOLDER_FILES)})")
    if not path.is_file():
        raise ModelLoadError(f"LoRA file not found: {path}")
    return path


def _is_hps(path: Path) -> bool:
    # the HPS release is "adapted_model.bin"; FABRIC's own scripts match "hps_lora" in the path
    return path.name == "adapted_model.bin" or "hps" in path.name.lower()


def _adapter_names(pipeline) -> set[str]:
    try:
        return {n for names in pipeline.get_list_adapters().values() for n in names}
    except (AttributeError, ValueError):
        return set()


def load_lora(
    pipeline,
    path: str | Path,
    scale: float = 1.0,
    *,
    adapter_name: str | None = None,
    negative_prefix: str | None = None,
) -> LoraInfo:
    """Load one LoRA into ``pipeline`` and activate it (with the adapters loaded before).

    Args:
        pipeline: a diffusers pipeline with LoRA support (SD, SDXL).
        path: a LoRA file (``.safetensors``, ``.bin``) or a folder holding one.
        scale: the adapter's weight; 0 reproduces the base model exactly.
        adapter_name: the PEFT adapter name; derived from the file name when omitted.
        negative_prefix: text to put before the negative prompt; ``None`` picks
            ``"Weird image. "`` for the HPS LoRA (a legacy-layout file named ``adapted_model.bin``
            or with ``hps`` in its name) and nothing otherwise.

    Returns:
        What was loaded (see :class:`LoraInfo`).

    Raises:
        ModelLoadError: the file is missing, unreadable, or does not fit the model.
        InvalidParameterError: ``scale`` is not a finite number.
    """
    scale = _check_scale(scale)
    if not hasattr(pipeline, "load_lora_weights"):
        raise ModelLoadError(f"{type(pipeline).__name__} does not support LoRA adapters")
    file = _resolve(path)
    state_dict = read_checkpoint(file, "LoRA file")
    legacy = is_attn_procs_lora(state_dict)
    taken = _adapter_names(pipeline)
    if adapter_name is None:
        stem = re.sub(r"\W+", "_", file.stem).strip("_") or "lora"
        adapter_name, i = stem, 1
        while adapter_name in taken:
            i += 1
            adapter_name = f"{stem}_{i}"
    elif adapter_name in taken:
        raise InvalidParameterError(f"an adapter named {adapter_name!r} is already loaded")

    try:
        if legacy:
            pipeline.load_lora_weights(convert_attn_procs_lora(state_dict), adapter_name=adapter_name)
        else:  # from the file, so diffusers also reads the alphas kept in its metadata
            pipeline.load_lora_weights(
                str(file.parent), weight_name=file.name, adapter_name=adapter_name, local_files_only=True
            )
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load LoRA {file}: {first}") from None
    if adapter_name not in _adapter_names(pipeline):
        raise ModelLoadError(f"LoRA {file} matched no layer of this model (wrong model family?)")

    # the scales of the adapters loaded here before (diffusers does not hand them back); adapters
    # deleted since then are dropped
    present = _adapter_names(pipeline)
    scales = {k: v for k, v in getattr(pipeline, "_fabric_lora_scales", {}).items() if k in present}
    scales[adapter_name] = scale
    pipeline._fabric_lora_scales = scales
    pipeline.set_adapters(list(scales), adapter_weights=list(scales.values()))

    if negative_prefix is None:
        negative_prefix = HPS_NEGATIVE_PREFIX if legacy and _is_hps(file) else ""
    info = LoraInfo(adapter_name, str(file), scale, "attn-procs" if legacy else "diffusers", negative_prefix)
    logger.info("loaded LoRA %s as adapter %r at scale %g (%s format)", file, adapter_name, scale, info.format)
    if negative_prefix:
        logger.info("LoRA %s: negative prompts get the prefix %r", file.name, negative_prefix)
    return info


def load_loras(pipeline, loras: Iterable[str | Path | tuple[str | Path, float]]) -> list[LoraInfo]:
    """Load several LoRAs; each item is a path, a ``"PATH[:scale]"`` string, or ``(path, scale)``."""
    infos = []
    for item in loras:
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise InvalidParameterError(f"a LoRA is (path, scale), got {item!r}")
            path, scale = item
        elif isinstance(item, Path):
            path, scale = item, 1.0
        else:
            path, scale = parse_lora_spec(str(item))
        infos.append(load_lora(pipeline, path, scale))
    return infos


def negative_prefix_of(infos: Iterable[LoraInfo]) -> str:
    """The negative-prompt prefix that a set of loaded LoRAs asks for (each prefix once).

    A LoRA at scale 0 is switched off, so its prefix is not asked for either: the result is then
    the base model's, bit for bit.
    """
    seen: list[str] = []
    for info in infos:
        if info.scale != 0 and info.negative_prefix and info.negative_prefix not in seen:
            seen.append(info.negative_prefix)
    return "".join(seen)
