"""Fixtures for the reward objectives: drawn test images, tiny objectives, an offline hub."""

from __future__ import annotations

import os

import pytest

BUILTIN = ("aesthetic", "clipscore", "diversity", "hps", "hpsv2", "hpsv21", "pickscore", "target")
# solid colours: random-weight CLIPs map noise images to near-identical features, colours apart
COLOURS = ((220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30), (240, 240, 240))


def draw_scene(width: int = 320, height: int = 200):
    """A landscape test card: red band at the left edge, green at the right, a yellow disc
    in the middle on blue. Crops lose the bands; letterboxing keeps them and adds black."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (30, 120, 200))
    draw = ImageDraw.Draw(image)
    band = width // 8
    draw.rectangle([0, 0, band - 1, height - 1], fill=(255, 0, 0))
    draw.rectangle([width - band, 0, width - 1, height - 1], fill=(0, 255, 0))
    r = min(width, height) // 6
    draw.ellipse([width // 2 - r, height // 2 - r, width // 2 + r - 1, height // 2 + r - 1], fill=(255, 255, 0))
    return image


@pytest.fixture
def scene():
    return draw_scene()


@pytest.fixture(scope="session")
def colour_images():
    """Five solid-colour images of different sizes and aspect ratios."""
    from PIL import Image

    sizes = ((64, 64), (80, 48), (48, 80), (64, 64), (100, 60))
    return [Image.new("RGB", size, colour) for size, colour in zip(sizes, COLOURS)]


@pytest.fixture
def offline(monkeypatch):
    """No hub access and no FABRIC_OPT_*_WEIGHTS overrides from the developer's shell."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in list(os.environ):
        if name.startswith("FABRIC_OPT_") and name.endswith("_WEIGHTS"):
            monkeypatch.delenv(name)


def load_tiny(name: str, **options):
    """A tiny objective; ``target`` gets a solid-red target image unless one is given."""
    import objectives

    if name == "target" and "target" not in options:
        from PIL import Image

        options["target"] = Image.new("RGB", (64, 64), COLOURS[0])
    return objectives.load_objective(name, weights="tiny", **options)


@pytest.fixture(scope="session")
def tiny():
    """``tiny(name, **options)`` -> a tiny objective (see :func:`load_tiny`)."""
    return load_tiny


@pytest.fixture(scope="session")
def draw():
    """``draw(width, height)`` -> the test card of :func:`draw_scene`."""
    return draw_scene


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one intra-op thread: on a shared, loaded 2-core machine a second thread
    makes each small matmul wait on the busy pool (measured 30 ms instead of 11 us)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
