"""Part (a) of the toy benchmark (bench/toy.py): its exact-set reading on a chosen caption set."""

from __future__ import annotations


def test_the_exact_set_reading_takes_its_size_and_seed_and_is_the_training_checks_reading():
    from bench.toy import BenchConfig, prompt_following
    from fabric import FabricGenerator
    from toyworld.model import DEFAULT_WEIGHTS_DIR, build_toy_pipeline, load_toy_components
    from toyworld.train import generation_accuracy

    gen = FabricGenerator(build_toy_pipeline())
    cfg = BenchConfig(n_prompts=1, images_per_prompt=1, steps=2, exact_captions=4, exact_seed=4321)
    results = prompt_following(gen, cfg)
    reading = results["generated, 4 held-out captions, exact sets"]
    assert reading["n"] == 4 and reading["caption seed"] == 4321
    # the same captions, seeds and sampler as the training run's own check of a checkpoint
    expected = generation_accuracy(load_toy_components(DEFAULT_WEIGHTS_DIR), seed=4321, n=4)
    assert expected is not None
    assert {h: reading[h] for h in expected} == expected
    assert all(0.0 <= reading[h] <= 1.0 for h in ("colour", "shape", "size", "background", "count"))
