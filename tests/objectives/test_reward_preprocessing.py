"""Each reward model sees images the way its reference implementation does (DESIGN section 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fabric.errors import InvalidParameterError
from objectives.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_MEAN,
    OPENAI_STD,
    ImagePreprocess,
    dino,
    hps_v2,
    openai_clip,
    pickscore,
)

# landscape, portrait, and odd sizes whose crop margins are odd (where rounding conventions differ)
SIZES = ((320, 200), (200, 320), (304, 203), (203, 301))


def unnormalise(x: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> np.ndarray:
    """``[3, S, S]`` normalised -> ``[S, S, 3]`` uint8-scale floats."""
    return ((x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255).permute(1, 2, 0).numpy()


def test_mean_and_std_are_the_published_constants():
    colour = (200, 100, 50)
    x = openai_clip(32)([Image.new("RGB", (40, 40), colour)])[0]
    expected = (torch.tensor(colour) / 255 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert torch.allclose(x[:, 5, 5], expected, atol=1e-6)
    assert OPENAI_MEAN == (0.48145466, 0.4578275, 0.40821073) and OPENAI_STD == (0.26862954, 0.26130258, 0.27577711)
    y = dino(32)([Image.new("RGB", (40, 40), colour)])[0]
    assert torch.allclose(
        y[:, 5, 5], (torch.tensor(colour) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD), atol=1e-6
    )


def test_shortest_edge_resize_then_centre_crop_drops_the_edges(scene):
    recipe = openai_clip()
    assert recipe.resized_size(320, 200) == (358, 224)  # short edge exact, long edge truncated
    out = unnormalise(recipe([scene])[0])
    assert out.shape == (224, 224, 3)
    red = (out[..., 0] > 200) & (out[..., 1] < 60)
    green = (out[..., 1] > 200) & (out[..., 0] < 60)
    assert not red.any() and not green.any()  # the side bands (40 px of 320) are cropped away
    # no padding: no black rows, and the disc stays round (aspect ratio kept)
    assert out.max(axis=2).min() > 20  # not a single black pixel
    disc = (out[..., 0] > 200) & (out[..., 1] > 200) & (out[..., 2] < 80)
    rows, cols = np.nonzero(disc)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 2
    # bicubic, not nearest: the disc's rim has intermediate values
    assert ((out[..., 2] > 90) & (out[..., 2] < 170)).any()


def test_longest_edge_resize_then_zero_pad_keeps_the_whole_image(scene):
    recipe = hps_v2()
    assert recipe.resized_size(320, 200) == (224, 140)
    x = recipe([scene])[0]
    out = unnormalise(x)
    # 140 rows of image, 42 black rows above and below: black before normalisation, i.e. -mean/std
    black = (-torch.tensor(OPENAI_MEAN) / torch.tensor(OPENAI_STD)).view(3, 1, 1)
    assert torch.allclose(x[:, :42], black.expand(3, 42, 224), atol=1e-6)
    assert torch.allclose(x[:, 182:], black.expand(3, 42, 224), atol=1e-6)
    assert out[42:182].max(axis=2).min() > 20  # no black inside the image
    # both side bands survive: nothing is cropped
    assert (out[100, :20, 0] > 200).all() and (out[100, :20, 1] < 60).all()
    assert (out[100, -20:, 1] > 200).all() and (out[100, -20:, 0] < 60).all()


@pytest.mark.parametrize("size", SIZES)
def test_openai_and_hps_recipes_equal_open_clip_transforms(draw, size):
    import open_clip

    image = draw(*size)
    reference = open_clip.image_transform(224, is_train=False)  # OpenAI CLIP's eval transform
    assert torch.equal(openai_clip()([image])[0], reference(image))
    letterbox = open_clip.image_transform(224, is_train=False, resize_mode="longest", fill_color=0)
    assert torch.equal(hps_v2()([image])[0], letterbox(image))


@pytest.mark.parametrize("size", SIZES)
def test_pickscore_recipe_equals_transformers_clip_processor(draw, size):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = draw(*size)
    reference = CLIPImageProcessorPil()(images=image, return_tensors="pt").pixel_values[0]
    assert torch.allclose(pickscore()([image])[0], reference, atol=1e-5)


def test_crop_rounding_differs_only_on_odd_margins(draw):
    odd, even = draw(304, 203), draw(320, 200)  # resized widths 335 and 358: margins 111 and 134
    assert pickscore()._offset(335) == -55 and openai_clip()._offset(335) == -56  # floor vs round(55.5)
    assert not torch.equal(pickscore()([odd]), openai_clip()([odd]))
    assert torch.equal(pickscore()([even]), openai_clip()([even]))


@pytest.mark.parametrize("size", SIZES)
def test_dino_recipe_equals_torchvision_reference(draw, size):
    from torchvision import transforms

    image = draw(*size)
    reference = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
    assert torch.equal(dino()([image])[0], reference(image))


def test_recipes_scale_to_tiny_sizes_with_the_same_operations(scene):
    small = dino().with_size(32)
    assert (small.size, small.resize_to, small.mean) == (32, 37, IMAGENET_MEAN)
    letterbox = hps_v2().with_size(32)([scene])[0]  # 320x200 -> 32x20, 6 black rows above and below
    black = (-torch.tensor(OPENAI_MEAN) / torch.tensor(OPENAI_STD)).view(3, 1, 1)
    assert torch.allclose(letterbox[:, :6], black.expand(3, 6, 32), atol=1e-6)
    assert torch.allclose(letterbox[:, 26:], black.expand(3, 6, 32), atol=1e-6)
    assert not torch.allclose(letterbox[:, 6:7], black.expand(3, 1, 32), atol=1e-2)


def test_rgba_and_greyscale_inputs_become_rgb():
    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 0))
    grey = Image.new("L", (40, 30), 128)
    x = openai_clip(16)([rgba, grey])
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [dict(size=0), dict(resize="middle"), dict(interpolation="nearest"), dict(std=(1.0, 0.0, 1.0)), dict(fill=300)],
)
def test_invalid_recipes_are_rejected(kwargs):
    with pytest.raises(InvalidParameterError):
        ImagePreprocess(**kwargs)


@pytest.mark.parametrize(
    ("name", "recipe"),
    [
        ("pickscore", pickscore),
        ("hps", openai_clip),
        ("clipscore", openai_clip),
        ("aesthetic", openai_clip),
        ("hpsv2", hps_v2),
    ],
)
def test_each_objective_uses_its_reference_recipe(tiny, name, recipe):
    objective = tiny(name)
    used = getattr(objective, "preprocess", None) or objective.backbone.preprocess
    assert used == recipe(32)  # tiny models: 32 px, same operations


def test_image_similarity_encoders_use_their_recipes(tiny):
    assert tiny("target").encoder.preprocess == openai_clip(32)
    assert tiny("target", encoder="dino").encoder.preprocess == dino(32)


def test_real_architectures_run_at_their_published_sizes():
    from objectives.clip import clip_config

    assert clip_config("vit-l-14").vision_config.image_size == 224
    assert clip_config("vit-l-14-336").vision_config.image_size == 336
    assert clip_config("vit-h-14").vision_config.image_size == 224
