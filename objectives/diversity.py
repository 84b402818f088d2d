"""In-batch similarity, FABRIC's diversity metric (lower = more diverse).

FABRIC reports the mean pairwise ``100 * cos`` between the CLIP image embeddings of the images
generated in one round (upper triangle of the similarity matrix). To fit the one-score-per-image
interface, each image gets the mean similarity to the *other* images of the batch; since every
pair is counted once from each side, the mean of the scores equals FABRIC's metric. A score
therefore depends on the whole batch: score all images of a round in one call (batch_size only
splits the encoder's forward passes). Direction: minimize. Typical values with CLIP ViT-L/14 on
images of one prompt: 80 +/- 5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from fabric.errors import InvalidParameterError
from objectives.backbone import ImageEncoder
from objectives.base import RewardModel, check_batch_size
from objectives.registry import register_objective
from objectives.target import encoder_source, load_image_encoder
from objectives.weights import resolve_weights

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["InBatchDiversity", "pairwise_similarity"]


def pairwise_similarity(embeddings: torch.Tensor) -> torch.Tensor:
    """``[n, d]`` unit embeddings -> ``[n]`` mean ``100 * cos`` of each row to the other rows."""
    n = embeddings.shape[0]
    sim = 100.0 * embeddings @ embeddings.T  # (n, n)
    return (sim.sum(-1) - sim.diagonal()) / (n - 1)


@register_objective("diversity")
class InBatchDiversity(RewardModel):
    """Mean ``100 * cos`` of each image to the rest of its batch (minimise for diversity)."""

    direction = "minimize"
    uses_prompt = False
    typical = (80.0, 5.0)

    def __init__(self, encoder: ImageEncoder, *, batch_size: int = 16):
        self.encoder = encoder
        self.batch_size = check_batch_size(batch_size)

    @classmethod
    def load(
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        encoder: Literal["clip", "dino"] = "clip",
        batch_size: int = 16,
    ) -> InBatchDiversity:
        """Loads the image encoder (CLIP ViT-L/14 by default)."""
        return cls(load_image_encoder("diversity", encoder, weights, device, dtype), batch_size=batch_size)

    @classmethod
    def check_weights(cls, weights: str | None = None, *, encoder: str = "clip", **options: Any) -> None:
        resolve_weights(encoder_source("diversity", encoder), weights, fetch=False)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        if len(images) < 2:
            raise InvalidParameterError("diversity needs at least 2 images scored together (it compares them)")
        return pairwise_similarity(self.encoder.embed_images(images, self.batch_size))
