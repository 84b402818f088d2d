"""The original FABRIC API, at its original module path: ``from fabric.generator import
AttentionBasedGenerator`` (sd-fabric/fabric) works here, on :class:`~fabric.fabric_generator.FabricGenerator`.

:mod:`fabric.iterative` holds the original ``IterativeFeedbackGenerator`` beside it. New code
uses :class:`fabric.FabricGenerator` and :class:`fabric.FabricParams` directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from fabric.errors import InvalidParameterError
from fabric.fabric_generator import FabricGenerator
from fabric.images import ImageLike
from fabric.params import FabricParams

__all__ = ["AttentionBasedGenerator"]


class AttentionBasedGenerator:
    """The original FABRIC API (``fabric.generator.AttentionBasedGenerator``) on this implementation.

    Keyword names and defaults follow the original ``generate``; the model is loaded with
    :func:`fabric.models.load_pipeline`, so ``model_name="tiny"`` works offline. The original
    used Euler ancestral sampling; so does this class.
    """

    def __init__(
        self,
        model_ckpt: str | None = None,
        model_name: str | None = None,
        stable_diffusion_version: str = "1.5",
        lora_weights: str | None = None,
        torch_dtype: torch.dtype = torch.float32,
    ) -> None:
        if model_name is None and model_ckpt is None:
            model_name = {"1.5": "runwayml/stable-diffusion-v1-5", "2.1": "stabilityai/stable-diffusion-2-1"}.get(
                stable_diffusion_version
            )
            if model_name is None:
                raise InvalidParameterError(
                    f"unknown stable_diffusion_version {stable_diffusion_version!r}; use '1.5' or '2.1'"
                )
        from fabric.models import load_pipeline
        from fabric.schedulers import set_scheduler

        pipe = load_pipeline(model_ckpt or model_name, dtype=torch_dtype)
        set_scheduler(pipe, "euler-a")
        prefix = ""
        if lora_weights:
            from fabric.lora import load_lora

            prefix = load_lora(pipe, lora_weights).negative_prefix
        self.fabric = FabricGenerator(pipe, negative_prefix=prefix)
        self.pipeline = pipe

    def to(self, device: str | torch.device) -> AttentionBasedGenerator:
        self.fabric.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    def generate(
        self,
        prompt: str | list[str] = "a photo of an astronaut riding a horse on mars",
        negative_prompt: str | list[str] = "",
        liked: Sequence[ImageLike] = (),
        disliked: Sequence[ImageLike] = (),
        seed: int = 42,
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
        height: int | None = None,
        width: int | None = None,
    ) -> list[Image.Image]:
        params = FabricParams(
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
        return self.fabric.generate(
            prompt,
            negative_prompt,
            liked,
            disliked,
            params=params,
            n_images=n_images,
            seed=seed,
            height=height,
            width=width,
        )
