"""DINOv2 image embeddings, an alternative to CLIP for image-image similarity.

CLIP image embeddings are trained to match captions, so two images with the same content but a
different look can score as near-identical; self-supervised DINO features keep more of the
layout and style, which is why they are a common choice for "looks like this image" metrics.
The embedding is the final layer-normed class token (transformers' ``pooler_output``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from objectives.backbone import ImageEncoder, load_hf_model, output_tensor, shared
from objectives.preprocess import ImagePreprocess, dino
from objectives.weights import ResolvedWeights

if TYPE_CHECKING:
    import torch

__all__ = ["DinoEncoder", "dino_config", "load_dino"]

DEFAULT_REPO = "facebook/dinov2-base"


def dino_config(tiny: bool = False):
    """``Dinov2Config``: DINOv2 ViT-B/14 (86 M parameters), or a tiny one for tests."""
    from transformers import Dinov2Config

    if tiny:
        return Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
        )
    return Dinov2Config()  # the defaults are dinov2-base


class DinoEncoder(ImageEncoder):
    """A transformers ``Dinov2Model`` with DINO's evaluation preprocessing."""

    def __init__(self, model: torch.nn.Module, preprocess: ImagePreprocess, device: torch.device, dtype: torch.dtype):
        self.model, self.preprocess, self.device, self.dtype = model, preprocess, device, dtype

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return output_tensor(self.model(pixel_values=pixels))


def load_dino(resolved: ResolvedWeights, *, device: torch.device, dtype: torch.dtype) -> DinoEncoder:
    """A DINOv2 encoder from resolved weights (shared while alive)."""

    def build() -> DinoEncoder:
        from transformers import Dinov2Model

        model = load_hf_model(
            Dinov2Model, lambda: dino_config(resolved.kind == "tiny"), resolved, device=device, dtype=dtype
        )
        # DINOv2 interpolates its position embeddings, so it runs at 224 whatever its config
        # says (518); tiny models run at their own size.
        size = model.config.image_size if resolved.kind == "tiny" else 224
        return DinoEncoder(model, dino().with_size(size), device, dtype)

    return shared(("dino", resolved.cache_key, str(device), dtype), build)
