"""Target-image similarity: how much each image looks like one or more target images.

FABRIC's target-image experiment scores ``100 * cos`` between CLIP ViT-L/14@336px image
embeddings of a generated image and the target; DINOv2 (``encoder="dino"``) is the common
alternative that weighs layout and style more than content. With several targets the score is
the mean over targets. Typical values with CLIP: 70 +/- 10.

The optimisation loop needs one target per prompt: build the objective once (loading the
encoder), then call :meth:`TargetSimilarity.with_target` per prompt -- it shares the encoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from fabric.errors import ImageError, InvalidParameterError
from objectives.backbone import ImageEncoder
from objectives.base import RewardModel, check_batch_size, placement
from objectives.registry import register_objective
from objectives.weights import WeightSource, resolve_weights

if TYPE_CHECKING:
    import torch
    from PIL import Image

    TargetLike = Union["Image.Image", str, os.PathLike, Sequence[Union["Image.Image", str, os.PathLike]]]

__all__ = ["TargetSimilarity", "load_image_encoder", "load_target_images", "encoder_source"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_DEFAULT_CLIP = {"target": "openai/clip-vit-large-patch14-336", "diversity": "openai/clip-vit-large-patch14"}


def encoder_source(objective: str, encoder: str) -> WeightSource:
    """Weights of an image-similarity objective's encoder (``FABRIC_OPT_<OBJECTIVE>_WEIGHTS``)."""
    if encoder == "clip":
        repo = _DEFAULT_CLIP.get(objective, "openai/clip-vit-large-patch14")
        return WeightSource(objective, objective, f"CLIP {repo.split('/')[-1]}", repo_id=repo)
    if encoder == "dino":
        from objectives.dino import DEFAULT_REPO

        return WeightSource(objective, objective, "DINOv2 ViT-B/14", repo_id=DEFAULT_REPO)
    raise InvalidParameterError(f"{objective}: encoder must be 'clip' or 'dino', got {encoder!r}")


def load_image_encoder(objective: str, encoder: str, weights: str | None, device: Any, dtype: Any) -> ImageEncoder:
    """The CLIP or DINOv2 image encoder of ``objective`` (shared with other objectives)."""
    device, dtype = placement(device, dtype)
    resolved = resolve_weights(encoder_source(objective, encoder), weights)
    if encoder == "dino":
        from objectives.dino import load_dino

        return load_dino(resolved, device=device, dtype=dtype)
    from objectives.clip import load_hf_clip

    arch = "vit-l-14-336" if objective == "target" else "vit-l-14"
    return load_hf_clip(resolved, arch, device=device, dtype=dtype)


def load_target_images(target: Any) -> list[Image.Image]:
    """Target images from a PIL image, an image file, a folder of images, or a list of those."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(target, Image.Image):
        return [target]
    if isinstance(target, (str, os.PathLike)):
        path = Path(target).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            if not files:
                raise ImageError(f"target folder {path} contains no images")
            return [image for p in files for image in load_target_images(p)]
        try:
            with Image.open(path) as image:
                return [image.convert("RGB")]
        except FileNotFoundError:
            raise ImageError(f"target image {path} does not exist") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ImageError(f"target image {path} cannot be read ({type(err).__name__})") from err
    if isinstance(target, (list, tuple)) and target:
        return [image for item in target for image in load_target_images(item)]
    raise ImageError(
        f"target must be a PIL image, an image path, a folder or a non-empty list, got {type(target).__name__}"
    )


@register_objective("target")
class TargetSimilarity(RewardModel):
    """``100 * cos`` between each image's embedding and the target embedding(s), averaged."""

    uses_prompt = False
    takes_target = True
    typical = (70.0, 10.0)

    def __init__(self, encoder: ImageEncoder, target: TargetLike | None = None, *, batch_size: int = 16):
        self.encoder = encoder
        self.batch_size = check_batch_size(batch_size)
        self.target_embeddings: torch.Tensor | None = None  # (t, d), unit norm
        if target is not None:
            self.target_embeddings = encoder.embed_images(load_target_images(target), self.batch_size)

    @classmethod
    def load(
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        target: TargetLike | None = None,
        encoder: Literal["clip", "dino"] = "clip",
        batch_size: int = 16,
    ) -> TargetSimilarity:
        """Loads the encoder; ``target`` may also be given later through :meth:`with_target`."""
        return cls(load_image_encoder("target", encoder, weights, device, dtype), target, batch_size=batch_size)

    @classmethod
    def check_weights(cls, weights: str | None = None, *, encoder: str = "clip", **options: Any) -> None:
        resolve_weights(encoder_source("target", encoder), weights, fetch=False)

    def with_target(self, target: TargetLike) -> TargetSimilarity:
        """A new objective for ``target`` sharing this one's encoder (only the target is embedded)."""
        return type(self)(self.encoder, target, batch_size=self.batch_size)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        if self.target_embeddings is None:
            raise InvalidParameterError("target: no target image; pass target=... or use .with_target(image)")
        embeddings = self.encoder.embed_images(images, self.batch_size)  # (n, d)
        return 100.0 * (embeddings @ self.target_embeddings.T).mean(-1)
