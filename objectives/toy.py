"""Objectives of the toy world (``toyworld``): rewards that mean something on a CPU.

The toy diffusion model draws 64x64 scenes of coloured shapes; these objectives are trained on
the same world (see :mod:`toyworld.rewards`), so a study on the toy model optimises something
real in seconds, without any downloaded checkpoint:

* ``toy-clip`` -- prompt adherence, ``100 * cos`` between toy-clip image and caption embeddings
  (PickScore's role). Maximise.
* ``toy-target`` -- ``100 * cos`` of toy-clip image embeddings to target image(s); takes a target
  (``target=`` or :meth:`ToyTargetSimilarity.with_target`). Maximise.
* ``toy-diversity`` -- mean ``100 * cos`` of each image to the rest of its batch. Minimise.
* ``toy-taste`` -- a simulated user's taste from the attribute classifier, a probability in
  ``[0, 1]``: ``taste="warm"`` (likes warm colours), ``"stars"``, ``"uncluttered"`` (dislikes
  two-shape scenes), any colour (``"red"``), shape (``"circles"``), size or
  ``"<colour>-background"``. Maximise.

``weights``: ``None``, ``"toy"`` or ``"tiny"`` use the weights packaged in ``toyworld/weights``;
a folder path uses the files written there by ``python -m toyworld.train --only rewards``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric.errors import InvalidParameterError, WeightsNotFoundError
from objectives.base import RewardModel, check_batch_size, placement
from objectives.registry import register_objective

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from toyworld.rewards import AttributeClassifier, ToyClip

__all__ = ["ToyClipScore", "ToyTargetSimilarity", "ToyDiversity", "ToyTaste"]

_PACKAGED = (None, "toy", "tiny", "default")


def _weights_dir(weights: Any) -> Path | None:
    if weights in _PACKAGED:
        return None
    return Path(weights).expanduser()


def _check(weights: Any, stem: str) -> None:
    from toyworld.model import DEFAULT_WEIGHTS_DIR

    root = _weights_dir(weights) or DEFAULT_WEIGHTS_DIR
    if not (root / f"{stem}.safetensors").is_file():
        raise WeightsNotFoundError(
            f"no toy {stem} weights in {root}; run `python -m toyworld.train --only rewards --out {root}`"
        )


def _batched_embed(fn, items: list, batch_size: int) -> torch.Tensor:
    import torch

    return torch.cat([fn(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])


class _ToyClipObjective(RewardModel):
    """Shared loading for the toy-clip family."""

    def __init__(self, model: ToyClip, *, batch_size: int = 64):
        self.model = model
        self.batch_size = check_batch_size(batch_size)

    @classmethod
    def load(cls, weights: str | None = None, device: Any = "cpu", dtype: Any = None, *, batch_size: int = 64, **kw):
        from toyworld.rewards import load_toy_clip

        device, dtype = placement(device, dtype)
        return cls(load_toy_clip(_weights_dir(weights), device=device, dtype=dtype), batch_size=batch_size, **kw)

    @classmethod
    def check_weights(cls, weights: str | None = None, **options: Any) -> None:
        _check(weights, "toyclip")

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """``n`` images -> ``n x 64`` unit embeddings (float32, CPU)."""
        return _batched_embed(self.model.embed_images, images, self.batch_size)


@register_objective("toy-clip")
class ToyClipScore(_ToyClipObjective):
    """``100 * cos(image, prompt)`` under toy-clip: does the image show what the prompt says?"""

    typical = (30.0, 15.0)

    @classmethod  # narrower than the base on purpose: an unknown option is an error
    def load(cls, weights: str | None = None, device: Any = "cpu", dtype: Any = None, *, batch_size: int = 64):  # type: ignore[override]
        return super().load(weights, device, dtype, batch_size=batch_size)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        unique = sorted(set(prompts))
        text = self.model.embed_texts(unique)  # (u, 64)
        rows = text[[unique.index(p) for p in prompts]]  # (n, 64)
        return 100.0 * (self.embed_images(images) * rows).sum(-1)


@register_objective("toy-target")
class ToyTargetSimilarity(_ToyClipObjective):
    """``100 * cos`` of each image to the target image(s) under toy-clip, averaged over targets."""

    uses_prompt = False
    takes_target = True
    typical = (60.0, 20.0)

    def __init__(self, model: ToyClip, target: Any = None, *, batch_size: int = 64):
        super().__init__(model, batch_size=batch_size)
        self.target_embeddings = None  # (t, 64)
        if target is not None:
            from objectives.target import load_target_images

            self.target_embeddings = self.embed_images(load_target_images(target))

    @classmethod  # narrower than the base on purpose: an unknown option is an error
    def load(  # type: ignore[override]
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        target: Any = None,
        batch_size: int = 64,
    ):
        return super().load(weights, device, dtype, batch_size=batch_size, target=target)

    def with_target(self, target: Any) -> ToyTargetSimilarity:
        """A new objective for ``target`` sharing this one's model."""
        return type(self)(self.model, target, batch_size=self.batch_size)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        if self.target_embeddings is None:
            raise InvalidParameterError("toy-target: no target image; pass target=... or use .with_target(image)")
        return 100.0 * (self.embed_images(images) @ self.target_embeddings.T).mean(-1)


@register_objective("toy-diversity")
class ToyDiversity(_ToyClipObjective):
    """Mean ``100 * cos`` of each image to the other images of its batch (lower = more diverse)."""

    direction = "minimize"
    uses_prompt = False
    typical = (60.0, 20.0)

    @classmethod  # narrower than the base on purpose: an unknown option is an error
    def load(cls, weights: str | None = None, device: Any = "cpu", dtype: Any = None, *, batch_size: int = 64):  # type: ignore[override]
        return super().load(weights, device, dtype, batch_size=batch_size)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        from objectives.diversity import pairwise_similarity

        if len(images) < 2:
            raise InvalidParameterError("toy-diversity needs at least 2 images scored together (it compares them)")
        return pairwise_similarity(self.embed_images(images))


@register_objective("toy-taste")
class ToyTaste(RewardModel):
    """A simulated user: the attribute classifier's probability that the image has what they like."""

    uses_prompt = False
    typical = (0.5, 0.3)

    def __init__(self, classifier: AttributeClassifier, taste: str = "warm", *, batch_size: int = 64):
        from toyworld.rewards import get_taste

        self.classifier = classifier
        self.taste = get_taste(taste)
        self.batch_size = check_batch_size(batch_size)

    @classmethod
    def load(
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        taste: str = "warm",
        batch_size: int = 64,
    ) -> ToyTaste:
        from toyworld.rewards import get_taste, load_attribute_classifier

        get_taste(taste)  # an unknown taste fails before the model loads
        device, dtype = placement(device, dtype)
        return cls(
            load_attribute_classifier(_weights_dir(weights), device=device, dtype=dtype), taste, batch_size=batch_size
        )

    @classmethod
    def check_weights(cls, weights: str | None = None, **options: Any) -> None:
        _check(weights, "classifier")

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        import torch

        scores = [
            self.taste(self.classifier.probabilities(images[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(scores)

    def __repr__(self) -> str:
        return f"ToyTaste(taste={self.taste.name!r})"
