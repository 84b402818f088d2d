"""The plain-call cache: calls without feedback are generated once and returned as copies."""

import numpy as np
import pytest

from fabric import FabricParams
from fabric.errors import InvalidParameterError
from fabric.fabric_generator import FabricGenerator

P = FabricParams(steps=3, max_weight=0.8)


@pytest.fixture()
def gen(tiny_generator):
    """A generator with the cache on, sharing the session's tiny pipeline, and a U-Net call count."""
    g = FabricGenerator(tiny_generator.pipeline, plain_cache_size=3)
    calls = []
    handle = g.pipeline.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    g.unet_calls = calls
    yield g
    handle.remove()


def _arrays(images):
    return np.stack([np.asarray(img) for img in images])


def test_a_repeated_call_without_feedback_runs_no_unet_and_returns_the_same_images(gen, tiny_generator):
    first = gen.generate("a red circle", params=P, n_images=2, seed=[1, 2])
    n = len(gen.unet_calls)
    assert n == P.steps
    again = gen.generate("a red circle", params=P, n_images=2, seed=[1, 2])
    assert len(gen.unet_calls) == n
    assert np.array_equal(_arrays(first), _arrays(again))
    uncached = tiny_generator.generate("a red circle", params=P, n_images=2, seed=[1, 2])
    assert np.array_equal(_arrays(first), _arrays(uncached))
    assert (gen.plain_cache.hits, gen.plain_cache.misses) == (1, 1)


def test_returned_images_are_copies(gen):
    first = gen.generate("a star", params=P, n_images=1, seed=3)
    first[0].paste((0, 0, 0), (0, 0, 8, 8))
    again = gen.generate("a star", params=P, n_images=1, seed=3)
    assert not np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    latents = gen.generate("a star", params=P, n_images=1, seed=3, output_type="latent")
    latents.zero_()
    assert gen.generate("a star", params=P, n_images=1, seed=3, output_type="latent").abs().sum() > 0


@pytest.mark.parametrize(
    "change",
    [
        dict(seed=[1, 3]),
        dict(params=P.replace(guidance_scale=3.0)),
        dict(params=P.replace(steps=2)),
        dict(negative_prompt="blurry"),
        dict(prompt="a blue circle"),
    ],
)
def test_anything_the_output_depends_on_is_part_of_the_key(gen, change):
    base = dict(prompt="a red circle", params=P, n_images=2, seed=[1, 2])
    gen.generate(**base)
    gen.generate(**{**base, **change})
    assert gen.plain_cache.hits == 0 and gen.plain_cache.misses == 2


def test_dropout_that_drops_nothing_shares_the_entry_of_no_dropout(gen):
    gen.generate("a red circle", params=P, n_images=2, seed=[1, 2])
    gen.generate("a red circle", params=P.replace(prompt_dropout=1e-12), n_images=2, seed=[1, 2])
    assert gen.plain_cache.hits == 1
    gen.generate("a red circle on a blue square", params=P.replace(prompt_dropout=0.9), n_images=2, seed=[1, 2])
    assert gen.plain_cache.misses == 2


def test_calls_with_feedback_bypass_the_cache(gen, solid_images):
    kwargs = dict(liked=[solid_images["red"]], params=P, n_images=1, seed=4)
    gen.generate("a circle", **kwargs)
    gen.generate("a circle", **kwargs)
    assert len(gen.plain_cache) == 0 and gen.plain_cache.hits == 0


def test_the_cache_is_bounded_and_clearable(gen):
    for i in range(5):
        gen.generate("a circle", params=P, n_images=1, seed=i, output_type="latent")
    assert len(gen.plain_cache) == 3
    gen.generate("a circle", params=P, n_images=1, seed=4, output_type="latent")
    assert gen.plain_cache.hits == 1
    gen.generate("a circle", params=P, n_images=1, seed=0, output_type="latent")  # evicted: oldest
    assert gen.plain_cache.misses == 6
    gen.clear_caches()
    assert len(gen.plain_cache) == 0


def test_off_by_default_and_validated(tiny_generator):
    assert tiny_generator.plain_cache.max_entries == 0
    with pytest.raises(InvalidParameterError, match="plain_cache_size"):
        FabricGenerator(tiny_generator.pipeline, plain_cache_size=-1)


def test_a_study_trial_reuses_the_baselines_first_round(tiny_generator):
    from objectives import parse_objective
    from optimize.protocol import Protocol, TrialEvaluator
    from optimize.space import SearchSpace

    gen = FabricGenerator(tiny_generator.pipeline, plain_cache_size=4)
    objective = parse_objective("pickscore", {"pickscore": "tiny"})
    space = SearchSpace.default(base=FabricParams.paper().replace(steps=2))
    evaluator = TrialEvaluator(gen, objective, Protocol(("a red circle",), rounds=2, n_images=2), space)
    evaluator.baseline()
    assert gen.plain_cache.misses == 2 and gen.plain_cache.hits == 0  # two baseline rounds
    result = evaluator.evaluate(space.base.replace(max_weight=0.5))
    assert gen.plain_cache.hits == 1  # the trial's first round is the baseline's
    # the shared round scores exactly as a fresh one would
    fresh = TrialEvaluator(
        FabricGenerator(tiny_generator.pipeline), objective, Protocol(("a red circle",), rounds=2, n_images=2), space
    )
    assert fresh.evaluate(space.base.replace(max_weight=0.5)).values == result.values
