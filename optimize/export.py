"""Exporters: FABRIC parameters as presets for fabric-opt itself, the A1111 extension, ComfyUI
and plain Python.

Each exporter turns :class:`~fabric.params.FabricParams` plus an :class:`ExportContext` (prompt,
seed, model, reference images, provenance) into an :class:`Export`: the files to write, the
*notes* (what the target cannot represent and which conversions were made; part of the output
where the format has room) and the *usage* (where the files go in the target). The CLI prints
both.

Formats (:func:`available_formats`):

``json``
    The versioned fabric-opt preset (:mod:`fabric.preset`); ``fabric-opt generate --preset`` and
    :func:`fabric.preset.load_params` read it back to the exact same ``FabricParams``.
``a1111``
    For the sd-webui-fabric extension (``scripts/fabric.py`` v0.6.3): the generation-parameters
    text ("infotext") that "Read generation parameters" reads back (``Steps: 20, Sampler: Euler
    a, CFG scale: 7, Seed: ..., fabric_start: ..., fabric_end: ..., fabric_min_weight: ...,
    fabric_max_weight: ..., fabric_neg_scale: ..., fabric_pos_images: [...], fabric_neg_images:
    [...]``), with values on the sliders' steps; and, when there are reference images, a folder
    ``<name>.a1111/log/fabric/`` laid out like the extension's own: ``presets/<study>.json``
    (``{"liked_paths": [...], "disliked_paths": [...]}``) and the images in ``images/``, named
    as the paths in both files, which the extension resolves under its ``log/fabric/images``.
    The extension switches between ``max_weight`` and ``min_weight`` by the *timestep* progress
    ``1 - t / (T - 1)``, not the step index; :func:`a1111_schedule` converts the range so the same
    steps are active (and checks it).
``comfyui``
    For ComfyUI_fabric (``nodes.py``): an API-format prompt (``{"<id>": {"class_type": ...,
    "inputs": {...}}}``, links ``["<id>", output]``) and a UI workflow (``<name>.comfyui.workflow.json``,
    nodes with ``widgets_values`` plus ``links``, and a Note node with the notes) of the graph
    Load Checkpoint -> CLIP Text Encode (prompt, negative, empty prompt) -> Load Image + VAE
    Encode per reference -> the FABRIC sampler -> VAE Decode -> Save Image. The sampler node and
    its steps are picked by :func:`comfyui_plan`; reference images are copied to
    ``<name>.comfyui/input/`` for ComfyUI's ``input`` folder.
``diffusers``
    A runnable Python script that generates with these parameters through fabric-opt's API.

Neither frontend has a depth profile (bottleneck scales), prompt dropout or a reference-count
limit; ComfyUI also has no minimum weight. The notes say so whenever the parameters use them (a
frontend-compatible study, :mod:`optimize.frontends`, never does).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fabric.errors import ConfigError, ImageError
from fabric.files import copy_atomic, write_text_atomic
from fabric.params import FabricParams
from fabric.schedule import active_steps
from optimize.frontends import A1111_CFG_STEP, A1111_RANGE_STEP, A1111_WEIGHT_STEP, snap

__all__ = [
    "ExportContext",
    "Export",
    "available_formats",
    "register_exporter",
    "export_params",
    "A1111Schedule",
    "a1111_schedule",
    "a1111_active_steps",
    "ComfyPlan",
    "comfyui_plan",
    "comfyui_steps",
    "format_a1111",
    "parse_a1111",
    "DEFAULT_EXTENSIONS",
    "COMFY_NODES",
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
        n_images: images per generation (JSON preset, ComfyUI batch, Python script).
        height, width: image size, when not the model's default.
        liked, disliked: reference image paths (copied next to frontend presets).
        source: provenance (study, trial, objective, estimate), written where the format allows;
            ``source["study"]`` names the A1111 preset.
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

    @property
    def name(self) -> str:
        """A file-safe name for the preset (the study's, else ``fabric-opt``)."""
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(self.source.get("study") or "fabric-opt")).strip("-")


@dataclass(frozen=True)
class Export:
    """One exported preset.

    Attributes:
        format: the format name.
        content: the main file's text.
        extra: ``suffix -> text`` of companion files, written beside the main file as
            ``<main stem><suffix>`` (the ComfyUI UI workflow).
        tree: ``relative path -> text or file to copy`` of files written under the folder
            ``<main stem>/`` beside the main file, laid out as the target expects (the A1111
            extension's ``log/fabric/``, ComfyUI's ``input/``).
        notes: what the target cannot represent and which conversions were made.
        usage: where the written files go in the target, one step per line; ``{folder}`` stands
            for the tree folder.
    """

    format: str
    content: str
    extra: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    tree: Mapping[str, str | Path] = field(default_factory=dict)
    usage: tuple[str, ...] = ()

    def folder(self, path: str | Path) -> Path:
        """The folder the tree goes to for main file ``path``."""
        path = Path(path)
        return path.with_name(path.stem)

    def paths(self, path: str | Path) -> list[Path]:
        """The files :meth:`write` creates for main file ``path``."""
        path = Path(path)
        folder = self.folder(path)
        return [
            path,
            *(path.with_name(path.stem + suffix) for suffix in self.extra),
            *(folder / relative for relative in self.tree),
        ]

    def write(self, path: str | Path) -> list[Path]:
        """Write the main file at ``path``, the companions beside it and the tree (each atomically).

        Raises:
            ImageError: a reference image to copy is missing (checked before anything is written).
        """
        paths = self.paths(path)
        sources = [*(self.content, *self.extra.values()), *self.tree.values()]
        for source in sources:
            if isinstance(source, Path) and not source.is_file():
                raise ImageError(f"reference image not found: {source}")
        for target, source in zip(paths, sources):
            if isinstance(source, Path):
                copy_atomic(source, target)
            else:
                write_text_atomic(target, source)
        return paths

    def usage_for(self, path: str | Path) -> list[str]:
        """:attr:`usage` with the folder of main file ``path`` filled in."""
        return [line.replace("{folder}", str(self.folder(path))) for line in self.usage]


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
        ImageError: a reference image of ``context`` is missing.
    """
    if format not in _REGISTRY:
        raise ConfigError(f"unknown export format {format!r}; known: {', '.join(available_formats())}")
    if not isinstance(params, FabricParams):
        raise ConfigError(f"params must be FabricParams, got {type(params).__name__}")
    context = context or ExportContext()
    for path in (*context.liked, *context.disliked):
        if not Path(path).is_file():
            raise ImageError(f"reference image not found: {path}")
    return _REGISTRY[format](params, context)


# ---- shared ---------------------------------------------------------------------------------


def _unsupported(params: FabricParams, target: str) -> list[str]:
    notes = []
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
            f"most {k} liked and {k} disliked images (the most recent)"
        )
    return notes


def _sampler_note(context: ExportContext, name: str) -> list[str]:
    if context.scheduler is None:
        return [f"sampler set to {name}; the study used the model's own scheduler"]
    return (
        []
        if context.scheduler == "euler-a"
        else [f"sampler set to {name} for the study's scheduler {context.scheduler!r}"]
    )


def _reference_files(paths: Sequence[str]) -> list[tuple[str, Path]]:
    """``(file name, source)`` per reference: a content hash keeps names unique and stable."""
    out = []
    for path in paths:
        source = Path(path)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        out.append((f"{digest}{source.suffix.lower() or '.png'}", source))
    return out


def _no_references_note(target: str) -> str:
    return (
        f"no reference images: {target} applies no feedback without liked or disliked images; add them there, or "
        "export again with liked and disliked images"
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


class A1111Schedule(NamedTuple):
    """The extension's slider values for some parameters (:func:`a1111_schedule`)."""

    start: float
    end: float
    min_weight: float
    max_weight: float
    neg_scale: float
    notes: tuple[str, ...]


def a1111_active_steps(n: int, start: float, end: float) -> list[int]:
    """Steps the extension gives ``max_weight``: A1111 samples ``n`` steps at the timesteps
    ``linspace(T - 1, 0, n)`` and the extension compares ``1 - t / (T - 1)`` with ``[start, end]``."""
    top = TRAIN_TIMESTEPS - 1
    delta = -top / (n - 1) if n > 1 else 0.0
    timesteps = [top + i * delta if i < n - 1 or n == 1 else 0.0 for i in range(n)]  # as numpy.linspace
    return [i for i, t in enumerate(timesteps) if start <= 1 - t / top <= end]


def _grid_inside(low: float, high: float, step: float) -> float | None:
    """The point of ``step``'s grid strictly inside ``(low, high)`` nearest its middle, if any."""
    middle = (low + high) / 2
    first, last = int(low / step) - 1, int(high / step) + 2
    inside = [snap(k * step, step) for k in range(first, last) if low < snap(k * step, step) < high]
    return min(inside, key=lambda v: abs(v - middle)) if inside else None


def a1111_schedule(params: FabricParams) -> A1111Schedule:
    """The extension's ``fabric_start``, ``fabric_end``, weights and negative scale, on its sliders' steps.

    fabric-opt activates steps ``i_start..i_end`` of ``N`` (:func:`fabric.schedule.active_steps`).
    The extension compares the progress ``1 - t / (T - 1)`` of the step's timestep with
    ``[start, end]``; A1111's uniform timesteps give step ``i`` the progress ``i / (N - 1)``. The
    exported bounds are the points of the 0.01 slider grid nearest the middle between the last
    inactive and the first active step (and the last active and the first inactive one), so the
    same steps stay active with a margin for rounding of ``t``; the result is checked with
    :func:`a1111_active_steps` and a note says so when no grid point separates the steps (more
    than about 100 steps). Weights and the negative scale are rounded to the 0.05 slider step
    (a note names each change). When no step is active, ``min_weight`` applies everywhere and is
    exported as a constant weight.
    """
    n = params.steps
    notes: list[str] = []
    max_w = snap(params.max_weight, A1111_WEIGHT_STEP)
    min_w = min(max_w, snap(params.min_weight, A1111_WEIGHT_STEP))
    neg = snap(params.neg_scale, A1111_WEIGHT_STEP)
    rounded = [
        (name, value, new)
        for name, value, new in (("max_weight", params.max_weight, max_w), ("min_weight", params.min_weight, min_w),
                                 ("neg_scale", params.neg_scale, neg))
        if abs(value - new) > 1e-9
    ]  # fmt: skip
    if rounded:
        notes.append(
            "rounded to the extension's slider step 0.05: "
            + ", ".join(f"{name} {value:.4g} -> {new:g}" for name, value, new in rounded)
        )
    steps = list(active_steps(n, params.feedback_start, params.feedback_end))
    if not steps:
        notes.append(
            f"no step of {n} has full-weight feedback (start rounds past the last step): exported as a constant "
            f"weight {min_w:g}"
        )
        return A1111Schedule(0.0, 1.0, min_w, min_w, neg, tuple(notes))
    if n == 1 or min_w == max_w:
        if n > 1:
            notes.append(f"one weight, {max_w:g}, on all {n} steps: fabric_start 0, fabric_end 1")
        return A1111Schedule(0.0, 1.0, min_w, max_w, neg, tuple(notes))
    i0, i1 = steps[0], steps[-1]
    start = 0.0 if i0 == 0 else _grid_inside((i0 - 1) / (n - 1), i0 / (n - 1), A1111_RANGE_STEP)
    end = 1.0 if i1 == n - 1 else _grid_inside(i1 / (n - 1), (i1 + 1) / (n - 1), A1111_RANGE_STEP)
    if start is None:
        start = snap((i0 - 0.5) / (n - 1), A1111_RANGE_STEP)
    if end is None:
        end = snap((i1 + 0.5) / (n - 1), A1111_RANGE_STEP)
    theirs = a1111_active_steps(n, start, end)
    if theirs == steps:
        notes.append(
            f"schedule converted to the extension's timestep progress: fabric_start {start:g}, fabric_end {end:g} keep "
            f"steps {i0 + 1}..{i1 + 1} of {n} at full weight, as feedback_start={params.feedback_start:.4g}, "
            f"feedback_end={params.feedback_end:.4g} do (A1111's uniform timestep spacing)"
        )
    else:
        what = f"steps {theirs[0] + 1}..{theirs[-1] + 1}" if theirs else "no step"
        notes.append(
            f"the extension's 0.01 start/end sliders cannot select steps {i0 + 1}..{i1 + 1} of {n} exactly: "
            f"fabric_start {start:g}, fabric_end {end:g} give {what} full weight"
        )
    return A1111Schedule(start, end, min_w, max_w, neg, tuple(notes))


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
    """Read an infotext back (as A1111's "Read generation parameters" does).

    Returns:
        ``{"prompt": ..., "negative_prompt": ..., <key>: <value>, ...}`` with quoted values
        unquoted and JSON lists (``fabric_pos_images``) decoded; other values stay strings.
    """
    lines = text.strip("\n").split("\n")
    if not lines or not lines[-1].strip():
        raise ConfigError("empty A1111 generation parameters")
    params_line = lines[-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
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
    schedule = a1111_schedule(params)
    sampler = _A1111_SAMPLERS.get(context.scheduler, "Euler a")
    cfg = snap(params.guidance_scale, A1111_CFG_STEP)
    notes = [*schedule.notes, *_unsupported(params, "the A1111 extension"), *_sampler_note(context, sampler)]
    if cfg != params.guidance_scale:
        notes.append(f"CFG scale {params.guidance_scale:.4g} rounded to the WebUI's slider step 0.5: {cfg:g}")
    liked, disliked = _reference_files(context.liked), _reference_files(context.disliked)
    if not liked and not disliked:
        notes.append(_no_references_note("the A1111 extension"))
    fields: list[tuple[str, Any]] = [
        ("Steps", params.steps),
        ("Sampler", sampler),
        ("CFG scale", cfg),
        ("Seed", context.seed),
    ]
    if context.height and context.width:
        fields.append(("Size", f"{context.width}x{context.height}"))
    fields += [
        ("fabric_start", schedule.start),
        ("fabric_end", schedule.end),
        ("fabric_min_weight", schedule.min_weight),
        ("fabric_max_weight", schedule.max_weight),
        ("fabric_neg_scale", schedule.neg_scale),
        ("fabric_pos_images", [name for name, _ in liked]),
        ("fabric_neg_images", [name for name, _ in disliked]),
        ("fabric_opt_notes", " | ".join(notes)),
    ]
    text = format_a1111(context.prompt or "a photo", context.negative_prompt, fields)
    base = "{folder}/log/fabric"
    usage = [
        "paste the .a1111.txt text into the txt2img prompt box and press the 'Read generation parameters' button "
        "(↙) under Generate: it sets the FABRIC sliders",
    ]
    tree: dict[str, str | Path] = {}
    if liked or disliked:
        preset = json.dumps(
            {"liked_paths": [n for n, _ in liked], "disliked_paths": [n for n, _ in disliked]}, indent=4
        )
        tree[f"log/fabric/presets/{context.name}.json"] = preset + "\n"
        tree.update({f"log/fabric/images/{name}": source for name, source in (*liked, *disliked)})
        usage = [
            f"copy the folder {base} into the extension's folder (stable-diffusion-webui/extensions/sd-webui-fabric/"
            f"log/fabric/): presets/{context.name}.json goes to its log/fabric/presets/ and the "
            f"{len(tree) - 1} reference image(s) to its log/fabric/images/, where the extension resolves the "
            "preset's and the text's paths (it drops missing ones silently)",
            *usage,
            f"or pick the preset '{context.name}' in FABRIC's Presets menu for the liked and disliked images",
        ]
    return Export("a1111", text, notes=tuple(notes), tree=tree, usage=tuple(usage))


# ---- ComfyUI --------------------------------------------------------------------------------

_WIDGETS = ("INT", "FLOAT", "STRING", "COMBO")
_KSAMPLER_INPUTS = (
    ("model", "MODEL"), ("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"), ("sampler_name", "COMBO"),
    ("scheduler", "COMBO"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT"),
    ("denoise", "FLOAT"),
)  # fmt: skip
#: class_type -> (display name, inputs in declaration order as (name, type), output types). Types in
#: _WIDGETS are widgets in the UI; the others are links. Optional inputs end with "?".
COMFY_NODES: Mapping[str, tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "CheckpointLoaderSimple": ("Load Checkpoint", (("ckpt_name", "COMBO"),), ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ("CLIP Text Encode (Prompt)", (("text", "STRING"), ("clip", "CLIP")), ("CONDITIONING",)),
    "EmptyLatentImage": (
        "Empty Latent Image",
        (("width", "INT"), ("height", "INT"), ("batch_size", "INT")),
        ("LATENT",),
    ),
    "LoadImage": ("Load Image", (("image", "COMBO"),), ("IMAGE", "MASK")),
    "VAEEncode": ("VAE Encode", (("pixels", "IMAGE"), ("vae", "VAE")), ("LATENT",)),
    "LatentBatch": ("Latent Batch", (("samples1", "LATENT"), ("samples2", "LATENT")), ("LATENT",)),
    "KSamplerFABRICAdv": (
        "KSampler FABRIC",
        (
            *_KSAMPLER_INPUTS,
            ("null_pos", "CONDITIONING"),
            ("null_neg", "CONDITIONING"),
            ("pos_weight", "FLOAT"),
            ("neg_weight", "FLOAT"),
            ("feedback_start", "INT"),
            ("feedback_end", "INT"),
            ("pos_latents", "LATENT?"),
            ("neg_latents", "LATENT?"),
        ),
        ("LATENT",),
    ),  # fmt: skip
    "KSamplerFABRIC": (
        "KSampler FABRIC (Simple)",
        (
            *_KSAMPLER_INPUTS,
            ("clip", "CLIP"),
            ("pos_weight", "FLOAT"),
            ("neg_weight", "FLOAT"),
            ("feedback_percent", "FLOAT"),
            ("pos_latents", "LATENT?"),
            ("neg_latents", "LATENT?"),
        ),
        ("LATENT",),
    ),  # fmt: skip
    "VAEDecode": ("VAE Decode", (("samples", "LATENT"), ("vae", "VAE")), ("IMAGE",)),
    "SaveImage": ("Save Image", (("images", "IMAGE"), ("filename_prefix", "STRING")), ()),
}


class ComfyPlan(NamedTuple):
    """The ComfyUI_fabric sampler node and settings that reproduce a schedule (:func:`comfyui_plan`).

    Attributes:
        node: ``"KSamplerFABRIC"`` (shown as "KSampler FABRIC (Simple)") or ``"KSamplerFABRICAdv"``
            (shown as "KSampler FABRIC").
        pos_weight, neg_weight: the absolute weights on the feedback steps.
        feedback_start, feedback_end: the feedback steps ``feedback_start <= i < feedback_end``.
        feedback_percent: the simple node's ``feedback_percent`` (``int(steps * percent) ==
            feedback_end``), ``None`` for the Adv node.
        exact: whether the node applies exactly fabric-opt's per-step weights.
        notes: what was chosen and why.
    """

    node: str
    pos_weight: float
    neg_weight: float
    feedback_start: int
    feedback_end: int
    feedback_percent: float | None
    exact: bool
    notes: tuple[str, ...]


def _percent(steps: int, end: int) -> float | None:
    """A ``feedback_percent`` on the node's 0.01 grid with ``int(steps * percent) == end``, the
    middle one of those that work; ``None`` when none does (more than ~100 steps)."""
    fits = [k / 100 for k in range(0, 101) if int(steps * (k / 100)) == end]
    return fits[len(fits) // 2] if fits else None


def comfyui_plan(params: FabricParams) -> ComfyPlan:
    """Pick the ComfyUI_fabric node and steps that reproduce ``params``' per-step weights.

    ComfyUI_fabric's sampler nodes apply ``pos_weight``/``neg_weight`` on the steps
    ``feedback_start <= i < feedback_end`` (their timestep interval ``(t[end], t[start]]``) and
    no feedback elsewhere; the simple node always starts at step 0 and ends at
    ``int(steps * feedback_percent)``. So:

    * one weight on every step (``min_weight == max_weight``, every step active, or no step
      active with ``min_weight > 0``): the simple node, ``feedback_percent = 1.0``; exact;
    * ``min_weight == 0``: the active range ``i_start .. i_end`` (inclusive) becomes
      ``(i_start, i_end + 1)``; the simple node when it starts at 0 and a 0.01 percent gives the
      end, else the Adv node; exact;
    * ``0 < min_weight < max_weight`` on part of the steps: not expressible by one node; the
      nearest per-step schedule (L1) of the two candidates, the active range at ``max_weight``
      with no feedback elsewhere, or ``max_weight`` on every step, with a note.
    """
    n = params.steps
    w, m, s = params.max_weight, params.min_weight, params.neg_scale
    steps = list(active_steps(n, params.feedback_start, params.feedback_end))
    notes: list[str] = []
    exact = True
    if not steps or len(steps) == n or m == w:
        weight = w if steps else m
        first, stop = 0, n
        notes.append(f"one weight, {weight:g}, on all {n} steps: feedback_percent 1.0")
        if weight == 0:
            notes.append("these parameters apply no feedback (weight 0 on every step)")
    else:
        first, stop, weight = steps[0], steps[-1] + 1, w
        outside = n - len(steps)
        if m > 0:
            exact = False
            if m <= w - m:
                choice = f"nearest: steps {first + 1}..{stop} at max_weight {w:g}, no feedback on the other {outside}"
            else:
                first, stop = 0, n
                choice = f"nearest: max_weight {w:g} on all {n} steps, also on the {outside} steps at min_weight"
            notes.append(
                f"min_weight={m:g} is not representable in ComfyUI_fabric: a sampler node applies one weight on its "
                f"steps and no feedback outside them; {choice} (exact only by chaining KSampler FABRIC (Advanced) "
                "nodes over step ranges)"
            )
    percent = _percent(n, stop) if first == 0 else None
    node = "KSamplerFABRIC" if percent is not None else "KSamplerFABRICAdv"
    if node == "KSamplerFABRICAdv":
        notes.append(
            f"feedback on steps {first + 1}..{stop} of {n}: KSampler FABRIC (class KSamplerFABRICAdv), "
            f"feedback_start={first}, feedback_end={stop} (step indices from 0, end exclusive)"
        )
    elif stop < n:
        notes.append(
            f"feedback on steps 1..{stop} of {n}: KSampler FABRIC (Simple) (class KSamplerFABRIC), "
            f"feedback_percent={percent:g} (int({n} x {percent:g}) = {stop})"
        )
    return ComfyPlan(node, weight, round(weight * s, 12), first, stop, percent, exact, tuple(notes))


def comfyui_steps(params: FabricParams) -> tuple[int, int]:
    """``(feedback_start, feedback_end)`` step indices of :func:`comfyui_plan`."""
    plan = comfyui_plan(params)
    return plan.feedback_start, plan.feedback_end


class _Link(NamedTuple):
    node: int
    slot: int


class _Graph:
    """Nodes in topological order; inputs are values or :class:`_Link` s."""

    def __init__(self) -> None:
        self.nodes: list[tuple[int, str, str, dict[str, Any]]] = []

    def add(self, class_type: str, title: str | None = None, /, **inputs: Any) -> int:
        node_id = len(self.nodes) + 1
        self.nodes.append((node_id, class_type, title or COMFY_NODES[class_type][0], inputs))
        return node_id

    def api(self) -> dict[str, Any]:
        """The API-format prompt."""
        return {
            str(node_id): {
                "class_type": class_type,
                "inputs": {
                    k: [str(v.node), v.slot] if isinstance(v, _Link) else v for k, v in inputs.items() if v is not None
                },
                "_meta": {"title": title},
            }
            for node_id, class_type, title, inputs in self.nodes
        }

    def workflow(self, note: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The UI workflow (litegraph layout, version 0.4 as ComfyUI_fabric's examples)."""
        links: list[list[Any]] = []
        out_links: dict[tuple[int, int], list[int]] = {}
        depth: dict[int, int] = {}
        nodes: list[dict[str, Any]] = []
        for order, (node_id, class_type, title, inputs) in enumerate(self.nodes):
            _, declared, outputs = COMFY_NODES[class_type]
            ui_inputs: list[dict[str, Any]] = []
            widgets: list[Any] = []
            for name, kind in declared:
                value = inputs.get(name)
                if kind in _WIDGETS:
                    widgets.append(value)
                    if name in ("seed", "noise_seed"):
                        widgets.append("fixed")  # the "control after generate" widget
                    if class_type == "LoadImage":
                        widgets.append("image")  # the upload widget
                    continue
                link_id = None
                if isinstance(value, _Link):
                    link_id = len(links) + 1
                    links.append([link_id, value.node, value.slot, node_id, len(ui_inputs), kind.rstrip("?")])
                    out_links.setdefault((value.node, value.slot), []).append(link_id)
                ui_inputs.append({"name": name, "type": kind.rstrip("?"), "link": link_id})
            sources = [v.node for v in inputs.values() if isinstance(v, _Link)]
            depth[node_id] = 1 + max((depth[s] for s in sources), default=-1)
            column = sum(1 for other in nodes if depth[other["id"]] == depth[node_id])
            rows = len(ui_inputs) + len(widgets) + len(outputs)
            nodes.append({
                "id": node_id, "type": class_type, "title": title,
                "pos": [40 + 360 * depth[node_id], 40 + 220 * column], "size": [320, 60 + 24 * rows],
                "flags": {}, "order": order, "mode": 0, "inputs": ui_inputs,
                "outputs": [
                    {"name": kind, "type": kind, "links": out_links.get((node_id, slot), []), "slot_index": slot}
                    for slot, kind in enumerate(outputs)
                ],
                "properties": {"Node name for S&R": class_type},
                "widgets_values": widgets,
            })  # fmt: skip
        # outputs were filled before later nodes linked to them: fill them again
        for node in nodes:
            for output in node["outputs"]:
                output["links"] = out_links.get((node["id"], output["slot_index"]), [])
        note_id = len(nodes) + 1
        nodes.append({
            "id": note_id, "type": "Note", "title": "fabric-opt notes", "pos": [40, 40 + 220 * max(3, len(nodes) // 2)],
            "size": [700, 260], "flags": {}, "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
            "properties": {"text": ""}, "widgets_values": [note],
        })  # fmt: skip
        return {
            "last_node_id": note_id,
            "last_link_id": len(links),
            "nodes": nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": dict(extra),
            "version": 0.4,
        }


def _checkpoint_name(model: str) -> tuple[str, str | None]:
    """A ``ckpt_name`` for Load Checkpoint and, when it is a guess, a note."""
    path = Path(model)
    if path.suffix.lower() in (".safetensors", ".ckpt"):
        return path.name, None
    name = f"{path.name or 'model'}.safetensors"
    if model in ("tiny", "tiny-v", "tiny-xl", "toy", ""):
        why = f"the study's model {model!r} is fabric-opt's own, not a ComfyUI checkpoint"
    else:
        why = f"guessed from the study's model {model!r}"
    return name, f"ckpt_name {name!r} is a placeholder ({why}): pick your checkpoint in Load Checkpoint"


@register_exporter("comfyui")
def _export_comfyui(params: FabricParams, context: ExportContext) -> Export:
    plan = comfyui_plan(params)
    sampler_name, scheduler = _COMFY_SAMPLERS.get(context.scheduler, ("euler_ancestral", "normal"))
    ckpt, ckpt_note = _checkpoint_name(context.model)
    notes = [*plan.notes, *_unsupported(params, "ComfyUI_fabric"), *_sampler_note(context, sampler_name)]
    if ckpt_note:
        notes.append(ckpt_note)
    width, height = context.width or 512, context.height or 512
    if not (context.width and context.height):
        notes.append("image size not set by the study: 512x512 (SD 1.x); set Empty Latent Image for other models")
    liked, disliked = _reference_files(context.liked), _reference_files(context.disliked)
    if not liked and not disliked:
        notes.append(_no_references_note("the FABRIC sampler node (it falls back to a plain KSampler)"))

    g = _Graph()
    loader = g.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    model, clip, vae = _Link(loader, 0), _Link(loader, 1), _Link(loader, 2)
    positive = g.add("CLIPTextEncode", "Prompt", text=context.prompt or "a photo", clip=clip)
    negative = g.add("CLIPTextEncode", "Negative prompt", text=context.negative_prompt, clip=clip)
    empty = None
    if plan.node == "KSamplerFABRICAdv":
        empty = g.add("CLIPTextEncode", "Empty prompt (null_pos, null_neg)", text="", clip=clip)
    latent = g.add("EmptyLatentImage", width=width, height=height, batch_size=context.n_images)

    def references(files: list[tuple[str, Path]], label: str) -> _Link | None:
        batch: _Link | None = None
        for i, (name, _) in enumerate(files):
            image = g.add("LoadImage", f"{label} image {i + 1}", image=name)
            encoded = _Link(g.add("VAEEncode", f"{label} image {i + 1} latent", pixels=_Link(image, 0), vae=vae), 0)
            batch = (
                encoded
                if batch is None
                else _Link(g.add("LatentBatch", f"{label} latents", samples1=batch, samples2=encoded), 0)
            )
        return batch

    pos_latents, neg_latents = references(liked, "Liked"), references(disliked, "Disliked")
    common: dict[str, Any] = {
        "model": model, "seed": context.seed, "steps": params.steps, "cfg": params.guidance_scale,
        "sampler_name": sampler_name, "scheduler": scheduler, "positive": _Link(positive, 0),
        "negative": _Link(negative, 0), "latent_image": _Link(latent, 0), "denoise": 1.0,
    }  # fmt: skip
    weights = {"pos_weight": plan.pos_weight, "neg_weight": plan.neg_weight}
    if plan.node == "KSamplerFABRICAdv":
        assert empty is not None
        sampler = g.add(
            "KSamplerFABRICAdv", **common, null_pos=_Link(empty, 0), null_neg=_Link(empty, 0), **weights,
            feedback_start=plan.feedback_start, feedback_end=plan.feedback_end, pos_latents=pos_latents,
            neg_latents=neg_latents,
        )  # fmt: skip
    else:
        sampler = g.add(
            "KSamplerFABRIC", **common, clip=clip, **weights, feedback_percent=plan.feedback_percent,
            pos_latents=pos_latents, neg_latents=neg_latents,
        )  # fmt: skip
    decoded = g.add("VAEDecode", samples=_Link(sampler, 0), vae=vae)
    g.add("SaveImage", images=_Link(decoded, 0), filename_prefix=f"fabric-opt/{context.name}")

    extra = {"fabric_opt": {"notes": notes, **({"source": dict(context.source)} if context.source else {})}}
    workflow = g.workflow("fabric-opt export\n\n" + "\n\n".join(notes), extra)
    tree: dict[str, str | Path] = {f"input/{name}": source for name, source in (*liked, *disliked)}
    usage = [
        "needs the ComfyUI_fabric custom nodes (ComfyUI/custom_nodes/ComfyUI_fabric)",
        "open the .comfyui.workflow.json in ComfyUI (Workflow > Open, or drag it onto the canvas); or queue the "
        '.comfyui.json API prompt: POST {"prompt": <its content>} to http://127.0.0.1:8188/prompt',
    ]
    if tree:
        usage.insert(1, "copy the files in {folder}/input/ into ComfyUI/input/, where Load Image reads them")
    return Export(
        "comfyui",
        json.dumps(g.api(), indent=2) + "\n",
        {".workflow.json": json.dumps(workflow, indent=2) + "\n"},
        notes=tuple(notes),
        tree=tree,
        usage=tuple(usage),
    )


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
