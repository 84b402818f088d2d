"""One registry of Optuna samplers, by name.

Every entry is a factory ``(seed, **options) -> optuna.samplers.BaseSampler``; all of them run
through Optuna studies, so storage, workers, ask/tell and pruners work the same whichever is
chosen.

The default is ``gp`` (Optuna's GPSampler), by issue #16's rule: the sampler whose recommendation
gained most on held-out prompts in the toy study (docs/BENCHMARKS.md, "The real task"). No
sampler beat another there beyond seed noise; ``botorch`` (our
:class:`~optimize.samplers.botorch.BoTorchSampler`) is the one to pick when trials can fail or
several workers share a study (docs/STUDIES.md, "Samplers").
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fabric.errors import ConfigError

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

__all__ = ["DEFAULT_SAMPLER", "SamplerFactory", "available_samplers", "make_sampler", "register_sampler"]

DEFAULT_SAMPLER = "gp"

SamplerFactory = Callable[..., "BaseSampler"]
_REGISTRY: dict[str, SamplerFactory] = {}


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Decorator that registers ``factory(seed, **options)`` under ``name``."""

    def decorate(factory: SamplerFactory) -> SamplerFactory:
        if name in _REGISTRY:
            raise ValueError(f"sampler '{name}' is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_samplers() -> list[str]:
    """Registered sampler names, sorted."""
    return sorted(_REGISTRY)


def make_sampler(name: str = DEFAULT_SAMPLER, seed: int | None = None, **options: Any) -> BaseSampler:
    """Build a registered sampler.

    Args:
        name: one of :func:`available_samplers` (``botorch``, ``gp``, ``tpe``, ``random``,
            ``qmc``, ``nsga2``, ``cmaes``).
        seed: makes the sampler's suggestions reproducible; ``None`` draws one.
        **options: keyword arguments of the underlying sampler class.

    Raises:
        ConfigError: unknown name, an option the sampler does not take, or a missing optional
            package.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown sampler '{name}'; known: {', '.join(available_samplers())}")
    try:
        return _REGISTRY[name](seed, **options)
    except TypeError as exc:
        raise ConfigError(f"invalid option for sampler '{name}': {exc}") from None


@register_sampler("botorch")
def _botorch(seed: int | None, **options: Any) -> BaseSampler:
    from optimize.samplers.botorch import BoTorchSampler

    return BoTorchSampler(seed=seed, **options)


@register_sampler("gp")
def _gp(seed: int | None, **options: Any) -> BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, **options)


@register_sampler("tpe")
def _tpe(seed: int | None, **options: Any) -> BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, **options)


@register_sampler("random")
def _random(seed: int | None, **options: Any) -> BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed, **options)


@register_sampler("qmc")
def _qmc(seed: int | None, **options: Any) -> BaseSampler:
    import optuna

    options.setdefault("qmc_type", "sobol")
    with warnings.catch_warnings():
        # Experimental since Optuna 3.0 and stable in use; the warning only alarms users.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, **options)


@register_sampler("nsga2")
def _nsga2(seed: int | None, **options: Any) -> BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, **options)


@register_sampler("cmaes")
def _cmaes(seed: int | None, **options: Any) -> BaseSampler:
    if importlib.util.find_spec("cmaes") is None:
        raise ConfigError("sampler 'cmaes' needs the cmaes package: pip install 'fabric-opt[cmaes]'")
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, **options)
