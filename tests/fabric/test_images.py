"""Reading reference and target images: every everyday still image becomes 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fabric.errors import ImageError
from fabric.images import ReferenceImage, image_key, load_image, load_reference


def _pixel(image: Image.Image) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel((0, 0))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("CMYK", (8, 8), (0, 255, 0, 0)), (255, 0, 255)),  # magenta ink
        (lambda: Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), (255, 255, 255)),  # 16-bit white
        (lambda: Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)), (128, 128, 128)),  # 16-bit mid grey
        (lambda: Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)), (128, 128, 128)),  # float in [0, 1]
        (lambda: Image.fromarray(np.full((8, 8), 200.0, dtype=np.float32)), (200, 200, 200)),  # float in [0, 255]
        (lambda: Image.new("LA", (8, 8), (0, 0)), (255, 255, 255)),  # transparent: white
        (lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 255)), (255, 0, 0)),
        (lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
        (lambda: Image.new("YCbCr", (8, 8), (76, 85, 255)), None),  # red-ish; only the mode is checked
    ],
    ids=["cmyk", "16-bit", "16-bit-grey", "float-unit", "float-255", "la", "rgba", "bilevel", "ycbcr"],
)
def test_everyday_modes_convert_to_8bit_rgb(make, expected):
    image = load_image(make())
    if expected is not None:
        assert _pixel(image) == expected
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    "suffix, make",
    [
        (".jpg", lambda: Image.new("CMYK", (8, 8), (0, 255, 0, 0))),
        (".png", lambda: Image.fromarray(np.full((8, 8), 40000, np.uint16))),
    ],
)
def test_files_in_those_modes_read_as_rgb(tmp_path, suffix, make):
    path = tmp_path / f"image{suffix}"
    make().save(path)
    assert load_image(path).mode == "RGB"


def test_what_cannot_be_an_image_is_a_one_line_error(tmp_path):
    for data in (b"", b"not an image", b"\x89PNG\r\n\x1a\ntruncated"):
        path = tmp_path / "bad.png"
        path.write_bytes(data)
        with pytest.raises(ImageError, match="cannot read image") as error:
            load_image(path)
        assert "\n" not in str(error.value)
    with pytest.raises(ImageError, match="expected a PIL image or a path"):
        load_image(42)


def test_a_reference_image_carries_its_key():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    assert load_reference(red) == (red, None)
    image, key = load_reference(ReferenceImage(red, "seed:3"))
    assert key == "seed:3" and image_key(image) == image_key(red)
    with pytest.raises(ImageError, match="non-empty string key"):
        ReferenceImage(red, "")
