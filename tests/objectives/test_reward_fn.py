"""The DDPO/AlignProp-shaped reward adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import objectives
from fabric.errors import ConfigError, ImageError
from objectives.rl import to_pil_images


def test_tensor_array_and_pil_inputs_score_alike(colour_images):
    reward_fn = objectives.make_reward_fn("pickscore", weights="tiny")
    images = [image.resize((32, 24)) for image in colour_images]
    uint8 = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)  # (n, 3, H, W)
    prompts = ["a red circle"] * len(images)
    expected, info = reward_fn(images, prompts, [{}] * len(images))
    assert info["objective"] == "pickscore" and info["direction"] == "maximize"
    assert torch.equal(info["scores"], expected) and expected.shape == (len(images),)
    for batch in (uint8, uint8.float() / 255, uint8.permute(0, 2, 3, 1).numpy()):
        rewards, _ = reward_fn(batch, prompts, None)
        assert torch.allclose(rewards, expected, atol=1e-5)


def test_minimised_objectives_become_rewards_by_negation(colour_images):
    rewards, info = objectives.make_reward_fn("diversity", weights="tiny")(colour_images, "x", None)
    assert info["direction"] == "minimize"
    assert torch.equal(rewards, -info["scores"])


def test_composite_specs_and_objects_are_accepted(colour_images, tiny):
    fn = objectives.make_reward_fn("pickscore+0.5*aesthetic", weights={"pickscore": "tiny", "aesthetic": "tiny"})
    assert fn(colour_images, "x", None)[0].shape == (len(colour_images),)
    assert objectives.make_reward_fn(tiny("clipscore")).objective.name == "clipscore"


def test_pareto_tuples_are_refused():
    with pytest.raises(ConfigError, match="one scalar objective"):
        objectives.make_reward_fn("pickscore,diversity", weights={"pickscore": "tiny", "diversity": "tiny"})


def test_images_in_minus_one_to_one_are_refused_with_the_fix():
    with pytest.raises(ImageError, match=r"\(x \+ 1\) / 2"):
        to_pil_images(torch.full((2, 3, 8, 8), -0.5))
    with pytest.raises(ImageError, match="channels"):
        to_pil_images(torch.zeros(2, 5, 8, 7))


def test_conversion_rounds_floats_to_the_nearest_level():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    assert np.asarray(to_pil_images(x)[0]).tolist() == [[[0, 128, 255]]]
