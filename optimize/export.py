"""Exporters: FABRIC parameters as presets for fabric-opt itself, the A1111 extension, ComfyUI
and plain Python.

Each exporter turns :class:`~fabric.params.FabricParams` plus an :class:`ExportContext` (prompt,
seed, model, reference images, provenance) into an :class:`Export`: the files to write and the
*notes*, i.e. what the target cannot represent and which conversions were made. Notes are part
of every output (a JSON key, an infotext key, comments) and the CLI prints them.

Formats (:func:`available_formats`):

``json``
    The versioned fabric-opt preset (:mod:`fabric.preset`); ``fabric-opt generate --preset`` and
    :func:`fabric.preset.load_params` read it back to the exact same ``FabricParams``.
``a1111``
    The generation-parameters text ("infotext") of the sd-webui-fabric extension, which "Send to
    txt2img" reads back: prompt line, ``Negative prompt: ...`` line, then ``Steps: 20, Sampler:
    Euler a, CFG scale: 7, Seed: ..., fabric_start: ..., fabric_end: ..., fabric_min_weight: ...,
    fabric_max_weight: ..., fabric_neg_scale: ..., fabric_pos_images: [...], fabric_neg_images:
    [...]``; plus the extension's preset file ``{"liked_paths": [...], "disliked_paths": [...]}``.
    The extension switches between ``max_weight`` and ``min_weight`` by the *timestep* progress
    ``1 - t / (T - 1)``, not the step index; :func:`a1111_schedule` converts the range so the same
    steps are active (see there).
``comfyui``
    Widget values of the ComfyUI_fabric nodes ``KSamplerFABRICAdv`` (``pos_weight``, absolute
    ``neg_weight = max_weight * neg_scale``, ``feedback_start``/``feedback_end`` as step indices,
    see :func:`comfyui_steps`), ``KSamplerFABRIC`` (``feedback_percent``) and ``FABRICPatchModel``.
``diffusers``
    A runnable Python script that generates with these parameters through fabric-opt's API.

Neither frontend has a depth profile (bottleneck scales), prompt dropout or a reference-count
limit; ComfyUI also has no minimum weight. The notes say so whenever the parameters use them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError
from fabric.params import FabricParams
from fabric.schedule import active_steps

__all__ = [
    "ExportContext",
    "Export",
    "available_formats",
    "register_exporter",
    "export_params",
    "a1111_schedule",
    "comfyui_steps",
    "format_a1111",
    "parse_a1111",
    "DEFAULT_EXTENSIONS",
]

# Timesteps of the SD training schedule (T in the extension's 1 - t/(T-1)).
TRAIN_TIMESTEPS = 1000
# File name endings of each format's main file (the CLI names exports <study><ending>).
DEFAULT_EXTENSIONS = {"json": ".json", "a1111": ".a1111.txt", "comfyui": ".comfyui.json", "diffusers": ".py"}
_A1111_SAMPLERS = {
    None: "Euler a", "euler-a": "Euler a", "euler": "Euler", "ddim": "DDIM", "pndm": "PLMS", "lms": "LMS",
    "heun": "Heun", "dpm++": "DPM++ 2M", "dpm++-karras": "DPM++ 2M Karras", "dpm++-sde": "DPM++ SDE", "unipc": "UniPC",
}  # fmt: skip
_COMFY_SAMPLERS = {
    None: ("euler_ancestral", "normal"), "euler-a": ("euler_ancestral", "normal"), "euler": ("euler", "normal"),
    "ddim": ("ddim", "ddim_uniform"), "ddpm": ("ddpm", "normal"), "lms": ("lms", "normal"), "heun": ("heun", "normal"),
    "dpm++": ("dpmpp_2m", "normal"), "dpm++-karras": ("dpmpp_2m", "karras"), "dpm++-sde": ("dpmpp_sde", "normal"),
    "unipc": ("uni_pc", "normal"),
}  # fmt: skip


@dataclass(frozen=True)
class ExportContext:
    """What a preset carries besides the parameters.

    Attributes:
        prompt: the prompt line (A1111 needs one; the JSON preset makes it the default prompt).
        negative_prompt: the negative prompt.
        seed: the seed.
        model: the model the parameters were tuned on.
        scheduler: the scheduler name (``None``: the model's own); picks the frontend sampler.
        n_images: images per generation (JSON preset, Python script).
        height, width: image size, when not the model's default.
        liked, disliked: reference image paths (A1111 ``fabric_pos_images`` / preset, script).
        source: provenance (study, trial, objective, estimate), written where the format allows.
    """

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    model: str = ""
    scheduler: str | None = None
    n_images: int = 4
    height: int | None = None
    width: int | None = None
    liked: tuple[str, ...] = ()
    disliked: tuple[str, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "liked", tuple(str(p) for p in self.liked))
        object.__setattr__(self, "disliked", tuple(str(p) for p in self.disliked))
        object.__setattr__(self, "source", dict(self.source))


@dataclass(frozen=True)
class Export:
    """One exported preset.

    Attributes:
        format: the format name.
        content: the main file's text.
        extra: ``suffix -> text`` of companion files, written beside the main file as
            ``<main stem><suffix>`` (the A1111 preset JSON).
        notes: what the target cannot represent and which conversions were made.
    """

    format: str
    content: str
    extra: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def paths(self, path: str | Path) -> list[Path]:
        """The files :meth:`write` creates for main file ``path``."""
        path = Path(path)
        return [path, *(path.with_name(path.stem + suffix) for suffix in self.extra)]

    def write(self, path: str | Path) -> list[Path]:
        """Write the main file at ``path`` and the companions beside it (each atomically)."""
        paths = self.paths(path)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for target, text in zip(paths, (self.content, *self.extra.values())):
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
        return paths


Exporter = Callable[[FabricParams, ExportContext], Export]
_REGISTRY: dict[str, Exporter] = {}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Decorator registering ``exporter(params, context) -> Export`` under ``name``."""

    def decorate(fn: Exporter) -> Exporter:
        if name in _REGISTRY:
            raise ValueError(f"exporter '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorate


def available_formats() -> list[str]:
    return sorted(_REGISTRY)


def export_params(params: FabricParams, format: str, context: ExportContext | None = None) -> Export:
    """Export ``params`` in ``format`` (see module docs).

    Raises:
        ConfigError: an unknown format.
    """
    if format not in _REGISTRY:
        raise ConfigError(f"unknown export format {format!r}; known: {', '.join(available_formats())}")
    if not isinstance(params, FabricParams):
        raise ConfigError(f"params must be FabricParams, got {type(params).__name__}")
    return _REGISTRY[format](params, context or ExportContext())


# ---- shared notes ---------------------------------------------------------------------------


def _unsupported(params: FabricParams, target: str, *, min_weight: bool) -> list[str]:
    notes = []
    if min_weight and params.min_weight > 0:
        notes.append(
            f"min_weight={params.min_weight:g} is not representable in {target}: outside the feedback steps it applies "
            "no feedback at all (weight 0)"
        )
    if params.pos_bottleneck_scale != 1.0 or params.neg_bottleneck_scale != 1.0:
        notes.append(
            f"depth profile (pos_bottleneck_scale={params.pos_bottleneck_scale:g}, neg_bottleneck_scale="
            f"{params.neg_bottleneck_scale:g}) is not representable in {target}: it applies one weight at every "
            "U-Net depth"
        )
    if params.prompt_dropout > 0:
        notes.append(
            f"prompt_dropout={params.prompt_dropout:g} is not representable in {target}: prompts are used whole"
        )
    if params.max_references is not None:
        k = params.max_references
        notes.append(
            f"max_references={k} is not representable in {target}: it uses every reference image given, so pass at "
            "most "
            f"{k} liked and {k} disliked images (the most recent)"
        )
    return notes


def _sampler_note(context: ExportContext, target: str, name: str) -> list[str]:
    if context.scheduler is None:
        return [f"sampler set to {name}; the study used the model's own scheduler"]
    return (
        []
        if context.scheduler in ("euler-a",)
        else [f"sampler set to {name} for the study's scheduler {context.scheduler!r}"]
    )


# ---- json -----------------------------------------------------------------------------------


@register_exporter("json")
def _export_json(params: FabricParams, context: ExportContext) -> Export:
    from fabric.preset import preset_dict

    extra: dict[str, Any] = {}
    for key in ("prompt", "negative_prompt", "seed", "n_images", "height", "width", "model", "scheduler"):
        value = getattr(context, key)
        if value not in (None, ""):
            extra[key] = value
    if context.liked:
        extra["liked"] = list(context.liked)
    if context.disliked:
        extra["disliked"] = list(context.disliked)
    if context.source:
        extra["source"] = dict(context.source)
    return Export("json", json.dumps(preset_dict(params, **extra), indent=2) + "\n")


# ---- A1111 ----------------------------------------------------------------------------------


def a1111_schedule(params: FabricParams) -> tuple[float, float, float, float, str]:
    """The extension's ``(fabric_start, fabric_end, fabric_min_weight, fabric_max_weight, note)``.

    fabric-opt activates steps ``i_start..i_end`` of ``N`` (``round(N * start)`` ..
    ``round(N * end)``, :func:`fabric.schedule.active_steps`). The extension instead compares
    the progress ``1 - t / (T - 1)`` of the step's timestep ``t`` with ``[start, end]``. A1111
    samples ``N`` steps at ``t_i = (T - 1)(1 - i / (N - 1))``, so step ``i`` has progress
    ``i / (N - 1)``; the exported bounds sit half a step outside the active steps
    (``(i_start - 1/2) / (N - 1)``, ``(i_end + 1/2) / (N - 1)``, clipped to [0, 1]) so that
    exactly the same steps are active, robust to rounding of ``t``. When no step is active,
    ``min_weight`` applies everywhere and is exported as a constant weight.
    """
    n = params.steps
    steps = active_steps(n, params.feedback_start, params.feedback_end)
    if len(steps) == 0:
        w = params.min_weight
        return (
            0.0,
            1.0,
            w,
            w,
            f"no step of {n} has full-weight feedback (start rounds past the last step): exported as a constant "
            f"weight {w:g}",
        )
    i0, i1 = steps[0], steps[-1]
    if n == 1:
        return 0.0, 1.0, params.min_weight, params.max_weight, "one step: feedback on it"
    start = 0.0 if i0 == 0 else round((i0 - 0.5) / (n - 1), 4)
    end = 1.0 if i1 == n - 1 else round((i1 + 0.5) / (n - 1), 4)
    note = (
        "schedule converted from step indices to the extension's timestep progress 1 - t/(T-1): fabric_start "
        f"{start:g}, "
        f"fabric_end {end:g} keep steps {i0}..{i1} of {n} active (feedback_start={params.feedback_start:g}, "
        f"feedback_end={params.feedback_end:g}); assumes A1111's uniform timestep spacing for {n} steps"
    )
    return start, end, params.min_weight, params.max_weight, note


def _a1111_value(value: Any) -> str:
    text = (
        json.dumps(value)
        if isinstance(value, (list, tuple))
        else (repr(value) if isinstance(value, float) else str(value))
    )
    # A1111 quotes values that would break its "key: value, key: value" line.
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') else text


def format_a1111(prompt: str, negative_prompt: str, fields: Sequence[tuple[str, Any]]) -> str:
    """The infotext: prompt, ``Negative prompt:`` line, then ``key: value`` pairs on one line."""
    lines = [prompt.replace("\n", " ")]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt.replace(chr(10), ' ')}")
    lines.append(", ".join(f"{key}: {_a1111_value(value)}" for key, value in fields))
    return "\n".join(lines) + "\n"


_PAIR = re.compile(r'\s*([A-Za-z][\w \-/]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict[str, Any]:
    """Read an infotext back (as A1111's "Send to txt2img" does).

    Returns:
        ``{"prompt": ..., "negative_prompt": ..., <key>: <value>, ...}`` with quoted values
        unquoted and JSON lists (``fabric_pos_images``) decoded; other values stay strings.
    """
    lines = text.strip("\n").split("\n")
    if not lines or not lines[-1].strip():
        raise ConfigError("empty A1111 generation parameters")
    params_line = lines[-1]
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines[:-1]:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    for key, raw in _PAIR.findall(params_line):
        value: Any = raw.strip()
        if value.startswith('"'):
            value = json.loads(value)
        if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key.strip()] = value
    return out


@register_exporter("a1111")
def _export_a1111(params: FabricParams, context: ExportContext) -> Export:
    start, end, min_w, max_w, schedule_note = a1111_schedule(params)
    sampler = _A1111_SAMPLERS.get(context.scheduler, "Euler a")
    notes = [
        schedule_note,
        *_unsupported(params, "the A1111 extension", min_weight=False),
        *_sampler_note(context, "A1111", sampler),
    ]
    if not context.liked and not context.disliked:
        notes.append(
            "no reference images: add liked/disliked images in the extension (fabric_pos_images/fabric_neg_images "
            "are empty)"
        )
    fields: list[tuple[str, Any]] = [
        ("Steps", params.steps),
        ("Sampler", sampler),
        ("CFG scale", params.guidance_scale),
        ("Seed", context.seed),
    ]
    if context.height and context.width:
        fields.append(("Size", f"{context.width}x{context.height}"))
    fields += [
        ("fabric_start", start),
        ("fabric_end", end),
        ("fabric_min_weight", min_w),
        ("fabric_max_weight", max_w),
        ("fabric_neg_scale", params.neg_scale),
        ("fabric_pos_images", list(context.liked)),
        ("fabric_neg_images", list(context.disliked)),
        ("fabric_opt_notes", " | ".join(notes)),
    ]
    text = format_a1111(context.prompt or "a photo", context.negative_prompt, fields)
    preset = json.dumps({"liked_paths": list(context.liked), "disliked_paths": list(context.disliked)}, indent=4) + "\n"
    return Export("a1111", text, {".preset.json": preset}, tuple(notes))


# ---- ComfyUI --------------------------------------------------------------------------------


def comfyui_steps(params: FabricParams) -> tuple[int, int]:
    """``(feedback_start, feedback_end)`` step indices for ``KSamplerFABRICAdv``.

    The node applies feedback on steps ``feedback_start <= i < feedback_end`` (its timestep
    interval ``(t[end], t[start]]``), so the inclusive range of :func:`fabric.schedule.active_steps`
    (``round(N * start)`` .. ``round(N * end)``, banker's rounding) becomes ``(i_start, i_end + 1)``.
    With no active step both are ``0``.
    """
    steps = active_steps(params.steps, params.feedback_start, params.feedback_end)
    if len(steps) == 0:
        return 0, 0
    return steps[0], steps[-1] + 1


@register_exporter("comfyui")
def _export_comfyui(params: FabricParams, context: ExportContext) -> Export:
    start, end = comfyui_steps(params)
    n = params.steps
    pos = params.max_weight
    neg = params.max_weight * params.neg_scale
    sampler_name, scheduler = _COMFY_SAMPLERS.get(context.scheduler, ("euler_ancestral", "normal"))
    notes = _unsupported(params, "ComfyUI_fabric", min_weight=True) + _sampler_note(context, "ComfyUI", sampler_name)
    notes.append(
        f"feedback on steps {start}..{end - 1} of {n}: KSamplerFABRICAdv feedback_start={start}, "
        f"feedback_end={end} (end exclusive)"
    )
    # The simple node runs steps 0 .. int(steps * percent) - 1; the midpoint of the interval that
    # gives `end` survives float rounding.
    percent = 1.0 if end >= n else round((end + 0.5) / n, 4)
    if start > 0:
        notes.append(f"KSamplerFABRIC (simple) always starts feedback at step 0, not {start}: use KSamplerFABRICAdv")
    notes.append("FABRICPatchModel has no schedule: it applies feedback on every step")
    sampler = {
        "seed": context.seed,
        "steps": n,
        "cfg": params.guidance_scale,
        "sampler_name": sampler_name,
        "scheduler": scheduler,
        "denoise": 1.0,
    }
    adv = {**sampler, "pos_weight": pos, "neg_weight": neg, "feedback_start": start, "feedback_end": end}
    simple = {**sampler, "pos_weight": pos, "neg_weight": neg, "feedback_percent": percent}
    patch = {"pos_weight": pos, "neg_weight": neg}

    def widgets(values: Mapping[str, Any], tail: Sequence[str]) -> list[Any]:
        # The UI workflow's widgets_values: KSampler's widgets (with "control_after_generate"
        # after the seed), then the FABRIC inputs in declaration order.
        return [
            values["seed"],
            "fixed",
            values["steps"],
            values["cfg"],
            values["sampler_name"],
            values["scheduler"],
            values["denoise"],
            *(values[k] for k in tail),
        ]

    document = {
        "format": "fabric-opt.comfyui",
        "version": 1,
        "nodes": {
            "KSamplerFABRICAdv": {
                "inputs": adv,
                "widgets_values": widgets(adv, ("pos_weight", "neg_weight", "feedback_start", "feedback_end")),
            },
            "KSamplerFABRIC": {
                "inputs": simple,
                "widgets_values": widgets(simple, ("pos_weight", "neg_weight", "feedback_percent")),
            },
            "FABRICPatchModel": {"inputs": patch, "widgets_values": [pos, neg]},
        },
        "prompt": context.prompt,
        "negative_prompt": context.negative_prompt,
        "notes": notes,
    }
    if context.source:
        document["source"] = dict(context.source)
    return Export("comfyui", json.dumps(document, indent=2) + "\n", notes=tuple(notes))


# ---- diffusers / Python ---------------------------------------------------------------------


@register_exporter("diffusers")
def _export_diffusers(params: FabricParams, context: ExportContext) -> Export:
    fields = ",\n    ".join(f"{k}={v!r}" for k, v in params.to_dict().items())
    model = context.model or "tiny"
    source = "".join(f"#   {k}: {v}\n" for k, v in context.source.items()) or "#   (none)\n"
    size = f"    height={context.height!r},\n    width={context.width!r},\n" if context.height and context.width else ""
    script = f'''"""FABRIC preset exported by fabric-opt: generate with the tuned parameters.

Run: python {{this file}}   (writes fabric_00.png, ... into the working directory)
"""
# Source:
{source}import torch

from fabric import FabricGenerator, FabricParams

params = FabricParams(
    {fields},
)

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
generator = FabricGenerator.from_pretrained({model!r}, device=device, dtype=dtype, scheduler={context.scheduler!r})

liked = {list(context.liked)!r}  # paths (or PIL images) of images to move towards
disliked = {list(context.disliked)!r}  # ... and away from

images = generator.generate(
    {context.prompt or "a photo"!r},
    negative_prompt={context.negative_prompt!r},
    liked=liked,
    disliked=disliked,
    params=params,
    n_images={context.n_images!r},
    seed={context.seed!r},
{size})
for i, image in enumerate(images):
    image.save(f"fabric_{{i:02d}}.png")
'''
    return Export("diffusers", script)
