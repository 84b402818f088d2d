"""A toy world where images mean something: procedural scenes, a small SD-family model, rewards.

Random-weight models prove that the machinery runs, not that FABRIC steers anything. The toy
world closes that gap on a CPU: 64x64 scenes of coloured shapes with known attributes
(:mod:`fabric.toy.scenes`), a small trained text-to-image model made of the real diffusers and
transformers classes (:mod:`fabric.toy.model`), and reward models trained on the same world
(:mod:`fabric.toy.rewards`).

Only the scene generator is imported here; torch-based modules load on first use.
"""

from __future__ import annotations

from fabric.toy.scenes import (
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
