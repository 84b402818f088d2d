"""The objective protocol and the registry every reward model is built through.

An objective turns a list of images (plus their prompt) into one score per image:

    obj = load_objective("pickscore", weights="tiny")
    obj.score(images, "a red fox in the snow")  # -> float32 CPU tensor of shape [n]

Each objective says whether higher is better (``direction``), so the optimisation layer can hand
it to a sampler without knowing what it measures. Families live in their own modules
(``objectives/pickscore.py``, ``objectives/hps.py``, ...) and register themselves with
:func:`register_objective`; the registry imports a family's module only when its name is first
looked up, so ``import objectives`` (and ``fabric-opt --help``) stays free of torch.

This module imports neither torch nor PIL at import time.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import inspect
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from fabric.errors import ConfigError, ImageError, InvalidParameterError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "Direction",
    "Objective",
    "register_objective",
    "available_objectives",
    "load_objective",
    "check_available",
    "canonical_name",
    "resolve_dtype",
    "placement",
    "objective_components",
    "check_images",
    "expand_prompts",
    "check_batch_size",
]

logger = logging.getLogger(__name__)

Direction = Literal["maximize", "minimize"]
_DIRECTIONS = ("maximize", "minimize")


class Objective(abc.ABC):
    """A reward model: images (and their prompt) in, one score per image out.

    Subclasses set the class attributes and implement :meth:`_score`; :meth:`score` validates
    the inputs and normalises the output, so every objective behaves the same at the boundary.

    Attributes:
        name: the registry name (``"pickscore"``), or the spec string for composites.
        direction: ``"maximize"`` if higher scores are better, else ``"minimize"``.
        uses_prompt: whether the prompt changes the score (aesthetic, target and diversity
            ignore it).
        takes_target: whether :meth:`with_target` is available (image-similarity objectives).
        components: weights-table keys besides the name that the objective reads, mapped to
            the load option they fill; the aesthetic head reads ``{"clip": "backbone"}``, so
            ``--objective-weights clip=PATH`` sets its CLIP backbone.
        typical: ``(location, scale)`` of the score over ordinary Stable Diffusion images; used
            by composite objectives to put terms on a comparable footing (rough, documented in
            each family, not a calibration).
    """

    name: str = "objective"
    direction: Direction = "maximize"
    uses_prompt: bool = True
    takes_target: bool = False
    typical: tuple[float, float] = (0.0, 1.0)
    components: dict[str, str] = {}

    def score(self, images: Sequence[Image.Image], prompt: str | Sequence[str] = "") -> torch.Tensor:
        """Scores a list of images.

        Args:
            images: ``n`` PIL images of any size and mode (converted to RGB).
            prompt: one prompt for all images, or one per image.

        Returns:
            A float32 CPU tensor of shape ``[n]``.
        """
        import torch

        images = check_images(images)
        prompts = expand_prompts(prompt, len(images))
        scores = self._score(images, prompts)
        scores = scores.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
        if scores.shape[0] != len(images):  # a family bug, not a user error
            raise RuntimeError(f"{self.name} returned {scores.shape[0]} scores for {len(images)} images")
        return scores

    __call__ = score

    @abc.abstractmethod
    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """Scores validated inputs: ``n`` RGB-convertible images and ``n`` prompts -> ``[n]``."""

    def with_target(self, target: Any) -> Objective:
        """A copy scoring similarity to ``target``, sharing this objective's loaded model."""
        raise InvalidParameterError(f"objective {self.name!r} does not take a target image")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, direction={self.direction!r})"


def check_images(images: Any) -> list[Image.Image]:
    """The images as a non-empty list of PIL images, or a one-line :class:`ImageError`."""
    from PIL import Image

    if isinstance(images, Image.Image):
        raise ImageError("score() takes a list of PIL images, got a single image; wrap it in a list")
    if not isinstance(images, (list, tuple)) or not images:
        raise ImageError(f"score() takes a non-empty list of PIL images, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ImageError(f"image {i} is a {type(image).__name__}, not a PIL image")
    return list(images)


def expand_prompts(prompt: str | Sequence[str], n: int) -> list[str]:
    """One prompt per image: a single string is repeated, a list must have ``n`` entries."""
    if isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt)
    if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
        raise InvalidParameterError(f"expected one prompt or {n} prompt strings, got {len(prompts)} items")
    return prompts


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def placement(device: Any = "cpu", dtype: Any = None) -> tuple[torch.device, torch.dtype]:
    """``(torch.device, torch.dtype)`` from user values (strings, ``None`` = float32)."""
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InvalidParameterError(f"invalid device {device!r}") from err
    return device, resolve_dtype(dtype)


def resolve_dtype(dtype: Any) -> torch.dtype:
    """``None`` -> float32; torch dtypes pass through; ``"fp16"``/``"bfloat16"``/... are parsed."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    }  # fmt: skip
    key = str(dtype).removeprefix("torch.").lower()
    if key not in names:
        raise InvalidParameterError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return names[key]


# --- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[..., Objective]  # (weights=None, device=..., dtype=..., **options)
    check: Callable[..., None] | None  # (weights=None, **options); raises if weights are missing
    components: dict[str, str]  # extra weights-table keys -> the load option they fill


_REGISTRY: dict[str, _Entry] = {}

# Built-in families are imported on first use so this module stays light.
_BUILTIN_MODULES = {
    "pickscore": "objectives.pickscore",
    "hps": "objectives.hps",
    "hpsv2": "objectives.hps",
    "hpsv21": "objectives.hps",
    "aesthetic": "objectives.aesthetic",
    "clipscore": "objectives.clipscore",
    "target": "objectives.target",
    "diversity": "objectives.diversity",
}
# Optional modules of the project that register more objectives when present.
_PLUGIN_MODULES = ("objectives.toy",)
_ALIASES = {"hpsv1": "hps", "hpsv2.1": "hpsv21", "hps-v2": "hpsv2", "hps-v2.1": "hpsv21", "clip-score": "clipscore"}
_plugins_loaded = False
_SPEC_CHARS = re.compile(r"[+,*]|^\s*-")  # a weighted sum or a tuple, not a plain name


def register_objective(
    name: str,
    *,
    check: Callable[..., None] | None = None,
    components: dict[str, str] | None = None,
    override: bool = False,
):
    """Class or function decorator adding an objective to the registry.

    A decorated class must provide ``load(weights=None, device="cpu", dtype=None, **options)``
    (a classmethod returning an instance) and may provide ``check_weights(weights=None,
    **options)``, a cheap test that raises :class:`~fabric.errors.WeightsNotFoundError` before
    any model is built. A decorated function is the factory itself; pass ``check=`` for it.
    The class's ``name`` attribute is set to ``name``.

    Args:
        name: lower-case registry name, e.g. ``"pickscore"``; may contain ``-`` and ``.``.
        check: weight check for function factories.
        components: for function factories, weights-table keys besides ``name`` that the
            objective reads, mapped to the option they fill (classes set ``components``).
        override: replace an existing registration instead of raising.
    """
    key = name.strip().lower()
    if not key or not key[0].isalpha() or any(c in key for c in "+,*= ()"):
        raise ValueError(f"invalid objective name {name!r}")

    def decorator(obj):
        if isinstance(obj, type):
            if obj.direction not in _DIRECTIONS:
                raise ValueError(f"{obj.__name__}.direction must be one of {_DIRECTIONS}, got {obj.direction!r}")
            obj.name = key
            factory, checker, parts = obj.load, getattr(obj, "check_weights", None), getattr(obj, "components", {})
        else:
            factory, checker, parts = obj, check, components or {}
        if key in _REGISTRY and not override and _REGISTRY[key].factory != factory:
            raise ValueError(f"objective {key!r} is already registered; pass override=True to replace it")
        _REGISTRY[key] = _Entry(key, factory, checker, dict(parts))
        return obj

    return decorator


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in _PLUGIN_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def available_objectives() -> list[str]:
    """Sorted names of every known objective (built-in, plugin and user-registered)."""
    _load_plugins()
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case and aliases folded), or a one-line ConfigError."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in _REGISTRY or key in _BUILTIN_MODULES:
        return key
    _load_plugins()
    if key in _REGISTRY:
        return key
    raise ConfigError(f"unknown objective {name!r}; known objectives: {', '.join(available_objectives())}")


def objective_components(name: str) -> dict[str, str]:
    """Weights-table keys that objective ``name`` reads besides its own name (see ``components``)."""
    return dict(_entry(name).components)


def _entry(name: str) -> _Entry:
    key = canonical_name(name)
    if key not in _REGISTRY:
        importlib.import_module(_BUILTIN_MODULES[key])
    return _REGISTRY[key]


def load_objective(name: str, weights: str | None = None, device: Any = "cpu", dtype: Any = None, **options) -> Objective:
    """Builds a registered objective.

    Args:
        name: a registry name (see :func:`available_objectives`).
        weights: ``"tiny"`` (random, tiny, offline), ``"random"`` (random at the real size, for
            benchmarks), a hub id, a local folder or a checkpoint file. ``None`` reads the
            objective's environment variable (``FABRIC_OPT_<NAME>_WEIGHTS``), then falls back to
            the published hub location.
        device: where the model runs.
        dtype: model dtype; ``None`` means float32. Scores are always float32 on CPU.
        **options: family options, e.g. ``batch_size=16``, ``head="linear"`` (aesthetic),
            ``target=image`` (target), ``encoder="dino"`` (target, diversity).

    Raises:
        ConfigError: unknown name.
        WeightsNotFoundError: weights neither local nor reachable.
        ModelLoadError: a checkpoint that cannot be read or does not fit the model.
    """
    factory = _entry(name).factory
    _check_options(name, factory, options)
    device, dtype = placement(device, dtype)
    return factory(weights=weights, device=device, dtype=dtype, **options)


def _check_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """A one-line error for options the family does not take (instead of a TypeError)."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in ("weights", "device", "dtype")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidParameterError(
            f"objective {name!r} has no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}"
        )


def check_available(name: str, weights: Any = None, **options) -> None:
    """Raises :class:`~fabric.errors.WeightsNotFoundError` now if ``name`` could not be loaded.

    Cheap: it resolves paths, the Hugging Face cache and (when online) one HEAD request per
    file; it loads nothing. Call it before any generation so a missing checkpoint stops a
    study before the GPU work starts.

    Args:
        name: an objective name or a whole spec (``"pickscore+0.5*aesthetic,diversity"``).
        weights: as for :func:`load_objective`; for a spec, one value or ``{name: weights}``.
        **options: the objective's options; for a spec, ``options={name: {...}}``.
    """
    if _SPEC_CHARS.search(str(name)) or isinstance(weights, dict):
        from objectives.composite import check_spec

        check_spec(name, weights, options.get("options"))
        return
    entry = _entry(name)
    _check_options(name, entry.factory, options)
    if entry.check is not None:
        entry.check(weights=weights, **options)
