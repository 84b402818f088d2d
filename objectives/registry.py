"""The registry every reward model is built through.

Families live in their own modules (``objectives/pickscore.py``, ``objectives/hps.py``, ...) and
register themselves with :func:`register_objective`; the registry imports a family's module only
when its name is first looked up, so ``import objectives`` (and ``fabric-opt --help``) stays free
of torch. Whole specs (``"pickscore+0.5*aesthetic"``) are parsed on top of this, in
:mod:`objectives.composite`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fabric.errors import ConfigError, InvalidParameterError
from objectives.base import RewardModel, placement

__all__ = [
    "register_objective",
    "available_objectives",
    "load_objective",
    "check_weights",
    "canonical_name",
    "objective_components",
]

_DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[..., RewardModel]  # (weights=None, device=..., dtype=..., **options)
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
    # the toy world's rewards (toyworld.rewards), for offline studies on the CPU
    "toy-clip": "objectives.toy",
    "toy-target": "objectives.toy",
    "toy-diversity": "objectives.toy",
    "toy-taste": "objectives.toy",
    "toy-adherence": "objectives.toy",
}
_ALIASES = {"hpsv1": "hps", "hpsv2.1": "hpsv21", "hps-v2": "hpsv2", "hps-v2.1": "hpsv21", "clip-score": "clipscore"}


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


def available_objectives() -> list[str]:
    """Sorted names of every known objective (built-in and registered)."""
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case and aliases folded), or a one-line ConfigError."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in _REGISTRY or key in _BUILTIN_MODULES:
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


def load_objective(
    name: str, weights: str | None = None, device: Any = "cpu", dtype: Any = None, **options
) -> RewardModel:
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


def check_weights(name: str, weights: Any = None, **options: Any) -> None:
    """Raises :class:`~fabric.errors.WeightsNotFoundError` now if objective ``name`` could not be loaded.

    Cheap: it resolves paths, the Hugging Face cache and (when online) one HEAD request per
    file; it loads nothing. Whole specs go through :func:`objectives.check_available`.
    """
    entry = _entry(name)
    _check_options(name, entry.factory, options)
    if entry.check is not None:
        entry.check(weights=weights, **options)
