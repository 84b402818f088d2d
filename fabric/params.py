"""FABRIC's action space as one frozen, validated dataclass.

The defaults are the FABRIC paper's evaluation settings (DESIGN section 3); the A1111
extension's defaults are available as :meth:`FabricParams.a1111`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fabric.checks import check_int
from fabric.errors import InvalidParameterError

__all__ = ["FabricParams"]


@dataclass(frozen=True)
class FabricParams:
    """Every knob of one FABRIC generation.

    Weights multiply the attention probabilities of reference tokens (then renormalised), so
    0 ignores the references and 1 treats a reference token like one of the image's own.
    """

    feedback_start: float = 0.0  # fraction of the denoising steps where full-weight feedback begins
    feedback_end: float = 0.8  # ... and ends (inclusive); outside, min_weight applies
    min_weight: float = 0.0
    max_weight: float = 0.3
    neg_scale: float = 0.5  # negative-reference weight = weight * neg_scale
    pos_bottleneck_scale: float = 1.0  # weight at the mid block relative to the outermost blocks
    neg_bottleneck_scale: float = 1.0
    max_references: int | None = None  # most recent k liked and k disliked; None = all
    prompt_dropout: float = 0.0  # per-word drop probability for each image's prompt
    steps: int = 20
    guidance_scale: float = 6.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("steps", "max_references"):
                if value is None and f.name == "max_references":
                    continue
                if isinstance(value, float) and value.is_integer():  # 20.0 from a JSON or YAML file
                    value = int(value)
                object.__setattr__(self, f.name, check_int(f.name, value))
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidParameterError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InvalidParameterError(f"{f.name} must be finite, got {value!r}")
            object.__setattr__(self, f.name, float(value))

        def check(ok: bool, message: str) -> None:
            if not ok:
                raise InvalidParameterError(message)

        check(0.0 <= self.feedback_start <= 1.0, f"feedback_start must be in [0, 1], got {self.feedback_start}")
        check(0.0 <= self.feedback_end <= 1.0, f"feedback_end must be in [0, 1], got {self.feedback_end}")
        check(
            self.feedback_start <= self.feedback_end,
            f"feedback_start ({self.feedback_start}) must not exceed feedback_end ({self.feedback_end})",
        )
        for name in ("min_weight", "max_weight", "neg_scale", "pos_bottleneck_scale", "neg_bottleneck_scale"):
            check(getattr(self, name) >= 0.0, f"{name} must be >= 0, got {getattr(self, name)}")
        check(
            self.min_weight <= self.max_weight,
            f"min_weight ({self.min_weight}) must not exceed max_weight ({self.max_weight})",
        )
        check(
            self.max_references is None or self.max_references >= 1,
            f"max_references must be >= 1 or None, got {self.max_references}",
        )
        check(0.0 <= self.prompt_dropout < 1.0, f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.guidance_scale >= 0.0, f"guidance_scale must be >= 0, got {self.guidance_scale}")

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def paper(cls) -> FabricParams:
        """The FABRIC paper's evaluation defaults."""
        return cls()

    @classmethod
    def a1111(cls) -> FabricParams:
        """The sd-webui-fabric extension's UI defaults."""
        return cls(max_weight=0.8, guidance_scale=7.0)

    # ---- serialisation -------------------------------------------------------------------
    def replace(self, **changes: Any) -> FabricParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FabricParams:
        if not isinstance(data, Mapping):
            raise InvalidParameterError(f"FABRIC parameters must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParameterError(
                f"unknown FABRIC parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> FabricParams:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"FABRIC parameters are not valid JSON: {exc}") from None
        return cls.from_dict(data)
