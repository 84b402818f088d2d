import logging

import numpy as np
import pytest
import torch

from fabric import FabricParams
from fabric.errors import ImageError, InvalidParameterError

P = FabricParams(steps=6, max_weight=0.8)


def _arrays(images):
    return np.stack([np.asarray(img) for img in images])


def _plain(gen, prompt, n, seed, params, negative=""):
    out = gen.pipeline(
        prompt=prompt,
        negative_prompt=negative,
        num_images_per_prompt=n,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        generator=torch.Generator().manual_seed(seed),
    )
    return out.images


def test_no_feedback_equals_the_plain_pipeline_bit_for_bit(tiny_generator):
    ours = tiny_generator.generate("a red circle", negative_prompt="blurry", params=P, n_images=3, seed=7)
    plain = _plain(tiny_generator, "a red circle", 3, 7, P, negative="blurry")
    assert np.array_equal(_arrays(ours), _arrays(plain))


def test_all_weights_zero_equals_the_plain_pipeline(tiny_generator, solid_images):
    zero = P.replace(max_weight=0.0, min_weight=0.0)
    ours = tiny_generator.generate(
        "a red circle", liked=[solid_images["red"]], disliked=[solid_images["blue"]], params=zero, n_images=2, seed=3
    )
    assert np.array_equal(_arrays(ours), _arrays(_plain(tiny_generator, "a red circle", 2, 3, zero)))


def test_feedback_changes_the_output_and_is_deterministic(tiny_generator, solid_images):
    kwargs = dict(liked=[solid_images["red"]], disliked=[solid_images["blue"]], params=P, n_images=2, seed=5)
    a = tiny_generator.generate("a circle", **kwargs)
    b = tiny_generator.generate("a circle", **kwargs)
    plain = tiny_generator.generate("a circle", params=P, n_images=2, seed=5)
    assert np.array_equal(_arrays(a), _arrays(b))
    assert not np.array_equal(_arrays(a), _arrays(plain))


def test_per_image_seeds_reproduce_single_image_calls(tiny_generator, solid_images):
    kw = dict(liked=[solid_images["green"]], params=P)
    batch = tiny_generator.generate("a square", n_images=2, seed=[11, 12], **kw)
    single = tiny_generator.generate("a square", n_images=1, seed=[12], **kw)
    np.testing.assert_allclose(_arrays(batch[1:]).astype(float), _arrays(single).astype(float), atol=2)


def test_reference_truncation_keeps_the_most_recent(tiny_generator, solid_images):
    p = P.replace(max_references=1)
    kw = dict(params=p, n_images=1, seed=2, output_type="latent")
    both = tiny_generator.generate("x", liked=[solid_images["red"], solid_images["green"]], **kw)
    recent = tiny_generator.generate("x", liked=[solid_images["green"]], **kw)
    oldest = tiny_generator.generate("x", liked=[solid_images["red"]], **kw)
    assert torch.equal(both, recent)
    assert not torch.equal(both, oldest)


def test_negative_feedback_needs_the_unconditional_half(tiny_generator, solid_images):
    # without classifier-free guidance there is no unconditional half: disliked images do nothing
    p = P.replace(guidance_scale=1.0)
    with_neg = tiny_generator.generate(
        "x", disliked=[solid_images["blue"]], params=p, n_images=2, seed=1, output_type="latent"
    )
    plain = tiny_generator.generate("x", params=p, n_images=2, seed=1, output_type="latent")
    assert torch.equal(with_neg, plain)


def _count_unet_batches(gen):
    """Rows of every U-Net call as the U-Net runs it (fused reference rows included)."""
    sizes = []
    handle = gen.pipeline.unet.register_forward_hook(lambda m, args, out: sizes.append(out[0].shape[0]))
    return sizes, handle


@pytest.mark.parametrize("fuse", [False, True])
def test_reference_pass_runs_only_on_steps_with_weight(tiny_generator, solid_images, fuse):
    from fabric.fabric_generator import FabricGenerator

    gen = FabricGenerator(tiny_generator.pipeline, fuse_reference_pass=fuse)
    sizes, handle = _count_unet_batches(gen)
    try:
        # 10 steps, window [round(10 * .5), round(10 * .7)] = steps 5..7, min weight 0 elsewhere
        p = FabricParams(steps=10, feedback_start=0.5, feedback_end=0.7, max_weight=0.5, min_weight=0.0)
        gen.generate("x", liked=[solid_images["red"]], disliked=[solid_images["blue"]], params=p, n_images=3, seed=0)
    finally:
        handle.remove()
    if fuse:  # 1 liked + 1 disliked ride along with the 6 guided rows on the 3 active steps
        assert sizes == [6] * 5 + [8] * 3 + [6] * 2
    else:  # the liked and the disliked reference, each alone, before each active step's main pass
        assert sizes == [6] * 5 + [1, 1, 6] * 3 + [6] * 2


@pytest.mark.parametrize("fuse", [False, True])
def test_references_recorded_in_an_earlier_round_are_reused(tiny_generator, solid_images, fuse):
    from fabric.fabric_generator import FabricGenerator

    gen = FabricGenerator(tiny_generator.pipeline, fuse_reference_pass=fuse)
    p = FabricParams(steps=4, max_weight=0.5, feedback_end=1.0)
    sizes, handle = _count_unet_batches(gen)
    try:
        gen.generate("x", liked=[solid_images["red"]], params=p, n_images=2, seed=0)
        first = list(sizes)
        gen.generate("x", liked=[solid_images["red"], solid_images["yellow"]], params=p, n_images=2, seed=1)
        second = sizes[len(first) :]
    finally:
        handle.remove()
    # the red reference once per step, then only the new (yellow) one: red comes from the cache
    assert first == ([5] * 4 if fuse else [1, 4] * 4)
    assert second == ([5] * 4 if fuse else [1, 4] * 4)
    assert gen.state_cache.hits == 4


def test_cached_and_uncached_references_give_the_same_images(tiny_generator, solid_images):
    from fabric.fabric_generator import FabricGenerator

    uncached = FabricGenerator(tiny_generator.pipeline, cache_bytes=0)
    kw = dict(
        liked=[solid_images["red"]],
        disliked=[solid_images["green"]],
        params=P,
        n_images=2,
        seed=9,
        output_type="latent",
    )
    tiny_generator.generate("x", **kw)  # fills the cache
    # equal up to float rounding: cached tokens may come from a reference batch of another size
    torch.testing.assert_close(tiny_generator.generate("x", **kw), uncached.generate("x", **kw), rtol=1e-4, atol=1e-4)


def test_processors_are_restored_after_an_error(tiny_generator, solid_images):
    unet = tiny_generator.pipeline.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}

    def boom(step, total):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        tiny_generator.generate("x", liked=[solid_images["red"]], params=P, n_images=1, progress=boom)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert not unet._forward_pre_hooks


def test_prompt_dropout_is_seeded(tiny_generator):
    from fabric.fabric_generator import drop_words

    assert drop_words("a b c d e f g h", 0.5, 1) == drop_words("a b c d e f g h", 0.5, 1)
    assert drop_words("a b c", 0.0, 1) == "a b c"
    p = P.replace(prompt_dropout=0.5)
    a = tiny_generator.generate(
        "a red circle on a blue square", params=p, n_images=2, seed=[1, 2], output_type="latent"
    )
    b = tiny_generator.generate(
        "a red circle on a blue square", params=p, n_images=2, seed=[1, 2], output_type="latent"
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(liked=["/does/not/exist.png"]), ImageError),
        (dict(n_images=0), InvalidParameterError),
        (dict(seed=[1, 2, 3]), InvalidParameterError),
        (dict(height=60), InvalidParameterError),
        (dict(params={"max_weight": 1}), InvalidParameterError),
    ],
)
def test_bad_arguments_raise_clear_errors(tiny_generator, kwargs, error):
    with pytest.raises(error):
        tiny_generator.generate("x", **{"n_images": 2, **kwargs})


def test_unknown_model_is_a_load_error():
    from fabric.errors import ModelLoadError
    from fabric.models import load_pipeline

    with pytest.raises(ModelLoadError, match="unknown model"):
        load_pipeline("./no/such/model")
    with pytest.raises(ModelLoadError, match="not found"):
        load_pipeline("missing.safetensors")


def test_out_of_memory_first_frees_the_token_cache_and_retries_the_whole_batch(tiny_generator, solid_images, caplog):
    from fabric.fabric_generator import FabricGenerator

    red, blue = solid_images["red"], solid_images["blue"]
    kw = dict(
        liked=[red], disliked=[blue], params=P, n_images=2, seed=7, output_type="latent"
    )  # one seed: no split possible
    expected = FabricGenerator(tiny_generator.pipeline, cache_bytes=0).generate("x", **kw)
    gen = FabricGenerator(tiny_generator.pipeline)
    gen.generate("x", liked=[red], params=P, n_images=1, seed=0, output_type="latent")  # fills the cache
    cached = gen.state_cache.nbytes
    assert cached > 0
    raised = []

    def oom_while_tokens_are_cached(module, args):
        if not raised and gen.state_cache.nbytes:
            raised.append(gen.state_cache.nbytes)
            raise torch.OutOfMemoryError("simulated CUDA out of memory")

    handle = tiny_generator.pipeline.unet.register_forward_pre_hook(oom_while_tokens_are_cached)
    try:
        with caplog.at_level(logging.WARNING, logger="fabric.fabric_generator"):
            got = gen.generate("x", **kw)
    finally:
        handle.remove()
    assert raised == [cached]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert any("without the" in r.getMessage() and "cached reference tokens" in r.getMessage() for r in caplog.records)


def test_out_of_memory_retries_in_halves_with_identical_images(tiny_generator, solid_images):
    gen = tiny_generator
    kw = dict(liked=[solid_images["red"]], params=P, n_images=4, seed=[1, 2, 3, 4], output_type="latent")
    expected = gen.generate("x", **kw)
    calls = []

    def oom_on_big_batches(module, args):
        calls.append(args[0].shape[0])
        if args[0].shape[0] > 4:  # the guided batch of 4 images is 8 rows
            raise torch.OutOfMemoryError("simulated CUDA out of memory")

    handle = gen.pipeline.unet.register_forward_pre_hook(oom_on_big_batches)
    try:
        got = gen.generate("x", **kw)
        with pytest.raises(torch.OutOfMemoryError):  # one seed for the batch cannot be split exactly
            gen.generate("x", liked=[solid_images["red"]], params=P, n_images=4, seed=0)
    finally:
        handle.remove()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert max(calls) > 4 and 4 in calls
