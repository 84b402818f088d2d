"""A toy world where images mean something: procedural scenes, a small SD-family model, rewards.

Random-weight models prove that the machinery runs, not that FABRIC steers anything. The toy
world closes that gap on a CPU: 64x64 scenes of coloured shapes with known attributes
(:mod:`toyworld.scenes`), a small trained text-to-image model made of the real diffusers and
transformers classes (:mod:`toyworld.model`), and reward models trained on the same world
(:mod:`toyworld.rewards`).

Only the scene generator is imported here; torch-based modules load on first use.
"""

from __future__ import annotations

from toyworld.scenes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SIZES,
    Scene,
    Shape,
    caption,
    held_out_scenes,
    render,
    sample_scenes,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "SHAPES",
    "SIZES",
    "Scene",
    "Shape",
    "caption",
    "held_out_scenes",
    "render",
    "sample_scenes",
]
