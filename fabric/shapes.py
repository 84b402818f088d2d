"""The U-Net configurations of the real models (DESIGN section 6).

Random weights at these shapes cost the time and memory of the real checkpoints, so benchmarks
measure speed and memory with them where no checkpoint can be downloaded, and tests check shape
logic (the depth profile, layer counts) on them without allocating memory.
"""

from __future__ import annotations

__all__ = ["SD15_UNET", "SDXL_UNET"]


#: SD 1.5's U-Net config (DESIGN section 6); the diffusers defaults but for the text width
SD15_UNET = dict(
    sample_size=64,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)

#: SDXL base's U-Net config (DESIGN section 6)
SDXL_UNET = dict(
    sample_size=128,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
