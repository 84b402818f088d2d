"""What the FABRIC frontends can carry, read from their source (DESIGN section 7).

* The A1111 extension sd-webui-fabric (``scripts/fabric.py``, v0.6.3): sliders "Feedback
  Strength" (``max_weight``), "Min. strength" (``min_weight``) and "Negative weight"
  (``neg_scale``) on ``[0, 1]`` in steps of 0.05; "Feedback start"/"Feedback end" in steps of
  0.01; the WebUI's "CFG Scale" in steps of 0.5. Every liked and disliked image is used.
* ComfyUI_fabric (``nodes.py``): one absolute ``pos_weight`` and ``neg_weight`` on a range of
  steps, no weight outside it.

Neither has a depth profile (bottleneck scales), prompt dropout or a reference-count limit. A
*frontend-compatible* search space (``search_space: {frontend: a1111}``) fixes what a frontend
cannot carry and rounds what its sliders round (:func:`frontend_params`), so every trial runs,
and the exported preset holds, exactly what the frontend applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from fabric.errors import ConfigError
from fabric.params import FabricParams

__all__ = [
    "FRONTENDS",
    "A1111_WEIGHT_STEP",
    "A1111_RANGE_STEP",
    "A1111_CFG_STEP",
    "UNCARRIED",
    "fixed_values",
    "check_frontend",
    "snap",
    "frontend_params",
]

FRONTENDS = ("a1111", "comfyui")
A1111_WEIGHT_STEP = 0.05  # Feedback Strength, Min. strength, Negative weight
A1111_RANGE_STEP = 0.01  # Feedback start, Feedback end
A1111_CFG_STEP = 0.5  # the WebUI's CFG Scale slider

#: what neither frontend can carry, and the value that means "not used"
UNCARRIED: Mapping[str, Any] = MappingProxyType(
    {"pos_bottleneck_scale": 1.0, "neg_bottleneck_scale": 1.0, "prompt_dropout": 0.0, "max_references": None}
)
_FIXED = {
    "a1111": dict(UNCARRIED),
    # ComfyUI_fabric applies no feedback outside a node's step range
    "comfyui": {**UNCARRIED, "min_weight": 0.0},
}


def check_frontend(frontend: Any) -> str | None:
    """``frontend`` validated (``None``: no frontend constraint)."""
    if frontend is None or frontend in FRONTENDS:
        return frontend
    raise ConfigError(f"unknown frontend {frontend!r}; known: {', '.join(FRONTENDS)} (or leave it out)")


def fixed_values(frontend: str) -> dict[str, Any]:
    """FabricParams fields a frontend-compatible space fixes, with their values."""
    name = check_frontend(frontend)
    if name is None:
        raise ConfigError("fixed_values needs a frontend")
    return dict(_FIXED[name])


def snap(value: float, step: float) -> float:
    """``value`` on the grid of ``step`` (nearest point; a clean decimal, e.g. 0.55 not 0.5500000001)."""
    digits = max(0, -math.floor(math.log10(step)) + 1)
    return round(round(value / step) * step, digits)


def frontend_params(params: FabricParams, frontend: str | None) -> FabricParams:
    """The parameters ``frontend`` applies for ``params``: uncarried fields at their neutral value,
    A1111 weights and CFG on the sliders' grid (``min_weight`` never above ``max_weight``)."""
    name = check_frontend(frontend)
    if name is None:
        return params
    fields = params.to_dict()
    fields.update(_FIXED[name])
    if name == "a1111":
        fields["max_weight"] = snap(fields["max_weight"], A1111_WEIGHT_STEP)
        fields["min_weight"] = min(fields["max_weight"], snap(fields["min_weight"], A1111_WEIGHT_STEP))
        fields["neg_scale"] = snap(fields["neg_scale"], A1111_WEIGHT_STEP)
        fields["guidance_scale"] = snap(fields["guidance_scale"], A1111_CFG_STEP)
    return FabricParams(**fields)
