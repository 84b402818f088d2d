"""Bayesian optimisation of FABRIC's parameters: search space, trial protocol, samplers,
recommendation.

Data flow: a study file (``studies/*.yaml``, read by :mod:`optimize.config` into a
:class:`StudyConfig`) sets the protocol, prompts and space -> :class:`SearchSpace` -> sampler
(:func:`make_sampler`) proposes search values ->
:class:`TrialEvaluator` turns them into :class:`~fabric.params.FabricParams`, runs the feedback
protocol and returns the trial value -> :func:`recommend` picks the best parameters by the GP
posterior mean and compares them with the defaults on held-out prompts.

Names load lazily, so ``import optimize`` does not import torch, botorch or optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "SearchSpace",
    "FloatParam",
    "IntParam",
    "CategoricalParam",
    "Protocol",
    "TrialEvaluator",
    "TrialResult",
    "PromptResult",
    "NonFiniteScoreError",
    "evaluate",
    "make_sampler",
    "available_samplers",
    "register_sampler",
    "DEFAULT_SAMPLER",
    "enqueue_defaults",
    "enqueue_params",
    "Recommendation",
    "Candidate",
    "Comparison",
    "recommend",
    "compare",
    "StudyConfig",
    "available_studies",
    "load_study_config",
    "resolve_study",
    "PromptSet",
    "load_prompts",
]

_LAZY = {
    **dict.fromkeys(("SearchSpace", "FloatParam", "IntParam", "CategoricalParam"), "optimize.space"),
    **dict.fromkeys(
        ("Protocol", "TrialEvaluator", "TrialResult", "PromptResult", "NonFiniteScoreError", "evaluate"),
        "optimize.protocol",
    ),
    **dict.fromkeys(
        (
            "make_sampler",
            "available_samplers",
            "register_sampler",
            "DEFAULT_SAMPLER",
            "enqueue_defaults",
            "enqueue_params",
        ),
        "optimize.samplers",
    ),
    **dict.fromkeys(("Recommendation", "Candidate", "Comparison", "recommend", "compare"), "optimize.recommend"),
    **dict.fromkeys(("StudyConfig", "available_studies", "load_study_config", "resolve_study"), "optimize.config"),
    **dict.fromkeys(("PromptSet", "load_prompts"), "optimize.prompts"),
}

if TYPE_CHECKING:
    from optimize.config import StudyConfig, available_studies, load_study_config, resolve_study
    from optimize.prompts import PromptSet, load_prompts
    from optimize.protocol import NonFiniteScoreError, PromptResult, Protocol, TrialEvaluator, TrialResult, evaluate
    from optimize.recommend import Candidate, Comparison, Recommendation, compare, recommend
    from optimize.samplers import (
        DEFAULT_SAMPLER,
        available_samplers,
        enqueue_defaults,
        enqueue_params,
        make_sampler,
        register_sampler,
    )
    from optimize.space import CategoricalParam, FloatParam, IntParam, SearchSpace


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optimize' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
