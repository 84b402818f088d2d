"""The toy rewards through the objectives registry."""

from __future__ import annotations

import pytest
import torch

from fabric.errors import InvalidParameterError
from toyworld.scenes import Scene, Shape, render

objectives_base = pytest.importorskip("objectives.registry")


@pytest.fixture(scope="module")
def images():
    return [
        render(Scene((Shape("star", "red", "large"),), "blue")),
        render(Scene((Shape("circle", "green", "small"),), "black")),
        render(Scene((Shape("star", "yellow", "large", 0.45, 0.55),), "blue")),
    ]


def test_toy_objectives_are_registered():
    names = objectives_base.available_objectives()
    assert {"toy-clip", "toy-target", "toy-diversity", "toy-taste"} <= set(names)


@pytest.mark.parametrize(
    "name, options, direction",
    [
        ("toy-clip", {}, "maximize"),
        ("toy-taste", {"taste": "stars"}, "maximize"),
        ("toy-diversity", {}, "minimize"),
        ("toy-target", {}, "maximize"),
    ],
)
def test_contract(name, options, direction, images):
    obj = objectives_base.load_objective(name, **options)
    assert obj.direction == direction
    if obj.takes_target:
        obj = obj.with_target(images[0])
    a = obj.score(images, "a large red star on a blue background")
    b = obj.score(images, "a large red star on a blue background")
    assert a.shape == (3,) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_scores_mean_what_they_say(images):
    clip = objectives_base.load_objective("toy-clip")
    s = clip.score(images, "a large red star on a blue background")
    assert s[0] > s[1]
    per_image = clip.score(images[:2], ["a small green circle on a black background"] * 2)
    assert per_image[1] > per_image[0]
    target = objectives_base.load_objective("toy-target", target=images[0]).score(images)
    assert target[0] > target[2] > target[1]  # itself, then the other star on blue, then the circle
    stars = objectives_base.load_objective("toy-taste", taste="stars").score(images)
    assert stars[0] > 0.5 and stars[2] > 0.5 and stars[1] < 0.5


def test_bad_options_are_one_line_errors():
    with pytest.raises(InvalidParameterError, match="taste"):
        objectives_base.load_objective("toy-taste", taste="spicy")
    with pytest.raises(InvalidParameterError):
        objectives_base.load_objective("toy-clip", taste="warm")
    with pytest.raises(InvalidParameterError, match="target"):
        objectives_base.load_objective("toy-target").score([render(Scene((Shape("star", "red", "large"),), "blue"))])
