"""What an objective is: the :class:`Objective` protocol, the :class:`RewardModel` base class
every reward family builds on, and the input checks they share.

An objective turns a list of images (plus their prompt) into scores:

    obj = objectives.load_objective("pickscore", weights="tiny")
    obj.score(images, "a red fox in the snow")  # -> float32 CPU tensor of shape [n]

Each objective says whether higher is better (``directions``), so the optimisation layer can hand
it to a sampler without knowing what it measures. Single reward models, weighted sums
(:class:`~objectives.composite.CompositeObjective`) and Pareto tuples
(:class:`~objectives.composite.MultiObjective`) all satisfy :class:`Objective`.

This module imports neither torch nor PIL at import time.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from fabric.checks import check_int
from fabric.devices import resolve_dtype
from fabric.errors import ImageError, InvalidParameterError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "Direction",
    "Objective",
    "RewardModel",
    "resolve_dtype",
    "placement",
    "check_images",
    "expand_prompts",
    "check_batch_size",
]

logger = logging.getLogger(__name__)

Direction = Literal["maximize", "minimize"]


@runtime_checkable
class Objective(Protocol):
    """Anything the optimisation layer can score with: one reward model, a weighted sum of them,
    or several scored together (a Pareto problem).

    Attributes:
        name: the registry name (``"pickscore"``) or the spec (``"pickscore,diversity"``).
        directions: one ``"maximize"``/``"minimize"`` per score column; a single objective
            has one (and also a plain ``direction``).
        objectives: the single-column objectives behind the columns, ``(self,)`` for one.
        takes_target: whether :meth:`with_target` is available (image-similarity objectives).
    """

    name: str

    @property
    def directions(self) -> tuple[Direction, ...]: ...

    @property
    def objectives(self) -> tuple[Any, ...]: ...

    takes_target: bool

    def score(self, images: Sequence[Image.Image], prompt: str | Sequence[str] = "") -> torch.Tensor:
        """Scores ``n`` images: a float32 CPU tensor ``[n]`` for one direction, ``[n, k]`` for ``k``."""
        ...

    def with_target(self, target: Any) -> Objective:
        """A copy scoring similarity to ``target`` (models shared)."""
        ...


class RewardModel(abc.ABC):
    """Base class of one reward model: images (and their prompt) in, one score per image out.

    Subclasses set the class attributes and implement :meth:`_score`; :meth:`score` validates
    the inputs and normalises the output, so every objective behaves the same at the boundary.

    Attributes:
        name: the registry name (``"pickscore"``), or the spec string for composites.
        direction: ``"maximize"`` if higher scores are better, else ``"minimize"``.
        uses_prompt: whether the prompt changes the score (aesthetic, target and diversity
            ignore it).
        takes_target: whether :meth:`with_target` is available (image-similarity objectives).
        components: weights-table keys besides the name that the objective reads, mapped to
            the load option they fill; the aesthetic head reads ``{"clip": "backbone"}``, so
            ``--objective-weights clip=PATH`` sets its CLIP backbone.
        typical: ``(location, scale)`` of the score over ordinary Stable Diffusion images; used
            by composite objectives to put terms on a comparable footing (rough, documented in
            each family, not a calibration).
    """

    name: str = "objective"
    direction: Direction = "maximize"
    uses_prompt: bool = True
    takes_target: bool = False
    typical: tuple[float, float] = (0.0, 1.0)
    components: dict[str, str] = {}

    def score(self, images: Sequence[Image.Image], prompt: str | Sequence[str] = "") -> torch.Tensor:
        """Scores a list of images.

        Args:
            images: ``n`` PIL images of any size and mode (converted to RGB).
            prompt: one prompt for all images, or one per image.

        Returns:
            A float32 CPU tensor of shape ``[n]``.
        """
        import torch

        images = check_images(images)
        prompts = expand_prompts(prompt, len(images))
        scores = self._score(images, prompts)
        scores = scores.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
        if scores.shape[0] != len(images):  # a family bug, not a user error
            raise RuntimeError(f"{self.name} returned {scores.shape[0]} scores for {len(images)} images")
        return scores

    __call__ = score

    @abc.abstractmethod
    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """Scores validated inputs: ``n`` RGB-convertible images and ``n`` prompts -> ``[n]``."""

    @property
    def directions(self) -> tuple[Direction, ...]:
        """``(direction,)``: one score column."""
        return (self.direction,)

    @property
    def objectives(self) -> tuple[RewardModel, ...]:
        """``(self,)``: the objective behind the one score column."""
        return (self,)

    def with_target(self, target: Any) -> RewardModel:
        """A copy scoring similarity to ``target``, sharing this objective's loaded model."""
        raise InvalidParameterError(f"objective {self.name!r} does not take a target image")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, direction={self.direction!r})"


def check_images(images: Any) -> list[Image.Image]:
    """The images as a non-empty list of PIL images, or a one-line :class:`ImageError`."""
    from PIL import Image

    if isinstance(images, Image.Image):
        raise ImageError("score() takes a list of PIL images, got a single image; wrap it in a list")
    if not isinstance(images, (list, tuple)) or not images:
        raise ImageError(f"score() takes a non-empty list of PIL images, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ImageError(f"image {i} is a {type(image).__name__}, not a PIL image")
    return list(images)


def expand_prompts(prompt: str | Sequence[str], n: int) -> list[str]:
    """One prompt per image: a single string is repeated, a list must have ``n`` entries."""
    if isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt)
    if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
        raise InvalidParameterError(f"expected one prompt or {n} prompt strings, got {len(prompts)} items")
    return prompts


def check_batch_size(batch_size: int) -> int:
    return check_int("batch_size", batch_size, minimum=1)


def placement(device: Any = "cpu", dtype: Any = None) -> tuple[torch.device, torch.dtype]:
    """``(torch.device, torch.dtype)`` from user values (strings, ``None`` = float32)."""
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidParameterError(f"invalid device {device!r}") from None
    return device, resolve_dtype(dtype)
