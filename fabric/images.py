"""Reading and validating reference images; stable content keys for caching."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

from fabric.errors import ImageError

__all__ = [
    "ImageLike",
    "ReferenceImage",
    "load_image",
    "load_images",
    "load_reference",
    "image_key",
    "make_grid",
    "to_rgb",
]


@dataclass(frozen=True)
class ReferenceImage:
    """A liked or disliked image together with its identity in a feedback session.

    FABRIC noises every reference to each step's noise level; that noise is seeded by ``key``.
    A plain image or path is keyed by its exact pixels, which is stable for files and for images
    made on the exact path. Where images come from a computation that is only reproducible up to
    float rounding (prompt batching, the fused reference pass), one pixel rounding the other way
    would redraw all of a reference's noise; keying it by where it came from (a study's seed,
    prompt, round and image index) keeps such a difference at rounding size.

    Attributes:
        image: a PIL image or a path.
        key: the identity that seeds the reference's noise, e.g. ``"seed:1234"``.
    """

    image: Image.Image | str | Path
    key: str

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ImageError(f"a ReferenceImage needs a non-empty string key, got {self.key!r}")


ImageLike = Union[Image.Image, str, Path, ReferenceImage]

# PIL modes with an alpha channel: composited on white, since transparent pixels have no colour
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# integer modes wider than 8 bits (16-bit PNGs and TIFFs open as these) and float images
_DEEP_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def to_rgb(img: Image.Image, where: str = "image") -> Image.Image:
    """An 8-bit RGB copy of any still image PIL can read, as diffusers' ``load_image``, A1111 and
    ComfyUI accept them.

    Alpha is composited on white; palette, grayscale, bilevel, CMYK (print and stock workflows),
    YCbCr and LAB convert through PIL; 16-bit integer images are scaled from ``[0, 65535]``
    (32-bit ``I`` images holding 16-bit data, as PIL opens 16-bit PNGs, the same way), and float
    images from ``[0, 1]`` when their values lie there, else from ``[0, 255]``, clipped.

    Raises:
        ImageError: a mode no image of this kind can be read in.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in _DEEP_MODES:
        import numpy as np

        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0 if np.nanmax(values, initial=0.0) > 255 or img.mode.startswith("I;16") else 1.0
        eight = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(eight, mode="L").convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{where}: image mode {img.mode!r} cannot be converted to RGB ({exc})") from None


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image or a path; raises :class:`ImageError` on bad input."""
    if isinstance(image, ReferenceImage):
        image = image.image
    if isinstance(image, Image.Image):
        return to_rgb(image, "image")
    if not isinstance(image, (str, Path)):
        raise ImageError(f"expected a PIL image or a path, got {type(image).__name__}")
    path = Path(image).expanduser()
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img, str(path))
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"cannot read image {path}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'corrupt file'}"
        ) from None


def load_images(images: Iterable[ImageLike]) -> list[Image.Image]:
    return [load_image(img) for img in images]


def load_reference(image: ImageLike) -> tuple[Image.Image, str | None]:
    """``(RGB image, identity key)``: a :class:`ReferenceImage`'s key, ``None`` for a plain image or path."""
    return load_image(image), image.key if isinstance(image, ReferenceImage) else None


def image_key(image: Image.Image) -> str:
    """A content hash: equal pixels give equal keys, whatever object holds them."""
    h = hashlib.sha1()
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def make_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    """Tile same-sized images into one image, ``cols`` per row (default: all in one row)."""
    if not images:
        raise ValueError("no images to tile")
    cols = cols or len(images)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid
