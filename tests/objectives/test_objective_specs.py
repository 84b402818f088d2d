"""Objective specs: weighted sums, Pareto tuples, and their errors."""

from __future__ import annotations

import pytest
import torch

import objectives
from fabric.errors import ConfigError, WeightsNotFoundError
from objectives.composite import CompositeObjective, MultiObjective, parse_spec

PROMPT = "a red circle"


def test_spec_grammar():
    assert parse_spec("pickscore") == [[(1.0, "pickscore")]]
    assert parse_spec(" pickscore + 0.5*aesthetic ") == [[(1.0, "pickscore"), (0.5, "aesthetic")]]
    assert parse_spec("-2*diversity+HPSv2.1") == [[(-2.0, "diversity"), (1.0, "hpsv21")]]
    assert parse_spec("pickscore-1e-1*diversity,aesthetic") == [
        [(1.0, "pickscore"), (-0.1, "diversity")],
        [(1.0, "aesthetic")],
    ]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "empty objective spec"),
        ("pickscore++aesthetic", "cannot parse"),
        ("pickscore aesthetic", "cannot parse"),
        ("0.5*", "cannot parse"),
        ("pickscore,", "empty part"),
        ("pickscor", r"unknown objective 'pickscor'; known objectives: aesthetic, clipscore, diversity"),
        ("pickscore-diversity", r"to subtract, give a weight: pickscore-1\*diversity"),
    ],
)
def test_bad_specs_raise_one_line_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        objectives.parse_objective(spec, weights="tiny")
    assert "\n" not in str(info.value)


def test_a_plain_name_gives_the_objective_itself():
    objective = objectives.parse_objective("clipscore", weights="tiny")
    assert type(objective).__name__ == "CLIPScore"


def test_weighted_sum_standardises_orients_and_adds(colour_images):
    objective = objectives.parse_objective(
        "pickscore+0.5*aesthetic-2*diversity", weights={"pickscore": "tiny", "aesthetic": "tiny", "diversity": "tiny"}
    )
    assert isinstance(objective, CompositeObjective)
    assert objective.direction == "maximize" and objective.name == "pickscore+0.5*aesthetic-2*diversity"
    raw = objective.term_scores(colour_images, PROMPT)
    (_, pick), (_, aes), (_, div) = objective.terms
    expected = (
        (raw[0] - pick.typical[0]) / pick.typical[1]
        + 0.5 * (raw[1] - aes.typical[0]) / aes.typical[1]
        + 2.0 * (raw[2] - div.typical[0]) / div.typical[1]  # minimize term, negative weight: counted up
    )
    assert torch.allclose(objective.score(colour_images, PROMPT), expected, atol=1e-5)
    unnormalised = objectives.parse_objective(
        "pickscore+0.5*aesthetic", weights={"pickscore": "tiny", "aesthetic": "tiny"}, normalize=False
    )
    assert torch.allclose(unnormalised.score(colour_images, PROMPT), raw[0] + 0.5 * raw[1], atol=1e-5)


def test_tuple_is_a_pareto_problem(colour_images):
    multi = objectives.parse_objective(
        "pickscore,diversity", weights={"pickscore": "tiny", "diversity": "tiny"}, batch_size=2
    )
    assert isinstance(multi, MultiObjective)
    assert multi.directions == ("maximize", "minimize") and multi.names == ("pickscore", "diversity")
    scores = multi.score(colour_images, PROMPT)
    assert scores.shape == (len(colour_images), 2)
    assert torch.allclose(scores[:, 0], multi.objectives[0].score(colour_images, PROMPT))
    assert all(o.batch_size == 2 for o in multi.objectives)


def test_weights_table_routes_component_keys_and_ignores_unused_names(offline, colour_images):
    # "clip" is the aesthetic head's backbone; "hpsv2" is not in this spec (another spec may use it)
    objective = objectives.parse_objective("aesthetic", weights={"aesthetic": "tiny", "clip": "tiny", "hpsv2": "/x"})
    assert objective.backbone.preprocess.size == 32
    with pytest.raises(ConfigError, match="unknown objective 'pickscor'"):
        objectives.parse_objective("aesthetic", weights={"pickscor": "tiny"})
    with pytest.raises(ConfigError, match="give weights per objective"):
        objectives.parse_objective("pickscore+aesthetic", weights="tiny")


def test_per_objective_options(colour_images):
    objective = objectives.parse_objective(
        "aesthetic+clipscore",
        weights={"aesthetic": "tiny", "clipscore": "tiny"},
        options={"aesthetic": {"head": "linear"}},
    )
    assert isinstance(objective.terms[0][1].head, torch.nn.Linear)


def test_check_available_takes_whole_specs(offline):
    objectives.check_available(
        "pickscore+0.5*aesthetic,diversity", weights={"pickscore": "tiny", "aesthetic": "tiny", "diversity": "tiny"}
    )
    with pytest.raises(WeightsNotFoundError, match="^diversity: "):
        objectives.check_available("pickscore,diversity", weights={"pickscore": "tiny"})


def test_targets_reach_the_terms_that_take_them(colour_images):
    red, blue = colour_images[0], colour_images[2]
    objective = objectives.parse_objective("target+0.1*clipscore", weights={"target": "tiny", "clipscore": "tiny"})
    assert objective.takes_target
    toward_red, toward_blue = objective.with_target(red), objective.with_target(blue)
    assert toward_red.terms[1][1] is objective.terms[1][1]  # untouched term shared
    assert toward_red.score([red], PROMPT) > toward_blue.score([red], PROMPT)
    multi = objectives.parse_objective("target,diversity", weights={"target": "tiny", "diversity": "tiny"}).with_target(
        red
    )
    assert multi.objectives[0].target_embeddings is not None
