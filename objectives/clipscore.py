"""Prompt-image similarity with a CLIP: CLIP score, and the base of PickScore and HPS.

CLIP score (Hessel et al., 2021; torchmetrics' ``CLIPScore``) is ``100 * cos(image, prompt)``
with OpenAI's CLIP ViT-L/14. torchmetrics clamps it at 0; here the clamp is an option
(``clamp=True``), off by default, because the optimiser needs to tell bad from very bad.

Typical values with ViT-L/14 on Stable Diffusion images: 28 +/- 3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from objectives.base import RewardModel, check_batch_size, placement
from objectives.clip import ClipBackbone, load_hf_clip
from objectives.registry import register_objective
from objectives.weights import ResolvedWeights, WeightSource, resolve_weights

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from objectives.preprocess import ImagePreprocess

__all__ = ["PromptSimilarity", "CLIPScore"]


class PromptSimilarity(RewardModel):
    """``scale * cos(image embedding, prompt embedding)`` with a CLIP backbone.

    Subclasses name their weights (``source``), the architecture of bare checkpoints
    (``arch``) and the ``scale`` (``None`` = the model's learned ``logit_scale.exp()``).
    """

    source: ClassVar[WeightSource]
    arch: ClassVar[str] = "vit-l-14"
    scale: ClassVar[float | None] = 100.0
    checkpoint_key: ClassVar[str | None] = None
    recipe: ClassVar[Callable[[int], ImagePreprocess] | None] = None  # None: the backbone's own

    def __init__(self, backbone: ClipBackbone, *, batch_size: int = 16):
        self.backbone = backbone
        self.batch_size = check_batch_size(batch_size)
        recipe = type(self).recipe  # a plain function on the class (staticmethod): no self
        self.preprocess = backbone.preprocess if recipe is None else recipe(backbone.preprocess.size)

    @classmethod
    def load(cls, weights: str | None = None, device: Any = "cpu", dtype: Any = None, *, batch_size: int = 16):
        """Loads the backbone (see :func:`objectives.load_objective` for ``weights``)."""
        device, dtype = placement(device, dtype)
        backbone = cls.load_backbone(resolve_weights(cls.source, weights), device, dtype)
        return cls(backbone, batch_size=batch_size)

    @classmethod
    def load_backbone(cls, resolved: ResolvedWeights, device: torch.device, dtype: torch.dtype) -> ClipBackbone:
        return load_hf_clip(resolved, cls.arch, device=device, dtype=dtype, checkpoint_key=cls.checkpoint_key)

    @classmethod
    def check_weights(cls, weights: str | None = None, **options: Any) -> None:
        resolve_weights(cls.source, weights, fetch=False)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        image_emb = self.backbone.embed_images(images, self.batch_size, self.preprocess)  # (n, d), unit norm
        text_emb = self.backbone.embed_texts(prompts)  # (n, d), unit norm
        scale = self.backbone.logit_scale if self.scale is None else self.scale
        return scale * (image_emb * text_emb).sum(-1)


@register_objective("clipscore")
class CLIPScore(PromptSimilarity):
    """CLIP score: ``100 * cos`` with OpenAI CLIP ViT-L/14 (optionally clamped at 0)."""

    typical = (28.0, 3.0)
    source = WeightSource("clipscore", "clipscore", "CLIP ViT-L/14", repo_id="openai/clip-vit-large-patch14")

    def __init__(self, backbone: ClipBackbone, *, batch_size: int = 16, clamp: bool = False):
        super().__init__(backbone, batch_size=batch_size)
        self.clamp = bool(clamp)

    @classmethod
    def load(
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        batch_size: int = 16,
        clamp: bool = False,
    ):
        """Loads CLIP ViT-L/14; ``clamp=True`` reproduces torchmetrics' ``max(score, 0)``."""
        device, dtype = placement(device, dtype)
        backbone = cls.load_backbone(resolve_weights(cls.source, weights), device, dtype)
        return cls(backbone, batch_size=batch_size, clamp=clamp)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        scores = super()._score(images, prompts)
        return scores.clamp_min(0.0) if self.clamp else scores
