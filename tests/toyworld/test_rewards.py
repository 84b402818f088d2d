from __future__ import annotations

import pytest
import torch

from fabric.errors import InvalidParameterError
from toyworld.rewards import HEADS, get_taste, scene_targets, taste_names
from toyworld.scenes import Scene, Shape, caption, render


def test_attribute_classifier_beats_chance_by_a_wide_margin(classifier, test_scenes):
    scenes, images = test_scenes
    probs = classifier.probabilities(images)
    targets = scene_targets(scenes)
    single = torch.tensor([s.count == 1 for s in scenes])
    # one-shape scenes: the argmax colour / shape is the shape's (chance 1/8, 1/5)
    colour_acc = (probs["colour"].argmax(-1) == targets["colour"].argmax(-1))[single].float().mean()
    shape_acc = (probs["shape"].argmax(-1) == targets["shape"].argmax(-1))[single].float().mean()
    background_acc = (probs["background"].argmax(-1) == targets["background"]).float().mean()
    count_acc = (probs["count"].argmax(-1) == targets["count"]).float().mean()
    assert colour_acc > 0.95 and shape_acc > 0.9
    assert background_acc > 0.9 and count_acc > 0.85


def test_rewards_are_deterministic(classifier, toy_clip, test_scenes):
    _, images = test_scenes
    a = classifier.probabilities(images[:16])
    b = classifier.probabilities(images[:16])
    assert all(torch.equal(a[h], b[h]) for h in HEADS)
    assert torch.equal(toy_clip.embed_images(images[:16]), toy_clip.embed_images(images[:16]))


def test_toy_clip_prefers_the_true_caption(toy_clip, test_scenes):
    scenes, images = test_scenes
    img = toy_clip.embed_images(images)
    right = (img * toy_clip.embed_texts([caption(s) for s in scenes])).sum(-1)
    wrong = (img * toy_clip.embed_texts([caption(s) for s in scenes[1:] + scenes[:1]])).sum(-1)
    assert (right > wrong).float().mean() > 0.9


def test_toy_clip_tells_colours_and_shapes_apart(toy_clip):
    image = render(Scene((Shape("star", "red", "large"),), "black"))
    text = toy_clip.embed_texts(
        [
            "a large red star on a black background",
            "a large blue star on a black background",
            "a large red circle on a black background",
        ]
    )
    sims = (toy_clip.embed_images([image]) @ text.T)[0]
    assert sims.argmax() == 0


def test_tastes_rank_matching_images_higher(classifier):
    warm = render(Scene((Shape("circle", "orange", "large"),), "black"))
    cool = render(Scene((Shape("circle", "blue", "large"),), "black"))
    star = render(Scene((Shape("star", "green", "large"),), "gray"))
    busy = render(
        Scene((Shape("square", "pink", "small", 0.25, 0.25), Shape("cross", "white", "small", 0.75, 0.75)), "brown")
    )
    probs = classifier.probabilities([warm, cool, star, busy])
    assert get_taste("warm")(probs)[0] > 0.5 > get_taste("warm")(probs)[1]
    assert get_taste("stars")(probs).argmax() == 2
    assert get_taste("uncluttered")(probs)[3] < 0.5 < get_taste("uncluttered")(probs)[0]


def test_unknown_taste_lists_the_known_ones():
    assert {"warm", "stars", "uncluttered", "red", "circles", "black-background"} <= set(taste_names())
    with pytest.raises(InvalidParameterError, match="warm"):
        get_taste("spicy")


def test_classifier_encoder_depth_follows_its_config():
    from torch import nn

    from toyworld.rewards import AttributeClassifier

    def convs(model) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in model.modules())

    # a saved config without "deep" is the shallow encoder of the first toy world
    assert convs(AttributeClassifier(width=8)) == 4 and convs(AttributeClassifier(width=8, deep=True)) == 6
    out = AttributeClassifier(width=8, deep=True)(torch.zeros(2, 3, 64, 64))
    assert {h: tuple(v.shape) for h, v in out.items()} == {h: (2, len(c)) for h, (c, _) in HEADS.items()}
