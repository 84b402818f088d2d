"""The showcase: first and final rounds per parameter set, on the study's seeds and user."""

from __future__ import annotations

import numpy as np
import pytest

from fabric.errors import ConfigError
from fabric.fabric_generator import prompts_after_dropout
from fabric.params import FabricParams
from optimize.protocol import Protocol, TrialEvaluator
from optimize.showcase import _text_block, describe_params, describe_user, feedback_showcase, row_notes
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


def _notes_height(evaluator, label, params, feedback, width):
    notes = row_notes(evaluator, label, params, feedback, ("paper", FabricParams(steps=2)), prompt=0)
    return _text_block(notes, width).height


def test_layout_is_a_user_header_then_a_block_per_prompt_and_a_row_per_parameter_set(evaluator):
    strong = FabricParams(steps=2, max_weight=0.9)
    image = feedback_showcase(evaluator, {"strong": strong}, prompts=[0, 1])
    kept, base = _rows(evaluator, strong, True), _rows(evaluator, evaluator.space.base, False)
    plain, marked = _grid(base[0], "x"), _grid(kept[0], "x")  # the first round with feedback marks the user's pick
    assert kept[0][2] is not None and base[0][2] is None and marked.height > plain.height
    row_w = 2 * plain.width + 12
    assert image.width == row_w
    user = _text_block(describe_user(evaluator), row_w, bold=True).height
    prompt_header = _text_block(["prompt: ..."], row_w).height
    notes = _notes_height(evaluator, "no feedback", SPACE.base, False, row_w) + _notes_height(
        evaluator, "strong", strong, True, row_w
    )
    # the user header; two prompt blocks, each a header and two rows (no feedback, strong) with captions
    block = prompt_header + plain.height + marked.height + notes + 2 * 2 + 2 * 12
    assert image.height == user + 12 + 2 * block + 12


def test_rows_show_the_evaluators_rounds_and_feedback_helps(evaluator):
    strong = FabricParams(steps=2, max_weight=0.9)
    image = np.asarray(feedback_showcase(evaluator, {"strong": strong}, prompts=[1]))
    kept, base = _rows(evaluator, strong, True), _rows(evaluator, evaluator.space.base, False)
    assert sum(kept[2][1]["red"]) > sum(base[2][1]["red"])  # the user's taste, pulled by feedback
    plain = _grid(base[0], "x")
    row_w = 2 * plain.width + 12
    top = _text_block(describe_user(evaluator), row_w, bold=True).height + 12 + _text_block(["p"], row_w).height + 12
    y_base = top
    y_strong = y_base + plain.height + 2 + _notes_height(evaluator, "no feedback", SPACE.base, False, row_w) + 12
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


def test_the_header_says_who_the_user_is_and_what_the_guard_keeps(generator, red, blue):
    from optimize.protocol import Guard

    red.description = "likes red images"
    protocol = Protocol(("a fox",), validation_prompts=("a cat",), rounds=2, n_images=3, temperature=0.1)
    guarded = TrialEvaluator(generator, red, protocol, SPACE, guard=Guard(blue, FabricParams(steps=2), "paper"))
    user, guard = describe_user(guarded)
    assert user.startswith("simulated user: likes red images; a noisy user (Bradley-Terry, temperature 0.1)")
    assert "may not lose blue" in guard and "the paper defaults'" in guard
    greedy = TrialEvaluator(generator, blue, Protocol(("a fox",), rounds=2, n_images=3), SPACE)
    assert describe_user(greedy) == [
        "simulated user: prefers images that blue scores higher; after each round it likes the best image and "
        "dislikes the worst"
    ]


def test_captions_say_how_a_row_differs_and_what_dropout_dropped(evaluator, generator):
    paper = FabricParams(steps=2)
    tuned = paper.replace(max_weight=0.9, min_weight=0.5, prompt_dropout=0.5)
    assert describe_params(tuned, paper) == ["min_weight 0 -> 0.5", "max_weight 0.3 -> 0.9", "prompt_dropout 0 -> 0.5"]
    assert row_notes(evaluator, "paper", paper, True, ("paper", paper))[0].startswith("paper: the FABRIC paper's")
    assert row_notes(evaluator, "no feedback", paper, False, ("paper", paper)) == [
        "no feedback: the same seeds and prompt, nothing liked or disliked"
    ]
    notes = row_notes(evaluator, "tuned", tuned, True, ("paper", paper), prompt=1)
    assert (
        notes[0] == "tuned differs from paper in: min_weight 0 -> 0.5, max_weight 0.3 -> 0.9, prompt_dropout 0 -> 0.5"
    )
    assert [n.split(":")[0] for n in notes[1:]] == ["prompt dropout 0.5"] * 2  # the first and the final round
    # the seeds of the note are the seeds the round was generated with
    evaluator.run_prompt(tuned, 1, split="validation")
    first = [c for c in generator.calls if c["params"] == tuned][0]
    assert first["seeds"] == evaluator.round_seeds("validation", 0, 1, 0)
    dropped = prompts_after_dropout(["a dog"] * 3, first["seeds"], 0.5)
    assert notes[1].endswith(", ".join(f"{i + 1}: {d!r}" for i, d in enumerate(dropped)))


def test_bad_requests_are_config_errors(evaluator):
    with pytest.raises(ConfigError, match="at least one"):
        feedback_showcase(evaluator, {})
    with pytest.raises(ConfigError, match="out of range"):
        feedback_showcase(evaluator, {"x": FabricParams(steps=2)}, prompts=[5])
