"""``"tiny"``: a random-weight SD-1.x-shaped pipeline built in code, with no download.

Same component classes and wiring as SD 1.5 (CLIP text encoder, ``AutoencoderKL`` with
8x downsampling, ``UNet2DConditionModel`` with cross-attention down/up blocks around a plain
bottom level, Euler ancestral as in the original FABRIC code), at a size that generates a 64x64
image in a fraction of a second on a CPU.
"""

from __future__ import annotations

import torch

__all__ = ["build_tiny_pipeline", "tiny_components"]


def tiny_components(seed: int = 0) -> dict:
    """The components of the tiny pipeline, initialised deterministically from ``seed``."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fabric.tokenizer import offline_clip_tokenizer

    # fork_rng: module initialisers draw from the global RNG; this keeps the caller's RNG state untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,  # 8x8 latents -> 64x64 images
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=16,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=16,
            sample_size=64,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
    scheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": offline_clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def build_tiny_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``StableDiffusionPipeline`` with tiny random weights (64x64 images)."""
    from diffusers import StableDiffusionPipeline

    parts = tiny_components(seed)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].to(device=device)
        if dtype != torch.float32:  # they are built in float32
            parts[name].to(dtype=dtype)
    return StableDiffusionPipeline(**parts)
