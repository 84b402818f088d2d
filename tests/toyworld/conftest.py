"""Fixtures of the toy-world tests: rendered scenes and the packaged models, loaded once."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # the test machine's cores are shared; one thread avoids oversubscription stalls
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def test_scenes():
    """120 scenes from a seed no model was trained on, with their rendered images."""
    from toyworld.scenes import render, sample_scenes

    scenes = sample_scenes(120, seed=12345)
    return scenes, [render(s) for s in scenes]


@pytest.fixture(scope="session")
def classifier():
    from toyworld.rewards import load_attribute_classifier

    return load_attribute_classifier()


@pytest.fixture(scope="session")
def toy_clip():
    from toyworld.rewards import load_toy_clip

    return load_toy_clip()
