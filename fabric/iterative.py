"""Iterative feedback sessions: rounds of generation, feedback lists, reset.

:class:`IterativeFeedbackGenerator` keeps the original FABRIC API (``generate``,
``give_feedback``, ``reset``, ``prompt_dropout``) so existing FABRIC code runs unchanged.
:class:`FeedbackSession` is the same idea on :class:`~fabric.fabric_generator.FabricGenerator` with
:class:`~fabric.params.FabricParams`, which the optimisation protocols use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from fabric.fabric_generator import FabricGenerator, drop_words
from fabric.generator import AttentionBasedGenerator
from fabric.images import ImageLike, load_images
from fabric.params import FabricParams
from fabric.seeds import stable_seed

__all__ = ["IterativeFeedbackGenerator", "FeedbackSession"]

logger = logging.getLogger(__name__)


class IterativeFeedbackGenerator:
    """The original FABRIC iterative wrapper (sd-fabric/fabric ``fabric.iterative``), same signature.

    Args:
        generator: an :class:`~fabric.generator.AttentionBasedGenerator` or a
            :class:`~fabric.fabric_generator.FabricGenerator`.
        init_liked: images liked before the first round (kept across :meth:`reset`).
        init_disliked: images disliked before the first round.

    Differences from the original, on purpose: prompt dropout is seeded by the round's seed (the
    original draws from NumPy's global RNG), and the round counter counts every round.
    """

    def __init__(
        self,
        generator: AttentionBasedGenerator | FabricGenerator,
        init_liked: Sequence[ImageLike] = [],  # noqa: B006 - the original's defaults; copied, never mutated
        init_disliked: Sequence[ImageLike] = [],  # noqa: B006
    ) -> None:
        self.generator = generator
        self.init_liked = load_images(init_liked)
        self.init_disliked = load_images(init_disliked)
        self.last_seed: int | None = None
        self.reset()

    def reset(self) -> None:
        self.liked: list[Image.Image] = list(self.init_liked)
        self.disliked: list[Image.Image] = list(self.init_disliked)
        self.round = 0

    def to(self, device) -> IterativeFeedbackGenerator:
        self.generator.to(device)
        return self

    def generate(
        self,
        prompt: str,
        seed: int | None = None,
        n_images: int = 4,
        prompt_dropout: float = 0.0,
        return_params: bool = False,
        **kwargs: Any,
    ):
        """Generate one round with the feedback given so far.

        ``seed=None`` draws the round's seed from torch's global RNG, as the original does, so
        ``torch.manual_seed`` before the call reproduces it; the seed is logged, kept in
        :attr:`last_seed` and returned with ``return_params=True``. Other keyword arguments go to
        the underlying ``generate``.
        """
        if seed is None:
            seed = int(torch.randint(0, 2**32, (1,)).item())
            logger.info("round %d: seed=None, drew seed %d from torch's global RNG", self.round, seed)
        self.last_seed = seed
        prompts = [drop_words(prompt, prompt_dropout, stable_seed("dropout", seed, i)) for i in range(n_images)]
        if isinstance(self.generator, FabricGenerator):
            images = self.generator.generate(
                prompts, liked=self.liked, disliked=self.disliked, n_images=n_images, seed=seed, **kwargs
            )
        else:
            images = self.generator.generate(
                prompt=prompts, liked=self.liked, disliked=self.disliked, seed=seed, n_images=n_images, **kwargs
            )
        current, self.round = self.round, self.round + 1
        if return_params:
            return images, {
                "round": current,
                "prompts": prompts,
                "liked": list(self.liked),
                "disliked": list(self.disliked),
                "seed": seed,
                "n_images": n_images,
                **kwargs,
            }
        return images

    def give_feedback(
        self,
        liked: Sequence[ImageLike] = [],  # noqa: B006 - the original's defaults; never mutated
        disliked: Sequence[ImageLike] = [],  # noqa: B006
    ) -> tuple[list[Image.Image], list[Image.Image]]:
        """Add to the liked and disliked lists; returns copies of both, as the original."""
        self.liked.extend(load_images(liked))
        self.disliked.extend(load_images(disliked))
        return list(self.liked), list(self.disliked)


@dataclass
class FeedbackSession:
    """Rounds of FABRIC generation on one prompt with accumulating feedback.

    Per-image prompt dropout and reference truncation follow ``params``; seeds are explicit.

    Example:
        >>> session = FeedbackSession(gen, "a red circle", params=FabricParams(max_weight=0.5))
        >>> images = session.generate(seed=[0, 1, 2, 3])
        >>> session.give_feedback(liked=images[:1], disliked=images[-1:])
        >>> images = session.generate(seed=[4, 5, 6, 7])
    """

    generator: FabricGenerator
    prompt: str
    negative_prompt: str = ""
    params: FabricParams = field(default_factory=FabricParams)
    liked: list[Image.Image] = field(default_factory=list)
    disliked: list[Image.Image] = field(default_factory=list)
    round: int = 0

    def generate(self, seed: int | Sequence[int], n_images: int | None = None, **kwargs: Any) -> list[Image.Image]:
        n = n_images if n_images is not None else (1 if isinstance(seed, int) else len(seed))
        images = self.generator.generate(
            self.prompt,
            self.negative_prompt,
            liked=self.liked,
            disliked=self.disliked,
            params=self.params,
            n_images=n,
            seed=seed,
            **kwargs,
        )
        self.round += 1
        return images  # type: ignore[return-value]  # PIL images unless kwargs ask for latents

    def give_feedback(self, liked: Sequence[ImageLike] = (), disliked: Sequence[ImageLike] = ()) -> None:
        self.liked.extend(load_images(liked))
        self.disliked.extend(load_images(disliked))

    def reset(self) -> None:
        self.liked.clear()
        self.disliked.clear()
        self.round = 0
