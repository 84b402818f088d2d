"""Pinned outputs of the tiny model at a fixed seed: a drift that moves two compared paths
together (FABRIC and the plain pipeline, cold and warm calls) still shows here.

The values were printed once (2026-11-30, torch 2.14.1, diffusers 0.42.1) and agree to 1e-4
between MKL's SSE4.2 and AVX-512 paths; the tolerance leaves room for other CPUs' rounding,
not for a change of algorithm (FABRIC moves these values by ~0.2 on average).
"""

from __future__ import annotations

import torch
from PIL import Image

from fabric import FabricParams
from fabric.fabric_generator import FabricGenerator

P = FabricParams(steps=4, max_weight=0.8, feedback_end=1.0)
PROMPT = "a red circle on a blue background"
# (latent [0, 0, 0, :6], latent [1, 3, -1, -6:])
PLAIN = ([-6.2759, -6.4130, -3.9521, -1.0286, 3.9234, 3.0010], [-0.9901, 6.5358, 0.1085, -6.3067, 0.6981, 2.1372])
FABRIC = ([-6.3116, -6.6353, -4.0783, -1.1481, 4.3321, 3.1541], [-0.9098, 6.3520, 0.2549, -6.4052, 0.5934, 2.1849])


def _check(latents: torch.Tensor, expected) -> None:
    assert latents.shape == (2, 4, 8, 8)
    torch.testing.assert_close(latents[0, 0, 0, :6], torch.tensor(expected[0]), rtol=0, atol=1e-3)
    torch.testing.assert_close(latents[1, 3, -1, -6:], torch.tensor(expected[1]), rtol=0, atol=1e-3)


def test_the_tiny_model_gives_its_pinned_latents(tiny_generator):
    gen = FabricGenerator(tiny_generator.pipeline)
    red, blue = Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 40, 220))
    _check(gen.generate(PROMPT, params=P, n_images=2, seed=[0, 1], output_type="latent"), PLAIN)
    fed = gen.generate(PROMPT, liked=[red], disliked=[blue], params=P, n_images=2, seed=[0, 1], output_type="latent")
    _check(fed, FABRIC)
