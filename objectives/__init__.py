"""Reward objectives for FABRIC optimisation: PickScore, HPS, aesthetics, CLIP score, target
similarity, in-batch diversity, their weighted sums and tuples.

    import objectives

    obj = objectives.load_objective("pickscore", weights="tiny")
    obj.score(images, "a red fox in the snow")  # float32 tensor [n]
    obj.direction                               # "maximize"

    objectives.parse_objective("pickscore+0.5*aesthetic")   # weighted sum
    objectives.parse_objective("pickscore,diversity")       # Pareto tuple (.directions)
    objectives.check_available("hpsv2")                     # fails fast if weights are missing

Importing this package is cheap: torch, transformers and open_clip load with the first model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from objectives.base import Objective, RewardModel
from objectives.registry import available_objectives, load_objective, register_objective

__all__ = [
    "Objective",
    "RewardModel",
    "CompositeObjective",
    "MultiObjective",
    "RewardFunction",
    "available_objectives",
    "check_available",
    "load_objective",
    "make_reward_fn",
    "parse_objective",
    "register_objective",
    "env_var",
]

_LAZY = {
    "CompositeObjective": "objectives.composite",
    "MultiObjective": "objectives.composite",
    "parse_objective": "objectives.composite",
    "check_available": "objectives.composite",
    "RewardFunction": "objectives.rl",
    "make_reward_fn": "objectives.rl",
    "env_var": "objectives.weights",
}

if TYPE_CHECKING:
    from objectives.composite import CompositeObjective, MultiObjective, check_available, parse_objective
    from objectives.rl import RewardFunction, make_reward_fn
    from objectives.weights import env_var


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'objectives' has no attribute {name!r}")
