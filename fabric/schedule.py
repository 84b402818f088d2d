"""FABRIC's weight schedule over denoising steps and U-Net depth (pure functions, no torch).

Reference semantics (DESIGN section 2):

* ``i_start = round(N * start)``, ``i_end = round(N * end)``; step ``i`` is active when
  ``i_start <= i <= i_end``. Active steps use ``max_weight``, the others ``min_weight``.
* Negative references get ``w * neg_scale``.
* Depth profile: down block ``k`` of ``D`` gets ``linspace(w, w * scale, D + 1)[k]``, the mid
  block ``w * scale``, and up block ``j`` mirrors down block ``D - 1 - j``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fabric.params import FabricParams

__all__ = [
    "StepWeights",
    "active_steps",
    "step_weight",
    "step_weights",
    "depth_profile",
    "block_of_layer",
    "layer_weights",
]


def active_steps(num_steps: int, start: float, end: float) -> range:
    """Indices of the steps with full-weight feedback."""
    # Python's round() is banker's rounding, as in the reference implementation.
    i_start, i_end = round(num_steps * start), round(num_steps * end)
    return range(max(i_start, 0), min(i_end, num_steps - 1) + 1)


def step_weight(step: int, num_steps: int, params: FabricParams) -> float:
    """The positive base weight ``w`` at step ``step`` (before neg_scale and depth profile)."""
    if step in active_steps(num_steps, params.feedback_start, params.feedback_end):
        return params.max_weight
    return params.min_weight


@dataclass(frozen=True)
class StepWeights:
    """Base weights of one step: ``pos`` for liked references, ``neg`` for disliked ones."""

    pos: float
    neg: float

    @property
    def needs_references(self) -> bool:
        return self.pos > 0.0 or self.neg > 0.0


def step_weights(step: int, num_steps: int, params: FabricParams) -> StepWeights:
    w = step_weight(step, num_steps, params)
    return StepWeights(pos=w, neg=w * params.neg_scale)


def depth_profile(
    weight: float, bottleneck_scale: float, num_down_blocks: int
) -> tuple[list[float], float, list[float]]:
    """Per-block weights ``(down, mid, up)`` for a U-Net with ``num_down_blocks`` levels.

    Example (SD 1.5, D=4, w=1, scale=0.5): down ``[1, .875, .75, .625]``, mid ``.5``,
    up ``[.625, .75, .875, 1]``.
    """
    d = num_down_blocks
    if d < 1:
        raise ValueError("a U-Net has at least one down block")
    top, bottom = weight, weight * bottleneck_scale
    # linspace(top, bottom, d + 1) without torch; exact at both ends
    down = [top + (bottom - top) * k / d for k in range(d)]
    return down, bottom, down[::-1]


_LAYER_RE = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


def block_of_layer(layer_name: str) -> tuple[str, int]:
    """``("down", k)``, ``("mid", 0)`` or ``("up", j)`` for a U-Net attention layer name."""
    m = _LAYER_RE.match(layer_name)
    if m is None:
        raise ValueError(f"not a U-Net block layer name: {layer_name!r}")
    if m.group(3):
        return "mid", 0
    return ("down" if m.group(1) == "down_blocks" else "up"), int(m.group(2))


def layer_weights(
    layer_names: Iterable[str], weight: float, bottleneck_scale: float, num_down_blocks: int
) -> Mapping[str, float]:
    """The weight of each named self-attention layer under the depth profile."""
    down, mid, up = depth_profile(weight, bottleneck_scale, num_down_blocks)
    out = {}
    for name in layer_names:
        kind, k = block_of_layer(name)
        out[name] = down[k] if kind == "down" else up[k] if kind == "up" else mid
    return out
