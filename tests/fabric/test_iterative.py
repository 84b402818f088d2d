import numpy as np
import torch
from PIL import Image

from fabric import FabricParams


def test_original_fabric_readme_snippet_runs_unchanged():
    # The usage snippet of the original FABRIC README, model name -> "tiny", .to("cuda") -> .to("cpu"),
    # torch.float16 -> torch.float32: half precision is the CUDA setting (test_low_precision.py, gpu); on
    # a CPU without fp16 arithmetic (AMD EPYC) its 64x64-latent attention ran past the 10-minute timeout.
    from fabric.generator import AttentionBasedGenerator
    from fabric.iterative import IterativeFeedbackGenerator

    def get_feedback(images) -> tuple[list[Image.Image], list[Image.Image]]:
        return images[:1], images[-1:]

    base_generator = AttentionBasedGenerator("tiny", torch_dtype=torch.float32)
    base_generator.to("cpu")

    generator = IterativeFeedbackGenerator(base_generator)

    prompt = "photo of a dog running on grassland, masterpiece, best quality, fine details"
    negative_prompt = "lowres, bad anatomy, bad hands, cropped, worst quality"

    for _ in range(4):
        images: list[Image.Image] = generator.generate(prompt, negative_prompt=negative_prompt, denoising_steps=3)
        liked, disliked = get_feedback(images)
        generator.give_feedback(liked, disliked)
    assert len(images) == 4 and all(isinstance(im, Image.Image) for im in images)
    assert len(generator.liked) == 4 and len(generator.disliked) == 4 and generator.round == 4
    generator.reset()
    assert generator.liked == [] and generator.round == 0


def test_iterative_rounds_are_reproducible_and_feedback_accumulates(tiny_generator):
    from fabric.iterative import FeedbackSession, IterativeFeedbackGenerator

    it = IterativeFeedbackGenerator(tiny_generator)
    images, info = it.generate(
        "a red circle", seed=3, n_images=2, prompt_dropout=0.5, return_params=True, params=FabricParams(steps=3)
    )
    assert info["seed"] == 3 and len(info["prompts"]) == 2 and info["round"] == 0
    again = IterativeFeedbackGenerator(tiny_generator).generate(
        "a red circle", seed=3, n_images=2, prompt_dropout=0.5, params=FabricParams(steps=3)
    )
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))

    session = FeedbackSession(tiny_generator, "a red circle", params=FabricParams(steps=3, max_weight=0.6))
    first = session.generate(seed=[0, 1])
    session.give_feedback(liked=first[:1], disliked=first[1:])
    second = session.generate(seed=[0, 1])
    assert session.round == 2 and len(session.liked) == 1
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second))
    session.reset()
    assert session.liked == [] and session.round == 0
