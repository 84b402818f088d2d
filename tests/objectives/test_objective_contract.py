"""One contract, every built-in objective (tiny random models, CPU)."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image

import objectives
from fabric.errors import ImageError, InvalidParameterError
from objectives.backbone import _SHARED

# name, options: every family, and the DINO variants of the image-similarity ones
CASES = [
    ("pickscore", {}),
    ("hps", {}),
    ("hpsv2", {}),
    ("hpsv21", {}),
    ("aesthetic", {}),
    ("aesthetic", {"head": "linear"}),
    ("clipscore", {}),
    ("target", {}),
    ("target", {"encoder": "dino"}),
    ("diversity", {}),
    ("diversity", {"encoder": "dino"}),
]
IDS = [name + "".join(f"-{v}" for v in options.values()) for name, options in CASES]
PROMPT = "a red circle on a blue background"


def test_cases_cover_every_builtin_objective():
    from objectives.registry import _BUILTIN_MODULES

    # the toy world's objectives have the same contract test in tests/toyworld/test_objectives.py
    real = {name for name, module in _BUILTIN_MODULES.items() if module != "objectives.toy"}
    assert {name for name, _ in CASES} == real


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_scores_are_finite_float32_cpu_vectors(tiny, colour_images, name, options):
    objective = tiny(name, **options)
    scores = objective.score(colour_images, PROMPT)
    assert scores.shape == (len(colour_images),)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all()
    assert objective.name == name and objective.direction in ("maximize", "minimize")
    assert objective.direction == ("minimize" if name == "diversity" else "maximize")


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_distinct_colours_get_distinct_scores(tiny, colour_images, name, options):
    scores = tiny(name, **options).score(colour_images, PROMPT)
    gaps = (scores[:, None] - scores[None, :]).abs() + torch.eye(len(scores)) * 1e9
    assert gaps.min() > 1e-4 * max(1.0, scores.abs().max().item())


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_batching_does_not_change_scores(tiny, colour_images, name, options):
    whole = tiny(name, batch_size=16, **options).score(colour_images, PROMPT)
    assert torch.allclose(tiny(name, batch_size=2, **options).score(colour_images, PROMPT), whole, atol=1e-4, rtol=1e-5)
    if name != "diversity":  # diversity compares the images of one call, so it cannot go one by one
        singles = torch.cat([tiny(name, **options).score([image], PROMPT) for image in colour_images])
        assert torch.allclose(singles, whole, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_tiny_construction_is_seeded_fast_and_leaves_the_global_rng_alone(tiny, colour_images, name, options):
    before = tiny(name, **options)  # also warms imports and the tokenizer
    first = before.score(colour_images, PROMPT)
    _SHARED.clear()  # forget shared backbones so the next load really builds a new one
    state = torch.random.get_rng_state()
    start = time.perf_counter()
    objective = tiny(name, **options)
    elapsed = time.perf_counter() - start
    assert model_of(objective) is not model_of(before)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert elapsed < 1.0
    assert torch.equal(objective.score(colour_images, PROMPT), first)


def model_of(objective):
    return getattr(objective, "backbone", None) or objective.encoder


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_prompt_handling(tiny, colour_images, name, options):
    objective = tiny(name, **options)
    n = len(colour_images)
    same = objective.score(colour_images, [PROMPT] * n)
    assert torch.equal(same, objective.score(colour_images, PROMPT))
    other = objective.score(colour_images, ["a photograph of a dog"] * n)
    assert torch.equal(same, other) != objective.uses_prompt
    with pytest.raises(InvalidParameterError, match="prompt"):
        objective.score(colour_images, [PROMPT] * (n - 1))


def test_per_image_prompts_score_each_image_with_its_own_prompt(tiny, colour_images):
    objective = tiny("pickscore")
    prompts = ["a red square", "a green field", "blue sky", "a yellow star", "snow"]
    mixed = objective.score(colour_images, prompts)
    for i, prompt in enumerate(prompts):
        assert torch.allclose(mixed[i], objective.score([colour_images[i]], prompt)[0], atol=1e-5)


def test_bad_image_inputs_raise_one_line_image_errors(tiny, colour_images):
    objective = tiny("clipscore")
    for bad in ([], colour_images[0], [colour_images[0], "not an image"], torch.zeros(2, 3, 8, 8)):
        with pytest.raises(ImageError) as info:
            objective.score(bad, PROMPT)
        assert "\n" not in str(info.value)


def test_images_of_any_mode_and_size_are_accepted(tiny):
    images = [
        Image.new("L", (17, 90), 40),
        Image.new("RGBA", (300, 20), (200, 10, 10, 128)),
        Image.new("RGB", (1, 1), (0, 0, 255)),
    ]
    assert torch.isfinite(tiny("pickscore").score(images, PROMPT)).all()


def test_dtype_and_device_are_explicit(tiny, colour_images):
    objective = objectives.load_objective("clipscore", weights="tiny", dtype="bfloat16")
    assert next(objective.backbone.model.parameters()).dtype == torch.bfloat16
    scores = objective.score(colour_images, PROMPT)
    assert scores.dtype == torch.float32  # scores are float32 on CPU whatever the model runs in
    reference = tiny("clipscore").score(colour_images, PROMPT)
    assert torch.allclose(scores, reference, atol=1.0)
    with pytest.raises(InvalidParameterError, match="dtype"):
        objectives.load_objective("clipscore", weights="tiny", dtype="int3")


def test_objectives_of_one_backbone_share_it(tiny):
    clipscore, aesthetic, hps, target = tiny("clipscore"), tiny("aesthetic"), tiny("hps"), tiny("target")
    assert clipscore.backbone is aesthetic.backbone is hps.backbone is target.encoder
    assert tiny("target", encoder="dino").encoder is not target.encoder
    assert objectives.load_objective("clipscore", weights="tiny", dtype="float16").backbone is not clipscore.backbone
