"""Small stand-ins for the generator and objectives, with the interfaces the protocol uses.

``ColourGenerator`` renders solid-colour images: the colour of image ``i`` comes from its seed
and the prompt, and is pulled towards the mean colour of the liked images by
``max_weight * (1 - feedback_start)``, so feedback measurably helps and the parameters matter.
``ChannelObjective`` scores an image by one colour channel; ``with_target`` gives a similarity
(negative distance) to a target colour.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from PIL import Image

from fabric.images import load_images
from fabric.params import FabricParams
from objectives.base import RewardModel
from objectives.composite import MultiObjective

SIZE = 8


def _seed_colour(seed: int, prompt: str) -> tuple[float, float, float]:
    digest = hashlib.sha256(f"{seed}/{prompt}".encode()).digest()
    return (digest[0], digest[1], digest[2])


@dataclass
class ColourGenerator:
    """Deterministic solid-colour generator; records every call."""

    calls: list[dict] = field(default_factory=list)
    name: str = "colour"

    def generate(
        self,
        prompt: str | list[str],
        negative_prompt: str = "",
        liked: Sequence[Any] = (),
        disliked: Sequence[Any] = (),
        params: FabricParams = FabricParams(),
        n_images: int = 4,
        seed: int | Sequence[int] = 0,
        height: int | None = None,
        width: int | None = None,
    ) -> list[Image.Image]:
        seeds = [seed] * n_images if isinstance(seed, int) else list(seed)
        assert len(seeds) == n_images
        liked, disliked = load_images(liked), load_images(disliked)  # images, paths or ReferenceImages
        if params.max_references is not None:
            liked = liked[-params.max_references :]
        self.calls.append(
            {
                "prompt": prompt,
                "params": params,
                "seeds": seeds,
                "liked": [im.getpixel((0, 0)) for im in liked],
                "disliked": [im.getpixel((0, 0)) for im in disliked],
            }
        )
        pull = params.max_weight * (1.0 - params.feedback_start) if liked else 0.0
        if liked:
            target = [sum(im.getpixel((0, 0))[c] for im in liked) / len(liked) for c in range(3)]
        images = []
        for s in seeds:
            base = _seed_colour(s, prompt)
            colour = [base[c] + pull * (target[c] - base[c]) if liked else base[c] for c in range(3)]
            images.append(Image.new("RGB", (width or SIZE, height or SIZE), tuple(int(round(v)) for v in colour)))
        return images


@dataclass
class BatchingColourGenerator(ColourGenerator):
    """A ``ColourGenerator`` that also takes several prompts per call (``generate_many``) and
    records the prompts of each such call."""

    batches: list[list[str]] = field(default_factory=list)

    def generate_many(
        self, requests, params: FabricParams = FabricParams(), height=None, width=None
    ) -> list[list[Image.Image]]:
        self.batches.append([r.prompt for r in requests])
        return [
            self.generate(
                r.prompt, r.negative_prompt, r.liked, r.disliked, params, len(r.seeds), list(r.seeds), height, width
            )
            for r in requests
        ]


class ChannelObjective(RewardModel):
    """Mean of one colour channel, in [0, 100]; ``with_target`` -> closeness to a colour."""

    takes_target = True

    def __init__(self, channel: int = 0, name: str = "red", direction: str = "maximize", target=None) -> None:
        self.channel, self.name, self.direction, self.target = channel, name, direction, target
        self.calls = 0

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        pixels = torch.tensor([im.getpixel((0, 0)) for im in images], dtype=torch.float32)
        if self.target is not None:
            return -torch.linalg.vector_norm(pixels - torch.tensor(self.target, dtype=torch.float32), dim=-1)
        return pixels[:, self.channel] / 2.55

    def with_target(self, image: Image.Image) -> ChannelObjective:
        return ChannelObjective(self.channel, f"{self.name}-target", self.direction, image.getpixel((0, 0)))


class NaNObjective(RewardModel):
    name = "nan"

    def _score(self, images, prompts) -> torch.Tensor:
        return torch.full((len(images),), float("nan"))


@pytest.fixture
def generator() -> ColourGenerator:
    return ColourGenerator()


@pytest.fixture
def red() -> ChannelObjective:
    return ChannelObjective(0, "red")


@pytest.fixture
def blue() -> ChannelObjective:
    return ChannelObjective(2, "blue")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The GP fits are tiny: extra threads only contend with other test processes.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def standins():
    """The stand-in classes, for tests that build more than one of them."""
    import types

    return types.SimpleNamespace(
        ColourGenerator=ColourGenerator,
        BatchingColourGenerator=BatchingColourGenerator,
        ChannelObjective=ChannelObjective,
        NaNObjective=NaNObjective,
        MultiObjective=MultiObjective,
    )
