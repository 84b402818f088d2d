"""The original FABRIC API is a drop-in: signatures, seeds, sizes, attributes and return values
of sd-fabric/fabric's ``fabric/generator.py`` and ``fabric/iterative.py`` (commit 362bb5f).

The expected signatures below are written from reading that source, not imported from it."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fabric.errors import InvalidParameterError
from fabric.generator import AttentionBasedGenerator
from fabric.iterative import IterativeFeedbackGenerator

_ = inspect.Parameter.empty
# (name, default) in order, as in the original
ORIGINAL = {
    (AttentionBasedGenerator, "__init__"): [
        ("model_name", None), ("model_ckpt", None), ("stable_diffusion_version", "1.5"), ("lora_weights", None),
        ("torch_dtype", torch.float32),
    ],
    (AttentionBasedGenerator, "generate"): [
        ("prompt", "a photo of an astronaut riding a horse on mars"), ("negative_prompt", ""), ("liked", []),
        ("disliked", []), ("seed", 42), ("n_images", 1), ("guidance_scale", 8.0), ("denoising_steps", 20),
        ("feedback_start", 0.33), ("feedback_end", 0.66), ("min_weight", 0.1), ("max_weight", 1.0),
        ("neg_scale", 0.5), ("pos_bottleneck_scale", 1.0), ("neg_bottleneck_scale", 1.0),
    ],
    (IterativeFeedbackGenerator, "__init__"): [("generator", _), ("init_liked", []), ("init_disliked", [])],
    (IterativeFeedbackGenerator, "reset"): [],
    (IterativeFeedbackGenerator, "generate"): [
        ("prompt", _), ("seed", None), ("n_images", 4), ("prompt_dropout", 0.0), ("return_params", False),
        ("kwargs", _),
    ],
    (IterativeFeedbackGenerator, "give_feedback"): [("liked", []), ("disliked", [])],
}  # fmt: skip


@pytest.mark.parametrize("cls, method", list(ORIGINAL), ids=[f"{c.__name__}.{m}" for c, m in ORIGINAL])
def test_signatures_match_the_original(cls, method):
    params = list(inspect.signature(getattr(cls, method)).parameters.values())[1:]  # without self
    assert [(p.name, p.default) for p in params] == ORIGINAL[(cls, method)]


@pytest.fixture(scope="module")
def legacy():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return AttentionBasedGenerator("tiny")  # model_name first, as in the original


def _arrays(images):
    return np.stack([np.asarray(im) for im in images])


def test_attributes_a_script_touches(legacy):
    assert legacy.unet is legacy.pipeline.unet and legacy.vae is legacy.pipeline.vae
    assert legacy.text_encoder is legacy.pipeline.text_encoder and legacy.tokenizer is legacy.pipeline.tokenizer
    assert (
        legacy.scheduler is legacy.pipeline.scheduler
        and type(legacy.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    )
    assert legacy.dtype == torch.float32 and legacy.device.type == "cpu"
    assert isinstance(legacy, torch.nn.Module) and any(True for _ in legacy.parameters())
    tensor = legacy.image_to_tensor(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert tensor.shape == (3, 512, 512) and tensor.dtype == torch.float32
    assert tensor[0].min() == 1.0 and tensor[1].max() == -1.0
    embeds = legacy.initialize_prompts(["a red circle", ""])
    assert embeds.shape[:2] == (2, legacy.tokenizer.model_max_length)


def test_images_have_the_originals_size_whatever_the_models_default(legacy):
    side = 64 * legacy.pipeline.vae_scale_factor  # 64x64 latents: 512x512 on Stable Diffusion
    assert legacy.fabric.default_size != (side, side)  # the tiny model's own default differs
    (image,) = legacy.generate("a red circle", denoising_steps=2)
    assert image.size == (side, side)


def test_seed_none_follows_torchs_global_rng_and_is_kept(legacy, caplog):
    caplog.set_level(logging.INFO, logger="fabric.generator")
    torch.manual_seed(123)
    a = legacy.generate("a red circle", seed=None, denoising_steps=2)
    drawn = legacy.last_seed
    assert isinstance(drawn, int) and str(drawn) in caplog.text
    torch.manual_seed(123)
    b = legacy.generate("a red circle", seed=None, denoising_steps=2)
    assert legacy.last_seed == drawn and np.array_equal(_arrays(a), _arrays(b))
    # the drawn seed reproduces the call explicitly
    assert np.array_equal(_arrays(a), _arrays(legacy.generate("a red circle", seed=drawn, denoising_steps=2)))


def test_iterative_seeds_are_reproducible_with_torch_manual_seed_and_returned(legacy):
    it = IterativeFeedbackGenerator(legacy)
    torch.manual_seed(7)
    first, info = it.generate("a red circle", n_images=2, return_params=True, denoising_steps=2)
    assert info["seed"] == it.last_seed
    torch.manual_seed(7)
    again = IterativeFeedbackGenerator(legacy).generate("a red circle", n_images=2, denoising_steps=2)
    assert np.array_equal(_arrays(first), _arrays(again))
    liked, disliked = it.give_feedback(liked=first[:1], disliked=first[1:])
    assert len(liked) == len(disliked) == 1 and liked is not it.liked  # copies, as the original returns


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_weight": 0.8, "max_weight": 0.3}, "original FABRIC would use max_weight on the steps in"),
        ({"feedback_start": 0.7, "feedback_end": 0.2}, "original FABRIC would use min_weight on every step"),
        ({"max_weight": -0.5, "min_weight": -1.0}, "original FABRIC would multiply attention probabilities"),
    ],
)
def test_combinations_the_original_accepts_say_what_it_would_have_done(legacy, kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        legacy.generate("a red circle", denoising_steps=2, **kwargs)
