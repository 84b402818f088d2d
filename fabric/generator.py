"""The original FABRIC API, at its original module path: ``from fabric.generator import
AttentionBasedGenerator`` (sd-fabric/fabric) works here, on :class:`~fabric.fabric_generator.FabricGenerator`.

:mod:`fabric.iterative` holds the original ``IterativeFeedbackGenerator`` beside it. The
constructor and ``generate`` take the original's arguments, in the original's order, with its
defaults (a test compares the signatures with sd-fabric/fabric's), and the class exposes what
scripts written for it touch: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``,
``pipeline``, ``dtype``, ``device``, ``to``, ``image_to_tensor`` and ``initialize_prompts``.

Where the images differ from the original's at the same seed, on purpose:

* references are encoded to the VAE posterior *mean*, not a sample, so a reference means the
  same in every round;
* reference noise is seeded by the reference (its pixels) and the step, not drawn from the
  global RNG, so a later round never depends on what ran before;
* parameter combinations the original computes but that make no sense as a schedule
  (``min_weight > max_weight``, ``feedback_start > feedback_end``, negative weights) are refused
  with an error that says what the original would have done.

New code uses :class:`fabric.FabricGenerator` and :class:`fabric.FabricParams` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from fabric.errors import InvalidParameterError
from fabric.fabric_generator import FabricGenerator
from fabric.images import ImageLike, load_image
from fabric.params import FabricParams

__all__ = ["AttentionBasedGenerator"]

logger = logging.getLogger(__name__)

#: the original's default checkpoints per ``stable_diffusion_version``
DEFAULT_MODELS = {"1.5": "jcplus/stable-diffusion-v1-5", "2.1": "stabilityai/stable-diffusion-2-1"}
#: the original always samples 64x64 latents (512x512 images for Stable Diffusion)
LATENT_SIZE = 64


class AttentionBasedGenerator(torch.nn.Module):
    """The original FABRIC generator (see the module docstring).

    Args:
        model_name: a hub id or a diffusers folder (or a built-in name such as ``"tiny"``,
            which works offline); default: the original's checkpoint for ``stable_diffusion_version``.
        model_ckpt: a single ``.safetensors``/``.ckpt`` checkpoint; wins over ``model_name``.
        stable_diffusion_version: ``"1.5"`` or ``"2.1"``, for the default ``model_name``.
        lora_weights: a LoRA file (e.g. the HPS ``adapted_model.bin``; see :mod:`fabric.lora`).
        torch_dtype: the weights' dtype.
    """

    def __init__(
        self,
        model_name: str | None = None,
        model_ckpt: str | None = None,
        stable_diffusion_version: str = "1.5",
        lora_weights: str | None = None,
        torch_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if model_name is None:
            if stable_diffusion_version not in DEFAULT_MODELS:
                raise InvalidParameterError(
                    f"unknown stable_diffusion_version {stable_diffusion_version!r}; use '1.5' or '2.1'"
                )
            model_name = DEFAULT_MODELS[stable_diffusion_version]
        from fabric.models import load_pipeline
        from fabric.schedulers import set_scheduler

        pipe = load_pipeline(model_ckpt if model_ckpt is not None else model_name, dtype=torch_dtype)
        set_scheduler(pipe, "euler-a")  # the original samples with Euler ancestral
        prefix = ""
        if lora_weights:
            from fabric.lora import load_lora, negative_prefix_of

            prefix = negative_prefix_of([load_lora(pipe, lora_weights)])
        self.fabric = FabricGenerator(pipe, negative_prefix=prefix)
        self.pipeline = pipe
        # registered as submodules, as in the original (an nn.Module): .parameters(), .eval() work
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.scheduler = pipe.scheduler
        self.dtype = torch_dtype
        self.last_seed: int | None = None

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    def to(self, device: str | torch.device) -> AttentionBasedGenerator:  # type: ignore[override]
        self.fabric.to(device)  # moves every pipeline component and forgets device-bound caches
        return self

    def initialize_prompts(self, prompts: list[str]) -> torch.Tensor:
        """``(len(prompts), L, D)`` text-encoder hidden states of the prompts, as the original."""
        tokens = self.tokenizer(
            prompts,
            return_tensors="pt",
            max_length=self.tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
        )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            out = self.text_encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=mask)
        return out.last_hidden_state

    @staticmethod
    def image_to_tensor(image: str | Image.Image) -> torch.Tensor:
        """``(3, 512, 512)`` float tensor in ``[-1, 1]`` of an image or a path, as the original."""
        image = load_image(image).resize((512, 512))
        array = (np.asarray(image).astype(np.float32) / 127.5 - 1.0).astype(np.float32)
        return torch.from_numpy(array).permute(2, 0, 1)

    def generate(
        self,
        prompt: str | list[str] = "a photo of an astronaut riding a horse on mars",
        negative_prompt: str | list[str] = "",
        liked: Sequence[ImageLike] = [],  # noqa: B006 - the original's defaults; never mutated
        disliked: Sequence[ImageLike] = [],  # noqa: B006
        seed: int | None = 42,
        n_images: int = 1,
        guidance_scale: float = 8.0,
        denoising_steps: int = 20,
        feedback_start: float = 0.33,
        feedback_end: float = 0.66,
        min_weight: float = 0.1,
        max_weight: float = 1.0,
        neg_scale: float = 0.5,
        pos_bottleneck_scale: float = 1.0,
        neg_bottleneck_scale: float = 1.0,
    ) -> list[Image.Image]:
        """Generate ``n_images`` images with feedback, as the original (64x64 latents: 512x512 on SD).

        ``seed=None`` does not fix the seed: like the original, the latents then follow torch's
        global RNG (``torch.manual_seed`` before the call reproduces them); the seed drawn is
        logged and kept in :attr:`last_seed`. With ``guidance_scale <= 1`` diffusers skips
        classifier-free guidance, and with it the disliked images (the original always guides).
        """
        if seed is None:
            seed = int(torch.randint(0, 2**32, (1,)).item())
            logger.info("seed=None: drew seed %d from torch's global RNG", seed)
        self.last_seed = seed
        params = _params(
            feedback_start=feedback_start,
            feedback_end=feedback_end,
            min_weight=min_weight,
            max_weight=max_weight,
            neg_scale=neg_scale,
            pos_bottleneck_scale=pos_bottleneck_scale,
            neg_bottleneck_scale=neg_bottleneck_scale,
            steps=denoising_steps,
            guidance_scale=guidance_scale,
        )
        side = LATENT_SIZE * self.pipeline.vae_scale_factor
        images = self.fabric.generate(
            prompt,
            negative_prompt,
            liked,
            disliked,
            params=params,
            n_images=n_images,
            seed=seed,
            height=side,
            width=side,
        )
        assert isinstance(images, list)  # PIL images: the legacy API has no output_type
        return images


def _params(**values: float) -> FabricParams:
    """:class:`FabricParams`, or an error saying what the original would have done instead."""
    start, end = values["feedback_start"], values["feedback_end"]
    low, high = values["min_weight"], values["max_weight"]
    if low > high:
        raise InvalidParameterError(
            f"min_weight ({low}) > max_weight ({high}): the original FABRIC would use max_weight on the steps in "
            f"[feedback_start, feedback_end] and the larger min_weight on all others; give min_weight <= max_weight "
            "(e.g. swap them and set feedback_start/feedback_end to the steps that should get the larger weight)"
        )
    if start > end:
        raise InvalidParameterError(
            f"feedback_start ({start}) > feedback_end ({end}): the original FABRIC would use min_weight on every "
            "step; give feedback_start <= feedback_end, or max_weight=min_weight for a constant weight"
        )
    negative = [name for name in ("min_weight", "max_weight", "neg_scale") if values[name] < 0]
    if negative:
        raise InvalidParameterError(
            f"{negative[0]} ({values[negative[0]]}) < 0: the original FABRIC would multiply attention probabilities "
            "by a negative weight, which has no meaning as feedback; use 0 for none"
        )
    return FabricParams(**values)  # type: ignore[arg-type]
