"""Tiny random-weight pipelines built in code, with no download, one per model family.

* ``"tiny"``: SD 1.x. CLIP text encoder padded with ``<|endoftext|>``, conv projections in the
  transformer blocks, epsilon prediction, Euler ancestral (as in the original FABRIC code).
* ``"tiny-v"``: SD 2.x with v-prediction. Per-block ``attention_head_dim``, linear projections,
  a GELU text encoder padded with ``"!"``, DDIM with ``prediction_type="v_prediction"`` (the
  SD 2.1 scheduler).
* ``"tiny-xl"``: SDXL. Plain top level, two cross-attention levels with several transformer
  layers per block, two text encoders (the second a ``CLIPTextModelWithProjection`` padded with
  ``"!"`` whose pooled projection feeds ``addition_embed_type="text_time"`` with the size/crop
  time ids), a VAE with ``force_upcast`` and SDXL's scaling factor, Euler.

Each has the component classes and wiring of its family at a size that generates a 64x64 image
in a fraction of a second on a CPU. Weights are initialised deterministically from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "TINY_MODELS",
    "build_tiny_pipeline",
    "build_tiny_v_pipeline",
    "build_tiny_xl_pipeline",
    "tiny_components",
    "tiny_v_components",
    "tiny_xl_components",
]

_SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _tiny_vae(scaling_factor: float = 0.18215, force_upcast: bool = True):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32, 32),  # four levels: 8x downsampling, as in SD
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _tiny_clip(hidden_size: int, hidden_act: str = "quick_gelu", projection_dim: int | None = None):
    """A 2-layer CLIP text encoder; with ``projection_dim`` a ``CLIPTextModelWithProjection``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim or hidden_size,
        hidden_act=hidden_act,
        bos_token_id=49406,
        eos_token_id=49407,  # pooling takes the first EOS, whatever the pad token
        pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config)


def _tiny_unet(**config):
    """A 3-level U-Net on 8x8 latents (64x64 images); ``config`` sets the family's blocks."""
    from diffusers import UNet2DConditionModel

    base = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=16,
    )
    return UNet2DConditionModel(**base, **config)


def tiny_components(seed: int = 0) -> dict:
    """The components of ``"tiny"`` (SD 1.x), initialised deterministically from ``seed``."""
    from diffusers import EulerAncestralDiscreteScheduler

    from fabric.tokenizer import offline_clip_tokenizer

    # fork_rng: module initialisers draw from the global RNG; this keeps the caller's RNG state untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
        )
        vae = _tiny_vae()
        text_encoder = _tiny_clip(32)
    scheduler = EulerAncestralDiscreteScheduler(**_SD_BETAS, steps_offset=1, timestep_spacing="leading")
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


def tiny_v_components(seed: int = 0) -> dict:
    """The components of ``"tiny-v"`` (SD 2.x, v-prediction), initialised from ``seed``."""
    from diffusers import DDIMScheduler

    from fabric.tokenizer import offline_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4, 4),  # per block, as SD 2.x's (5, 10, 20, 20)
            use_linear_projection=True,
        )
        vae = _tiny_vae()
        text_encoder = _tiny_clip(32, hidden_act="gelu")  # OpenCLIP ViT-H uses exact GELU
    scheduler = DDIMScheduler(
        **_SD_BETAS,
        prediction_type="v_prediction",
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="leading",
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": offline_clip_tokenizer(pad_token="!"),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def tiny_xl_components(seed: int = 0) -> dict:
    """The components of ``"tiny-xl"`` (SDXL base), initialised from ``seed``.

    The two text encoders have different widths (32 and 64, like CLIP-L's 768 and bigG's 1280):
    the U-Net's cross-attention sees their concatenation (96), and diffusers' single-file loader
    tells the encoders apart by width.
    """
    from diffusers import EulerDiscreteScheduler

    from fabric.tokenizer import offline_clip_tokenizer

    time_dim, pooled_dim = 8, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),  # SDXL: (1, 2, 10); the bottom level is deepest
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=32 + 64,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            # 6 time ids (original size, crop top-left, target size) + the pooled text embedding
            projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,
        )
        vae = _tiny_vae(scaling_factor=0.13025, force_upcast=True)
        text_encoder = _tiny_clip(32)
        text_encoder_2 = _tiny_clip(64, hidden_act="gelu", projection_dim=pooled_dim)
    scheduler = EulerDiscreteScheduler(
        **_SD_BETAS, steps_offset=1, timestep_spacing="leading", interpolation_type="linear"
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer": offline_clip_tokenizer(),
        "tokenizer_2": offline_clip_tokenizer(pad_token="!"),
        "scheduler": scheduler,
        "force_zeros_for_empty_prompt": True,
    }


def _place(parts: dict, device, dtype) -> dict:
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.to(device=device)
            if dtype != torch.float32:  # they are built in float32
                part.to(dtype=dtype)
    return parts


def build_tiny_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``StableDiffusionPipeline`` with tiny random weights (64x64 images)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**_place(tiny_components(seed), device, dtype))


def build_tiny_v_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A v-prediction ``StableDiffusionPipeline`` shaped like SD 2.x, tiny random weights."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**_place(tiny_v_components(seed), device, dtype))


def build_tiny_xl_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``StableDiffusionXLPipeline`` with tiny random weights (64x64 images)."""
    from diffusers import StableDiffusionXLPipeline

    # no invisible watermark: it needs an extra package and changes pixels after decoding
    return StableDiffusionXLPipeline(**_place(tiny_xl_components(seed), device, dtype), add_watermarker=False)


#: built-in tiny model name -> builder ``(device, dtype, seed) -> pipeline``
TINY_MODELS: dict[str, Callable] = {
    "tiny": build_tiny_pipeline,
    "tiny-v": build_tiny_v_pipeline,
    "tiny-xl": build_tiny_xl_pipeline,
}
