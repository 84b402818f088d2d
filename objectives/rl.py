"""Objectives as reward functions for RL fine-tuning trainers (DDPO, AlignProp).

DDPO-style trainers (``trl``'s ``DDPOTrainer``, ``ddpo-pytorch``) call
``reward_fn(images, prompts, prompt_metadata) -> (rewards, reward_metadata)`` once per batch of
sampled images. :func:`make_reward_fn` turns any objective or spec into that shape:

    reward_fn = make_reward_fn("pickscore+0.5*aesthetic", device="cuda")
    rewards, info = reward_fn(images, prompts, metadata)

``images`` may be a float tensor in [0, 1] or a uint8 tensor, ``[n, 3, H, W]`` or
``[n, H, W, 3]`` (what the trainers' pipelines return), a numpy array of the same, or a list of
PIL images. Rewards are "higher is better": objectives to minimise (diversity) are negated.
Scores are computed without gradients (DDPO's policy gradient needs none); AlignProp's
backpropagation through the reward model is not supported, because the reference
preprocessing (PIL bicubic resize) is not differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fabric.errors import ConfigError, ImageError
from objectives.base import RewardModel

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["RewardFunction", "make_reward_fn", "to_pil_images"]


def to_pil_images(images: Any) -> list[Image.Image]:
    """PIL images from a list of PIL images, or a uint8 / [0, 1] float tensor or array.

    Args:
        images: ``[n, 3, H, W]`` or ``[n, H, W, 3]`` tensor or numpy array (uint8, or float in
            [0, 1]), or a list of PIL images.

    Raises:
        ImageError: another type or shape, or float values outside [0, 1] (e.g. [-1, 1]).
    """
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(images, (list, tuple)) and all(isinstance(i, Image.Image) for i in images):
        return list(images)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ImageError(
            f"images must be PIL images or a [n, 3, H, W] / [n, H, W, 3] tensor, got {type(images).__name__}"
        )
    images = images.detach().cpu()
    # channels-first unless only the last axis can hold channels (trainers return [n, 3, H, W])
    if images.shape[1] in (1, 3) and not (images.shape[-1] == 3 and images.shape[1] != 3):
        images = images.permute(0, 2, 3, 1)  # (n, H, W, C)
    elif images.shape[-1] not in (1, 3):
        raise ImageError(f"images must have 1 or 3 channels, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        images = images.float()
        low, high = float(images.min()), float(images.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ImageError(
                f"float images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; for [-1, 1] pass (x + 1) / 2"
            )
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    if images.shape[-1] == 1:
        images = images.expand(-1, -1, -1, 3)
    return [Image.fromarray(array) for array in images.numpy()]


class RewardFunction:
    """``fn(images, prompts, metadata) -> (rewards, info)`` around one scalar objective.

    Attributes:
        objective: the wrapped objective.
    """

    def __init__(self, objective: RewardModel):
        if not isinstance(objective, RewardModel):
            raise ConfigError(
                f"an RL reward needs one scalar objective, got {type(objective).__name__}; "
                "combine several into a weighted sum, e.g. 'pickscore+0.5*aesthetic'"
            )
        self.objective = objective

    def __call__(
        self, images: Any, prompts: str | Sequence[str], metadata: Any = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Scores a batch.

        Args:
            images: see :func:`to_pil_images`.
            prompts: one prompt per image (or one for all).
            metadata: the trainer's per-prompt metadata; unused, accepted for the signature.

        Returns:
            ``(rewards, info)``: a float32 CPU tensor ``[n]`` (higher is better) and a dict with
            ``"objective"``, ``"direction"`` and the raw ``"scores"``.
        """
        scores = self.objective.score(to_pil_images(images), prompts if isinstance(prompts, str) else list(prompts))
        rewards = -scores if self.objective.direction == "minimize" else scores
        return rewards, {"objective": self.objective.name, "direction": self.objective.direction, "scores": scores}

    def __repr__(self) -> str:
        return f"RewardFunction({self.objective!r})"


def make_reward_fn(
    objective: RewardModel | str, weights: Any = None, device: Any = "cpu", dtype: Any = None, **kwargs: Any
) -> RewardFunction:
    """A DDPO/AlignProp-shaped reward function from an objective or a spec string.

    Args:
        objective: a :class:`~objectives.base.RewardModel`, or a spec for
            :func:`~objectives.composite.parse_objective` (one sum, no commas).
        weights, device, dtype, **kwargs: passed to ``parse_objective`` for specs.
    """
    if isinstance(objective, str):
        from objectives.composite import parse_objective

        parsed: Any = parse_objective(objective, weights, device, dtype, **kwargs)
        return RewardFunction(parsed)  # refuses a Pareto tuple with the fix
    return RewardFunction(objective)
