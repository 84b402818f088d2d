from __future__ import annotations

import numpy as np
import pytest
import torch

from fabric.errors import WeightsNotFoundError
from toyworld.model import (
    build_toy_components,
    build_toy_pipeline,
    save_toy_weights,
    scheduler_config,
    toy_weights_available,
)


def _generate(pipe, prompt: str, seed: int = 0, steps: int = 4, n: int = 1):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=6.0, generator=g, num_images_per_prompt=n).images


def test_untrained_pipeline_is_a_stable_diffusion_pipeline_with_fabric_seams():
    from diffusers import StableDiffusionPipeline

    pipe = build_toy_pipeline(trained=False)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.safety_checker is None
    assert pipe.scheduler.alphas_cumprod.shape == (1000,)
    self_attention = [n for n in pipe.unet.attn_processors if n.endswith("attn1.processor")]
    # FABRIC records every level's attn1: both down levels, the mid block and both up levels
    assert {n.split(".")[0] for n in self_attention} == {"down_blocks", "mid_block", "up_blocks"}
    assert len(self_attention) == 7
    image = _generate(pipe, "a red star", steps=2)[0]
    assert image.size == (64, 64)


def test_packaged_checkpoint_loads_offline_and_generates(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert toy_weights_available()
    pipe = build_toy_pipeline()
    assert pipe.vae.config.scaling_factor != 1.0  # measured during training
    a = _generate(pipe, "a large red circle on a black background", seed=0)
    b = _generate(pipe, "a large red circle on a black background", seed=0)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    pixels = np.asarray(a[0]).astype(float)
    assert pixels.std() > 10  # a picture, not a flat or saturated field


def test_save_and_load_roundtrip(tmp_path):
    modules = build_toy_components(seed=1)
    save_toy_weights(modules, tmp_path, dtype=torch.float32)
    pipe = build_toy_pipeline(tmp_path)
    for name in ("unet", "vae", "text_encoder"):
        expected = modules[name].state_dict()
        for key, value in getattr(pipe, name).state_dict().items():
            assert torch.equal(value, expected[key]), (name, key)
    # the weights travel with the noise schedule they were trained under
    assert pipe.scheduler.config.prediction_type == scheduler_config()["prediction_type"] == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"


def test_a_checkpoint_without_a_schedule_is_the_first_toy_models(tmp_path):
    save_toy_weights(build_toy_components(seed=1), tmp_path)
    (tmp_path / "scheduler_config.json").unlink()
    config = build_toy_pipeline(tmp_path).scheduler.config
    assert (config.beta_schedule, config.prediction_type) == ("scaled_linear", "epsilon")


def test_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="toyworld.train"):
        build_toy_pipeline(tmp_path / "nothing")


def test_components_are_seeded_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a, b = build_toy_components(seed=5), build_toy_components(seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb = a["unet"].conv_in.weight, b["unet"].conv_in.weight
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, build_toy_components(seed=6)["unet"].conv_in.weight)


@pytest.mark.parametrize("colour", ["red", "blue"])
def test_packaged_model_draws_the_colour_it_is_asked_for(colour):
    from fabric.fabric_generator import FabricGenerator
    from fabric.params import FabricParams
    from toyworld.rewards import HEADS, load_attribute_classifier

    gen = FabricGenerator(build_toy_pipeline())
    images = gen.generate(f"a {colour} shape", params=FabricParams(steps=10), n_images=8, seed=list(range(8)))
    probs = load_attribute_classifier().probabilities(images)["colour"][:, HEADS["colour"][0].index(colour)]
    assert (probs > 0.5).sum() >= 6  # chance: 1 in 8 colours
