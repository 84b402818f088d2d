"""Reading and validating reference images; stable content keys for caching."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

from fabric.errors import ImageError

__all__ = ["ImageLike", "ReferenceImage", "load_image", "load_images", "load_reference", "image_key", "make_grid"]


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

# 8-bit modes that convert to RGB without losing meaning; 16-bit, float and CMYK-like modes
# would be silently clipped or mis-coloured, so they are refused.
_CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P"}


def _check_mode(img: Image.Image, where: str) -> Image.Image:
    if img.mode not in _CONVERTIBLE_MODES:
        raise ImageError(
            f"{where}: unsupported image mode {img.mode!r} (16-bit, float or non-RGB colour space); "
            "convert it to 8-bit RGB first"
        )
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        # composite on white: transparent pixels have no defined colour
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image or a path; raises :class:`ImageError` on bad input."""
    if isinstance(image, ReferenceImage):
        image = image.image
    if isinstance(image, Image.Image):
        return _check_mode(image, "image")
    if not isinstance(image, (str, Path)):
        raise ImageError(f"expected a PIL image or a path, got {type(image).__name__}")
    path = Path(image).expanduser()
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _check_mode(img, str(path))
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
