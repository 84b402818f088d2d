"""Optuna samplers behind one registry, and warm-start helpers.

``make_sampler("botorch", seed=0)`` returns an ``optuna.samplers.BaseSampler``; see
:mod:`optimize.samplers.registry` for the names. Heavy modules (torch, botorch) load only when a
sampler that needs them is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optimize.samplers.registry import (
    DEFAULT_SAMPLER,
    available_samplers,
    make_sampler,
    register_sampler,
)
from optimize.samplers.warm_start import DEFAULT_PRESETS, enqueue_defaults, enqueue_params

if TYPE_CHECKING:
    from optimize.samplers.botorch import BoTorchSampler, SamplerFallbackWarning

__all__ = [
    "DEFAULT_SAMPLER",
    "DEFAULT_PRESETS",
    "BoTorchSampler",
    "SamplerFallbackWarning",
    "available_samplers",
    "enqueue_defaults",
    "enqueue_params",
    "make_sampler",
    "register_sampler",
]


def __getattr__(name: str) -> Any:
    if name in ("BoTorchSampler", "SamplerFallbackWarning"):
        from optimize.samplers import botorch

        return getattr(botorch, name)
    raise AttributeError(f"module 'optimize.samplers' has no attribute {name!r}")
