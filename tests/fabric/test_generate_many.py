"""generate_many: several prompts, each with its own feedback, share every U-Net call."""

import numpy as np
import pytest
import torch

from fabric import FabricParams
from fabric.errors import InvalidParameterError
from fabric.fabric_generator import FabricGenerator, GenerationRequest
from fabric.schedule import step_weights

P = FabricParams(steps=4, max_weight=0.8, feedback_start=0.0, feedback_end=0.5)


def _requests(solid):
    return [
        GenerationRequest("a red circle", seeds=(1, 2), liked=(solid["red"],), disliked=(solid["blue"],)),
        GenerationRequest("a blue square", seeds=(3,), negative_prompt="blurry"),  # no feedback
        GenerationRequest("a green star", seeds=(4, 5, 6), liked=(solid["green"], solid["yellow"])),
    ]


def _alone(gen, r, params=P):
    return gen.generate(
        r.prompt,
        r.negative_prompt,
        r.liked,
        r.disliked,
        params=params,
        n_images=len(r.seeds),
        seed=list(r.seeds),
        output_type="latent",
    )


@pytest.fixture()
def unet_batches(tiny_generator):
    batches = []
    handle = tiny_generator.pipeline.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    yield batches
    handle.remove()


def test_each_request_gets_the_images_it_gets_alone(tiny_generator, solid_images):
    requests = _requests(solid_images)
    together = tiny_generator.generate_many(requests, params=P, output_type="latent")
    assert [t.shape[0] for t in together] == [2, 1, 3]
    for r, got in zip(requests, together):
        torch.testing.assert_close(got, _alone(tiny_generator, r), rtol=1e-4, atol=1e-4)
    # and the feedback mattered: the first request differs from its no-feedback images
    plain = _alone(tiny_generator, GenerationRequest(requests[0].prompt, requests[0].seeds))
    assert (together[0] - plain).abs().max() > 1e-3


def test_one_main_pass_per_step_for_all_prompts_and_each_reference_alone(tiny_generator, solid_images, unet_batches):
    separate = FabricGenerator(tiny_generator.pipeline, fuse_reference_pass=False)
    separate.generate_many(_requests(solid_images), params=P, output_type="latent")
    main = [b for b in unet_batches if b == 12]  # 6 images, guided
    reference = [b for b in unet_batches if b != 12]
    assert len(main) == P.steps
    # every active step records each of the 4 distinct references of all groups once, alone
    active = [i for i in range(P.steps) if step_weights(i, P.steps, P).pos > 0]
    assert 0 < len(active) < P.steps
    assert reference == [1] * 4 * len(active)


def test_the_plain_cache_serves_whole_calls_only(tiny_generator, solid_images):
    gen = FabricGenerator(tiny_generator.pipeline, plain_cache_size=4)
    plain = [GenerationRequest("a red circle", seeds=(1, 2)), GenerationRequest("a blue square", seeds=(3,))]
    first = gen.generate_many(plain, params=P)
    assert (gen.plain_cache.hits, gen.plain_cache.misses) == (0, 1)
    batches = []
    handle = gen.pipeline.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        again = gen.generate_many(plain, params=P)  # the same call: served whole, nothing runs
        assert gen.plain_cache.hits == 1 and batches == []
        # a single call is never served what a batch made: generate() stays exact
        single = gen.generate("a red circle", params=P, n_images=2, seed=[1, 2])
        assert gen.plain_cache.hits == 1 and batches == [4] * P.steps
        fresh = FabricGenerator(tiny_generator.pipeline).generate("a red circle", params=P, n_images=2, seed=[1, 2])
        assert np.array_equal(np.stack([np.asarray(i) for i in single]), np.stack([np.asarray(i) for i in fresh]))
        # a call with feedback in it runs whole: its plain request shares the batch
        batches.clear()
        gen.generate_many([plain[1], _requests(solid_images)[0]], params=P)
        assert max(batches) == 6  # 1 + 2 images, guided
    finally:
        handle.remove()
    for a, b in zip(again, first):
        assert np.array_equal(np.stack([np.asarray(i) for i in a]), np.stack([np.asarray(i) for i in b]))


def test_out_of_memory_splits_the_batch_with_identical_images(tiny_generator, solid_images):
    requests = _requests(solid_images)
    expected = tiny_generator.generate_many(requests, params=P, output_type="latent")
    calls = []

    def oom_on_big_batches(module, args):
        calls.append(args[0].shape[0])
        if args[0].shape[0] > 6:  # the guided batch of all 6 images is 12 rows
            raise torch.OutOfMemoryError("simulated CUDA out of memory")

    handle = tiny_generator.pipeline.unet.register_forward_pre_hook(oom_on_big_batches)
    try:
        got = tiny_generator.generate_many(requests, params=P, output_type="latent")
    finally:
        handle.remove()
    assert 12 in calls and 6 in calls  # failed whole, then halves of 3 images (the middle group cut in two)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "build",
    [
        lambda: GenerationRequest("x", seeds=()),
        lambda: GenerationRequest("x", seeds=(1, True)),
        lambda: GenerationRequest("x", seeds=(1.5,)),
        lambda: GenerationRequest(None, seeds=(1,)),
    ],
)
def test_bad_requests_raise_clear_errors(build):
    with pytest.raises(InvalidParameterError):
        build()


def test_generate_many_checks_its_arguments(tiny_generator):
    with pytest.raises(InvalidParameterError, match="non-empty"):
        tiny_generator.generate_many([])
    with pytest.raises(InvalidParameterError, match="GenerationRequest"):
        tiny_generator.generate_many(["a red circle"])
    with pytest.raises(InvalidParameterError, match="multiples"):
        tiny_generator.generate_many([GenerationRequest("x", seeds=1)], height=60)


def test_a_single_seed_and_a_single_image_are_wrapped():
    r = GenerationRequest("x", seeds=3, liked="liked.png")
    assert r.seeds == (3,) and r.liked == ("liked.png",)
