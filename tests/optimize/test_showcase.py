"""The showcase: first and final rounds per parameter set, on the study's seeds and user."""

from __future__ import annotations

import numpy as np
import pytest

from fabric.errors import ConfigError
from fabric.params import FabricParams
from optimize.protocol import Protocol, TrialEvaluator
from optimize.showcase import feedback_showcase
from optimize.space import FloatParam, SearchSpace
from optimize.tracking import reward_grid

SPACE = SearchSpace((FloatParam("max_weight", 0.0, 1.0),), base=FabricParams(steps=2))


@pytest.fixture()
def evaluator(generator, red):
    protocol = Protocol(("a fox",), validation_prompts=("a cat", "a dog"), rounds=3, n_images=3)
    return TrialEvaluator(generator, red, protocol, SPACE)


def _rows(evaluator, params, feedback):
    kept = {}
    evaluator.run_prompt(
        params,
        1,
        feedback=feedback,
        on_round=lambda p, r, images, scores, choice: kept.setdefault(r, (images, scores, choice)),
    )
    return kept


def _grid(kept_round, title=None):
    images, scores, choice = kept_round
    return reward_grid(images, scores, title=title, choice=choice)


def test_layout_is_a_block_per_prompt_and_a_row_per_parameter_set(evaluator):
    strong = FabricParams(steps=2, max_weight=0.9)
    image = feedback_showcase(evaluator, {"strong": strong}, prompts=[0, 1])
    kept, base = _rows(evaluator, strong, True), _rows(evaluator, evaluator.space.base, False)
    plain, marked = _grid(base[0], "x"), _grid(kept[0], "x")  # the first round with feedback marks the user's pick
    assert kept[0][2] is not None and base[0][2] is None and marked.height > plain.height
    row_w = 2 * plain.width + 12
    # two prompt blocks, each a header and two rows (no feedback, strong), 12 px apart
    assert image.width == row_w
    assert image.height == 2 * (26 + plain.height + marked.height + 2 * 12) + 12


def test_rows_show_the_evaluators_rounds_and_feedback_helps(evaluator):
    strong = FabricParams(steps=2, max_weight=0.9)
    image = np.asarray(feedback_showcase(evaluator, {"strong": strong}, prompts=[1]))
    kept, base = _rows(evaluator, strong, True), _rows(evaluator, evaluator.space.base, False)
    assert sum(kept[2][1]["red"]) > sum(base[2][1]["red"])  # the user's taste, pulled by feedback
    plain = _grid(base[0], "x")
    y_base, y_strong = 26 + 12, 26 + 12 + plain.height + 12
    title_h = plain.height - _grid(base[0]).height

    def crop(y, right, height):  # the images, below the row's title
        x = plain.width + 12 if right else 0
        return image[y + title_h : y + height, x : x + plain.width]

    # round 1 has no feedback yet: the same images in both rows (the strong row frames the user's pick)
    first_base = crop(y_base, False, plain.height)
    assert np.array_equal(first_base, np.asarray(_grid(base[0]))[:, : plain.width])
    assert np.array_equal(crop(y_strong, False, plain.height), np.asarray(_grid(kept[0]))[: plain.height - title_h])
    assert np.array_equal(np.asarray(_grid(kept[0][:2] + (None,))), np.asarray(_grid(base[0])))
    # the last rounds differ
    assert not np.array_equal(crop(y_base, True, plain.height), crop(y_strong, True, plain.height))


def test_bad_requests_are_config_errors(evaluator):
    with pytest.raises(ConfigError, match="at least one"):
        feedback_showcase(evaluator, {})
    with pytest.raises(ConfigError, match="out of range"):
        feedback_showcase(evaluator, {"x": FabricParams(steps=2)}, prompts=[5])
