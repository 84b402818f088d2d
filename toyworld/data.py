"""What the toy models learn from: rendered scenes as tensors, and the settings of a training run.

Shared by the generator's training (:mod:`toyworld.train`) and the reward models' training
(:mod:`toyworld.rewards`), so that neither imports the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fabric.errors import InvalidParameterError

__all__ = ["TrainConfig", "render_dataset", "to_model_range"]


@dataclass(frozen=True)
class TrainConfig:
    """Step counts and optimiser settings of one training run."""

    seed: int = 0
    n_images: int = 16000  # rendered once; training captions only (held-out ones excluded)
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6  # just enough to keep the latents bounded
    unet_steps: int = 5000
    unet_stop: int | None = None  # end the U-Net phase after this many steps, on the schedule of unet_steps
    unet_batch: int = 32
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1  # fraction of empty captions, for classifier-free guidance
    partial_captions: float = 0.4  # fraction of captions that leave attributes unsaid
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    eval_every: int = 1000  # U-Net steps between checkpoints (weights written, held-out accuracy logged)
    eval_images: int = 200  # held-out captions generated per checkpoint
    reward_steps: int = 600  # toy-clip
    classifier_steps: int = 1500
    reward_batch: int = 64
    reward_lr: float = 2e-3
    threads: int = 1  # one thread: on a shared 2-core box, two threads stall each other

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("caption_dropout", "kl_weight", "partial_captions") or f.name == "ema_decay":
                ok = 0.0 <= value < 1.0
            elif f.name == "seed":
                ok = value >= 0
            elif f.name == "unet_stop":
                ok = value is None or 0 < value <= self.unet_steps
            else:
                ok = value > 0
            if not ok:
                raise InvalidParameterError(f"TrainConfig.{f.name} is out of range: {value!r}")

    @classmethod
    def quick(cls, **overrides) -> TrainConfig:
        """A smoke-test configuration: every phase runs, for a few steps."""
        base = dict(
            n_images=96,
            vae_steps=6,
            vae_batch=8,
            unet_steps=6,
            unet_batch=8,
            eval_every=4,
            eval_images=4,
            reward_steps=6,
            classifier_steps=6,
            reward_batch=16,
        )
        return cls(**{**base, **overrides})


def render_dataset(n: int, seed: int, split: str = "train") -> tuple[torch.Tensor, list[str], list]:
    """Render ``n`` scenes.

    Returns:
        ``(images, captions, scenes)``: ``images`` is an ``n x 3 x 64 x 64`` uint8 tensor.
    """
    import numpy as np

    from toyworld.scenes import caption, render, sample_scenes

    scenes = sample_scenes(n, seed=seed, split=split)
    arrays = np.stack([np.asarray(render(s)) for s in scenes])  # (n, 64, 64, 3)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous(), [caption(s) for s in scenes], scenes


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float ``[-1, 1]``, the range SD's VAE works in."""
    return images.float().div(127.5).sub(1.0)
