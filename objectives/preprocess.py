"""Image preprocessing, one explicit recipe per reward model.

Reward models are sensitive to how an image reaches them: PickScore, CLIP and the aesthetic
heads see a *centre crop* of the image, HPS v2 sees the *whole* image letterboxed with black.
Each recipe is a frozen :class:`ImagePreprocess` naming its operations, so tests can check them
against the reference transforms (DESIGN section 5):

=================  ===============================================================
recipe             operations
=================  ===============================================================
``openai_clip``    shortest edge -> 224 (bicubic), centre crop 224, OpenAI mean/std
                   (CLIP, HPS v1, LAION aesthetic, CLIP score)
``pickscore``      the same through transformers' CLIP processor (crop offset floored)
``hps_v2``         longest edge -> 224 (bicubic), centre zero-pad to 224x224,
                   OpenAI mean/std, no crop
``dino``           shortest edge -> 256 (bicubic), centre crop 224, ImageNet mean/std
=================  ===============================================================

Resizing uses PIL, exactly as torchvision's ``Resize`` on PIL images (OpenAI CLIP, open_clip)
and transformers' PIL image processors do; tiny test models use the same recipe at a smaller
``size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from fabric.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "ImagePreprocess",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "openai_clip",
    "pickscore",
    "hps_v2",
    "dino",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePreprocess:
    """PIL images -> a normalised ``[n, 3, size, size]`` float32 tensor.

    Steps: convert to RGB; resize so that the ``resize`` edge equals ``resize_to`` keeping the
    aspect ratio; centre-crop or centre-pad (with ``fill``) to ``size x size``; scale to [0, 1];
    normalise with ``mean``/``std``. With ``resize="shortest"`` the image covers the square and
    is cropped; with ``"longest"`` it fits inside and is padded.
    """

    size: int = 224
    resize: Literal["shortest", "longest"] = "shortest"
    resize_to: int | None = None  # edge length after resizing; None = size (DINO: 256 for 224)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    fill: int = 0  # padding value in 0..255, before normalisation
    # Centre-crop offset for odd margins: "round" = torchvision's CenterCrop (OpenAI CLIP,
    # open_clip, DINOv2), "floor" = transformers' PIL image processors (PickScore's processor).
    crop_rounding: Literal["round", "floor"] = "round"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise InvalidParameterError(f"size must be a positive integer, got {self.size!r}")
        if self.resize not in ("shortest", "longest"):
            raise InvalidParameterError(f"resize must be 'shortest' or 'longest', got {self.resize!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise InvalidParameterError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.resize_to is not None and self.resize_to < 1:
            raise InvalidParameterError(f"resize_to must be positive, got {self.resize_to!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InvalidParameterError("mean and std need three values each, std > 0")
        if not 0 <= self.fill <= 255:
            raise InvalidParameterError(f"fill must be in 0..255, got {self.fill!r}")
        if self.crop_rounding not in ("round", "floor"):
            raise InvalidParameterError(f"crop_rounding must be 'round' or 'floor', got {self.crop_rounding!r}")

    def with_size(self, size: int) -> ImagePreprocess:
        """The same recipe at another input size (``resize_to`` scales along)."""
        resize_to = None if self.resize_to is None else round(self.resize_to * size / self.size)
        return replace(self, size=size, resize_to=resize_to)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step."""
        target = self.size if self.resize_to is None else self.resize_to
        if self.resize == "shortest":
            # torchvision / transformers: the short edge is exact, the long one truncated
            if width <= height:
                return target, int(target * height / width)
            return int(target * width / height), target
        # open_clip ResizeKeepRatio(longest=1) / HPS v2 ResizeMaxSize: both edges rounded
        scale = target / max(width, height)
        return round(width * scale), round(height * scale)

    def pil(self, image: Image.Image) -> Image.Image:
        """The resized, cropped or padded RGB image, before normalisation (for inspection)."""
        from PIL import Image

        image = image.convert("RGB")
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        width, height = self.resized_size(*image.size)
        if (width, height) != image.size:
            image = image.resize((width, height), resample)
        canvas = Image.new("RGB", (self.size, self.size), (self.fill,) * 3)
        # negative offsets crop, positive ones pad (smaller half first, like open_clip's CenterCropOrPad)
        canvas.paste(image, (self._offset(width), self._offset(height)))
        return canvas

    def _offset(self, length: int) -> int:
        if length <= self.size:
            return (self.size - length) // 2
        margin = length - self.size
        return -(margin // 2 if self.crop_rounding == "floor" else int(round(margin / 2.0)))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocesses ``n`` images into a float32 tensor of shape ``[n, 3, size, size]``."""
        import numpy as np
        import torch

        pixels = np.stack([np.asarray(self.pil(image), dtype=np.uint8) for image in images])  # (n, H, W, 3)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


def openai_clip(size: int = 224) -> ImagePreprocess:
    """OpenAI CLIP's transform (PickScore, HPS v1, aesthetic, CLIP score)."""
    return ImagePreprocess(size=size, resize="shortest")


def pickscore(size: int = 224) -> ImagePreprocess:
    """PickScore's processor (transformers' CLIP image processor): OpenAI CLIP's recipe with
    transformers' floor rounding of the crop offset."""
    return ImagePreprocess(size=size, resize="shortest", crop_rounding="floor")


def hps_v2(size: int = 224) -> ImagePreprocess:
    """HPS v2's evaluation transform: the whole image, letterboxed with black."""
    return ImagePreprocess(size=size, resize="longest", fill=0)


def dino(size: int = 224) -> ImagePreprocess:
    """DINO / DINOv2's evaluation transform (resize 256, crop 224, ImageNet statistics)."""
    return ImagePreprocess(
        size=size, resize="shortest", resize_to=round(size * 256 / 224), mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
