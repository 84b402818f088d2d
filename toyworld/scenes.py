"""Procedural toy scenes: one or two coloured shapes on a plain background, with captions.

Every image comes with its attributes, so a generated image can be checked against the prompt
it was made from. Everything here is pure Python + PIL and deterministic under a seed.

Example:
    >>> scenes = sample_scenes(2, seed=0)
    >>> caption(scenes[0])  # doctest: +SKIP
    'a small red star on a blue background'
    >>> render(scenes[0]).size
    (64, 64)
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fabric.errors import InvalidParameterError

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    "COLOURS",
    "BACKGROUNDS",
    "SHAPES",
    "SIZES",
    "WARM_COLOURS",
    "COOL_COLOURS",
    "IMAGE_SIZE",
    "Shape",
    "Scene",
    "caption",
    "partial_caption",
    "render",
    "sample_scene",
    "sample_scenes",
    "is_held_out",
    "held_out_scenes",
]

IMAGE_SIZE = 64

# Shape colours: saturated and far apart in RGB so that a 64x64 image (or a blurry generated
# one) still says which colour it is.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 230, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 235),
    "purple": (140, 50, 200),
    "pink": (250, 120, 190),
    "white": (245, 245, 245),
}
WARM_COLOURS = ("red", "orange", "yellow", "pink")
COOL_COLOURS = ("green", "blue", "purple")

# Backgrounds are darker or paler than the shape colour of the same name, and a shape never
# takes its background's colour name (see ``_compatible``).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 20),
    "gray": (120, 120, 125),
    "white": (235, 235, 230),
    "blue": (20, 40, 120),
    "green": (20, 90, 40),
    "brown": (110, 70, 35),
}

SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES: dict[str, float] = {"small": 0.12, "large": 0.22}  # radius as a fraction of the side

_SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges


@dataclass(frozen=True)
class Shape:
    """One shape in a scene.

    Attributes:
        kind: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS`.
        size: ``"small"`` or ``"large"``.
        x: centre, as a fraction of the width (0 = left).
        y: centre, as a fraction of the height (0 = top).
        rotation: degrees, counter-clockwise (ignored for circles).
    """

    kind: str
    colour: str
    size: str
    x: float = 0.5
    y: float = 0.5
    rotation: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SHAPES:
            raise InvalidParameterError(f"unknown shape {self.kind!r}; choose from {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise InvalidParameterError(f"unknown colour {self.colour!r}; choose from {', '.join(COLOURS)}")
        if self.size not in SIZES:
            raise InvalidParameterError(f"unknown size {self.size!r}; choose from {', '.join(SIZES)}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise InvalidParameterError(f"shape centre must lie in [0, 1]^2, got ({self.x}, {self.y})")

    @property
    def radius(self) -> float:
        """Radius as a fraction of the image side."""
        return SIZES[self.size]

    def describe(self) -> str:
        """``"small red star"``."""
        return f"{self.size} {self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """A background and one or two shapes (drawn in order, none overlapping)."""

    shapes: tuple[Shape, ...]
    background: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", tuple(self.shapes))
        if not 1 <= len(self.shapes) <= 2:
            raise InvalidParameterError(f"a scene holds 1 or 2 shapes, got {len(self.shapes)}")
        if self.background not in BACKGROUNDS:
            raise InvalidParameterError(f"unknown background {self.background!r}; choose from {', '.join(BACKGROUNDS)}")

    @property
    def count(self) -> int:
        return len(self.shapes)

    @property
    def colours(self) -> frozenset[str]:
        return frozenset(s.colour for s in self.shapes)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(s.kind for s in self.shapes)

    @property
    def sizes(self) -> frozenset[str]:
        return frozenset(s.size for s in self.shapes)


def caption(scene: Scene) -> str:
    """The scene in words: ``"a small red star and a large blue circle on a black background"``."""
    things = " and ".join(f"a {s.describe()}" for s in scene.shapes)
    return f"{things} on a {scene.background} background"


def partial_caption(scene: Scene, rng: random.Random, keep: float = 0.5) -> str:
    """A caption that leaves some attributes unsaid: ``"a red shape"``, ``"a star on a blue background"``.

    Each of a shape's size, colour and kind, and the background, is kept with probability
    ``keep`` (an unnamed kind is "shape"). Training on such captions lets the toy model draw
    under-specified prompts with varied attributes, which is where feedback has room to steer.
    The full caption is :func:`caption`.
    """

    def shape_words(s: Shape) -> str:
        words = [w for w in (s.size, s.colour) if rng.random() < keep]
        return " ".join(["a", *words, s.kind if rng.random() < keep else "shape"])

    things = " and ".join(shape_words(s) for s in scene.shapes)
    return f"{things} on a {scene.background} background" if rng.random() < keep else things


def _polygon(shape: Shape, side: float) -> list[tuple[float, float]]:
    cx, cy, r = shape.x * side, shape.y * side, shape.radius * side
    theta0 = math.radians(shape.rotation)

    def ring(n: int, radii: Sequence[float], offset: float) -> list[tuple[float, float]]:
        out = []
        for i in range(n):
            a = theta0 + offset + 2 * math.pi * i / n
            rr = radii[i % len(radii)]
            out.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
        return out

    if shape.kind == "square":
        return ring(4, [r], math.pi / 4)
    if shape.kind == "triangle":
        # a circumradius of r would leave the triangle visibly smaller than the other shapes
        return ring(3, [1.15 * r], math.pi / 2)
    if shape.kind == "star":
        return ring(10, [1.1 * r, 0.45 * r], math.pi / 2)
    if shape.kind == "cross":
        w = 0.36 * r
        pts = [
            (w, r),
            (w, w),
            (r, w),
            (r, -w),
            (w, -w),
            (w, -r),
            (-w, -r),
            (-w, -w),
            (-r, -w),
            (-r, w),
            (-w, w),
            (-w, r),
        ]
        c, s = math.cos(theta0), math.sin(theta0)
        return [(cx + px * c - py * s, cy - (px * s + py * c)) for px, py in pts]
    raise AssertionError(shape.kind)


def render(scene: Scene, size: int = IMAGE_SIZE) -> PIL.Image.Image:
    """Draw a scene as an RGB ``PIL.Image`` of ``size x size`` pixels (anti-aliased)."""
    from PIL import Image, ImageDraw

    big = size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for shape in scene.shapes:
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            cx, cy, r = shape.x * big, shape.y * big, shape.radius * big
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_polygon(shape, big), fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def _compatible(colour: str, background: str) -> bool:
    return colour != background


def sample_scene(rng: random.Random, n_shapes: int | None = None) -> Scene:
    """Draw one random scene from ``rng`` (a ``random.Random``).

    Args:
        rng: the source of randomness; the same state gives the same scene.
        n_shapes: 1 or 2; ``None`` draws it (60 % one shape).
    """
    if n_shapes is None:
        n_shapes = 1 if rng.random() < 0.6 else 2
    background = rng.choice(list(BACKGROUNDS))
    shapes: list[Shape] = []
    while len(shapes) < n_shapes:
        kind = rng.choice(SHAPES)
        colour = rng.choice([c for c in COLOURS if _compatible(c, background)])
        size = rng.choice(list(SIZES))
        r = SIZES[size] * 1.15  # room for the triangle's and star's longer arms
        for _ in range(100):
            x, y = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
            if all(math.hypot(x - o.x, y - o.y) > r + o.radius * 1.15 + 0.03 for o in shapes):
                break
        else:  # no room left: start the scene's shapes over
            shapes = []
            continue
        shapes.append(Shape(kind, colour, size, x, y, rng.uniform(-30.0, 30.0)))
    return Scene(tuple(shapes), background)


def is_held_out(scene: Scene) -> bool:
    """Whether the scene's caption belongs to the held-out split (about 1 caption in 8).

    The split is a hash of the caption, so the toy model never trains on a held-out caption and
    benchmarks can ask it for prompts it has not seen (made of words it has seen).
    """
    return zlib.crc32(caption(scene).encode()) % 8 == 0


def sample_scenes(n: int, seed: int = 0, split: str = "all", n_shapes: int | None = None) -> list[Scene]:
    """``n`` random scenes, the same for the same ``seed``.

    Args:
        n: how many scenes.
        seed: seeds a private ``random.Random``; global random state is untouched.
        split: ``"all"``, ``"train"`` (captions not held out) or ``"heldout"``.
        n_shapes: fix the number of shapes (1 or 2); ``None`` mixes both.
    """
    if n < 0:
        raise InvalidParameterError(f"n must be >= 0, got {n}")
    if split not in ("all", "train", "heldout"):
        raise InvalidParameterError(f"split must be 'all', 'train' or 'heldout', got {split!r}")
    if n_shapes not in (None, 1, 2):
        raise InvalidParameterError(f"n_shapes must be 1, 2 or None, got {n_shapes!r}")
    rng = random.Random(seed)
    out: list[Scene] = []
    while len(out) < n:
        scene = sample_scene(rng, n_shapes)
        if split == "all" or (split == "heldout") == is_held_out(scene):
            out.append(scene)
    return out


def held_out_scenes(n: int, seed: int = 0, n_shapes: int | None = 1) -> list[Scene]:
    """``n`` scenes whose captions the toy model never saw in training."""
    return sample_scenes(n, seed=seed, split="heldout", n_shapes=n_shapes)
