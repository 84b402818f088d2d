"""FABRIC for current diffusers: feedback through reference-image self-attention.

Heavy modules (torch, diffusers) are imported lazily so ``fabric-opt --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric.errors import FabricOptError
from fabric.params import FabricParams

__all__ = ["FabricParams", "FabricGenerator", "FabricOptError", "GenerationRequest", "IterativeFeedbackGenerator"]
__version__ = "0.1.0"

_LAZY = {
    "FabricGenerator": "fabric.fabric_generator",
    "GenerationRequest": "fabric.fabric_generator",
    "IterativeFeedbackGenerator": "fabric.iterative",
}

if TYPE_CHECKING:
    from fabric.fabric_generator import FabricGenerator, GenerationRequest
    from fabric.iterative import IterativeFeedbackGenerator


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fabric' has no attribute {name!r}")
