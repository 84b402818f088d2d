"""The closeness measures of the steering benchmark (bench/toy_pull.py) on rendered scenes."""

from __future__ import annotations

from toyworld.scenes import Scene, Shape, render


def _image(kind: str, colour: str, background: str, x: float = 0.5):
    return render(Scene((Shape(kind, colour, "large", x, 0.5),), background))


def test_an_image_is_closest_to_itself_and_attributes_beat_pixels_on_a_moved_shape(classifier):
    from bench.toy_pull import _closeness

    reference = [_image("circle", "red", "black")]
    distance, agreement = _closeness(classifier, reference, reference)
    assert distance < 1e-6 and agreement == 1.0
    moved = _closeness(classifier, [_image("circle", "red", "black", x=0.3)], reference)
    other = _closeness(classifier, [_image("square", "blue", "white")], reference)
    assert moved[0] < other[0]  # nearer in pixels
    assert moved[1] == 1.0 and other[1] < 0.5  # all 5 attributes agree vs colour, kind, background differ


def test_pull_prompts_name_no_colour_and_no_kind():
    from bench.toy_pull import pull_prompts
    from toyworld.scenes import COLOURS, SHAPES

    prompts = pull_prompts()
    assert len(prompts) >= 16 and len(set(prompts)) == len(prompts)
    for prompt in prompts:
        shape_words = prompt.split(" on a ")[0].split()
        assert not set(shape_words) & (set(COLOURS) | set(SHAPES)), prompt
