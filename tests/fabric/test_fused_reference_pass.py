"""fuse_reference_pass: new references ride as extra rows of the main U-Net call."""

import pytest
import torch

from fabric import FabricParams
from fabric.errors import InvalidParameterError
from fabric.fabric_generator import FabricGenerator, GenerationRequest
from fabric.reference import can_fuse
from fabric.schedule import step_weights

P = FabricParams(steps=4, max_weight=0.8, feedback_start=0.0, feedback_end=0.6)


def _pair(pipeline):
    """The same pipeline behind a separate-pass and a fused-pass generator (own token caches)."""
    return FabricGenerator(pipeline, fuse_reference_pass=False), FabricGenerator(pipeline, fuse_reference_pass=True)


def _count_unet_calls(pipeline):
    """Rows of every U-Net output (this hook runs before FABRIC's, which strips the reference rows)."""
    rows: list[int] = []
    handle = pipeline.unet.register_forward_hook(lambda m, args, out: rows.append(out[0].shape[0]))
    return rows, handle


@pytest.fixture(scope="module")
def tiny_xl():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return FabricGenerator.from_pretrained("tiny-xl").pipeline


@pytest.mark.parametrize("model", ["tiny", "tiny-xl"])
def test_fused_equals_the_separate_pass_with_one_unet_call_per_step(model, tiny_generator, tiny_xl, solid_images):
    pipeline = tiny_generator.pipeline if model == "tiny" else tiny_xl
    separate, fused = _pair(pipeline)
    kw = dict(
        liked=[solid_images["red"], solid_images["green"]],
        disliked=[solid_images["blue"], solid_images["yellow"]],
        params=P,
        n_images=2,
        seed=[3, 4],
        output_type="latent",
    )
    expected = separate.generate("a circle", **kw)
    rows, handle = _count_unet_calls(pipeline)
    try:
        got = fused.generate("a circle", **kw)
    finally:
        handle.remove()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-4)
    # one call per step: the 4 guided rows, plus the 4 references on active steps (the U-Net's
    # own output, before FABRIC hands the pipeline its 4 rows back)
    active = sum(step_weights(i, P.steps, P).pos > 0 for i in range(P.steps))
    assert rows == [8] * active + [4] * (P.steps - active)
    assert len(fused.state_cache) == 4 * active  # the fused rows' tokens were cached


def test_a_later_round_mixes_cached_and_new_references(tiny_generator, solid_images):
    separate, fused = _pair(tiny_generator.pipeline)
    first = dict(
        liked=[solid_images["red"]],
        disliked=[solid_images["blue"]],
        params=P,
        n_images=2,
        seed=[1, 2],
        output_type="latent",
    )
    second = dict(
        first,
        liked=[solid_images["red"], solid_images["green"]],
        disliked=[solid_images["blue"], solid_images["yellow"]],
    )
    for gen in (separate, fused):
        gen.generate("a square", **first)
    hits = fused.state_cache.hits
    expected = separate.generate("a square", **second)
    got = fused.generate("a square", **second)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-4)
    active = sum(step_weights(i, P.steps, P).pos > 0 for i in range(P.steps))
    assert fused.state_cache.hits - hits == 2 * active  # red and blue came from the cache


def test_fused_generate_many_keeps_each_prompt_to_its_own_references(tiny_generator, solid_images):
    separate, fused = _pair(tiny_generator.pipeline)
    requests = [
        GenerationRequest("a red circle", seeds=(1, 2), liked=(solid_images["red"],), disliked=(solid_images["blue"],)),
        GenerationRequest("a blue square", seeds=(3,)),
        GenerationRequest("a green star", seeds=(4, 5), liked=(solid_images["green"], solid_images["yellow"])),
    ]
    expected = separate.generate_many(requests, params=P, output_type="latent")
    got = fused.generate_many(requests, params=P, output_type="latent")
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize(
    "kwargs, fusable",
    [
        ({"encoder_hidden_states": torch.zeros(1)}, True),
        ({"encoder_hidden_states": torch.zeros(1), "timestep_cond": None, "cross_attention_kwargs": {}}, True),
        ({"encoder_hidden_states": torch.zeros(1), "cross_attention_kwargs": {"scale": 0.5}}, False),
        ({"encoder_hidden_states": torch.zeros(1), "timestep_cond": torch.zeros(1)}, False),
        ({"encoder_hidden_states": torch.zeros(1), "down_block_additional_residuals": [torch.zeros(1)]}, False),
        ({"encoder_hidden_states": None}, False),
    ],
)
def test_inputs_the_fused_pass_cannot_extend_fall_back_to_the_separate_pass(kwargs, fusable):
    assert can_fuse((torch.zeros(1), 1), kwargs, sdxl=False) is fusable


def test_sdxl_needs_its_added_conditions_to_fuse():
    base = {"encoder_hidden_states": torch.zeros(1)}
    assert can_fuse((torch.zeros(1), 1), {**base, "added_cond_kwargs": {"text_embeds": 0, "time_ids": 0}}, sdxl=True)
    assert not can_fuse(
        (torch.zeros(1), 1),
        {**base, "added_cond_kwargs": {"text_embeds": 0, "time_ids": 0, "image_embeds": 0}},
        sdxl=True,
    )
    assert not can_fuse((torch.zeros(1), 1), base, sdxl=True)


def test_fuse_reference_pass_must_be_a_boolean(tiny_generator):
    with pytest.raises(InvalidParameterError, match="fuse_reference_pass must be True or False"):
        FabricGenerator(tiny_generator.pipeline, fuse_reference_pass="yes")


def test_the_default_is_the_exact_path_with_one_reference_per_call(tiny_generator, solid_images):
    exact = FabricGenerator(tiny_generator.pipeline)
    assert exact.fuse_reference_pass is False  # fusing is an opt-in: equal only up to float rounding
    rows, handle = _count_unet_calls(tiny_generator.pipeline)
    try:
        exact.generate(
            "a circle", liked=[solid_images["red"], solid_images["green"]], params=P, n_images=1, seed=1,
            output_type="latent",
        )  # fmt: skip
    finally:
        handle.remove()
    active = sum(step_weights(i, P.steps, P).pos > 0 for i in range(P.steps))
    # each active step: one reference alone, the other alone, then the 2 guided rows
    assert rows == [1, 1, 2] * active + [2] * (P.steps - active)


def test_sdxl_fused_rows_get_the_empty_prompt_and_the_size_ids(tiny_xl, solid_images):
    """A non-square SDXL image: the reference rows' pooled embedding and (size, crop, target)
    ids are appended as the separate pass passes them, so the images match."""
    separate, fused = _pair(tiny_xl)
    kw = dict(
        liked=[solid_images["red"]],
        disliked=[solid_images["blue"]],
        params=P,
        n_images=1,
        seed=2,
        height=64,
        width=96,
        output_type="latent",
    )
    torch.testing.assert_close(
        fused.generate("a circle", **kw), separate.generate("a circle", **kw), rtol=1e-4, atol=2e-4
    )
