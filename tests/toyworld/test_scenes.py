from __future__ import annotations

import math
import subprocess
import sys

import pytest

from fabric.errors import InvalidParameterError
from toyworld.scenes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Scene,
    Shape,
    caption,
    held_out_scenes,
    is_held_out,
    render,
    sample_scenes,
)


def test_sampling_is_deterministic_under_a_seed():
    a, b = sample_scenes(50, seed=3), sample_scenes(50, seed=3)
    assert a == b
    assert [render(s).tobytes() for s in a[:10]] == [render(s).tobytes() for s in b[:10]]
    assert sample_scenes(50, seed=4) != a


def test_sampling_leaves_global_random_state_alone():
    import random

    random.seed(7)
    expected = random.random()
    random.seed(7)
    sample_scenes(20, seed=0)
    assert random.random() == expected


def test_scenes_cover_every_attribute_and_shapes_do_not_overlap():
    scenes = sample_scenes(400, seed=0)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {sh.kind for s in scenes for sh in s.shapes} == set(SHAPES)
    assert {sh.colour for s in scenes for sh in s.shapes} == set(COLOURS)
    assert {s.count for s in scenes} == {1, 2}
    for s in scenes:
        assert all(sh.colour != s.background for sh in s.shapes)
        if s.count == 2:
            a, b = s.shapes
            assert math.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius


def test_caption_describes_the_scene():
    scene = Scene((Shape("star", "red", "small"),), "blue")
    assert caption(scene) == "a small red star on a blue background"
    two = Scene((Shape("star", "red", "small", 0.2, 0.2), Shape("circle", "green", "large", 0.7, 0.7)), "black")
    assert caption(two) == "a small red star and a large green circle on a black background"


def test_render_draws_the_shape_in_its_colour():
    scene = Scene((Shape("square", "red", "large", 0.5, 0.5),), "black")
    image = render(scene)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert image.getpixel((32, 32)) == COLOURS["red"]
    assert image.getpixel((1, 1)) == BACKGROUNDS["black"]


def test_held_out_split_is_disjoint_from_training_captions():
    held = held_out_scenes(30, seed=0)
    train = sample_scenes(300, seed=0, split="train")
    assert all(is_held_out(s) and s.count == 1 for s in held)
    assert not {caption(s) for s in held} & {caption(s) for s in train}


@pytest.mark.parametrize(
    "build",
    [
        lambda: Shape("hexagon", "red", "small"),
        lambda: Shape("star", "teal", "small"),
        lambda: Shape("star", "red", "medium"),
        lambda: Shape("star", "red", "small", x=1.5),
        lambda: Scene((), "black"),
        lambda: Scene((Shape("star", "red", "small"),), "plaid"),
        lambda: sample_scenes(3, split="test"),
    ],
)
def test_invalid_scenes_raise_one_line_errors(build):
    with pytest.raises(InvalidParameterError) as info:
        build()
    assert "\n" not in str(info.value)


def test_importing_the_package_does_not_import_torch():
    code = "import sys, toyworld; toyworld.sample_scenes(2, 0); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_partial_captions_only_leave_words_out():
    import random

    from toyworld.scenes import partial_caption

    rng = random.Random(0)
    for scene in sample_scenes(50, seed=2):
        full, part = caption(scene).split(), partial_caption(scene, rng).split()
        assert set(part) <= set(full) | {"shape"}
        assert part.count("a") == scene.count + ("background" in part)
    assert partial_caption(sample_scenes(1, seed=0)[0], random.Random(0), keep=1.0) == caption(
        sample_scenes(1, seed=0)[0]
    )
