"""Positive feedback pulls generations toward the liked image.

Random weights cannot show this (a random U-Net is no denoiser), so the test uses the ``toy``
model trained in this project (toyworld): liking a rendered scene brings the images of the
same seeds closer to it in pixel space than no feedback does.
"""

import numpy as np
import pytest

from fabric import FabricParams


@pytest.fixture(scope="module")
def toy_generator():
    import torch

    from fabric.errors import FabricOptError
    from fabric.fabric_generator import FabricGenerator

    try:
        return FabricGenerator.from_pretrained("toy", device="cpu", dtype=torch.float32)
    except FabricOptError as exc:
        pytest.skip(f"toy model not available: {exc}")


def _pixels(images):
    return np.stack([np.asarray(img, dtype=np.float32) for img in images])


def test_liking_an_image_pulls_the_output_toward_it(toy_generator):
    from toyworld.scenes import render, sample_scenes

    params = FabricParams(steps=10, max_weight=0.8, feedback_end=0.8)
    seeds = list(range(100, 108))
    closer_fraction = []
    for scene in sample_scenes(3, seed=123):
        liked = render(scene)
        target = np.asarray(liked, dtype=np.float32)
        plain = _pixels(toy_generator.generate("a shape", params=params, n_images=8, seed=seeds))
        pulled = _pixels(toy_generator.generate("a shape", liked=[liked], params=params, n_images=8, seed=seeds))
        d_plain = np.abs(plain - target).mean(axis=(1, 2, 3))
        d_pulled = np.abs(pulled - target).mean(axis=(1, 2, 3))
        assert d_pulled.mean() < d_plain.mean(), "feedback should bring images closer to the liked image"
        closer_fraction.append((d_pulled < d_plain).mean())
    assert np.mean(closer_fraction) > 0.7
