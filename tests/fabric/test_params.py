import dataclasses
import json

import pytest

from fabric import FabricParams
from fabric.errors import InvalidParameterError


def test_defaults_are_the_paper_settings():
    p = FabricParams()
    assert (p.feedback_start, p.feedback_end, p.max_weight, p.min_weight, p.neg_scale) == (0.0, 0.8, 0.3, 0.0, 0.5)
    assert p == FabricParams.paper()
    assert FabricParams.a1111().max_weight == 0.8


def test_dict_and_json_round_trip_exactly():
    p = FabricParams(
        feedback_start=0.1234567891234,
        feedback_end=0.9,
        max_weight=0.77,
        min_weight=0.01,
        max_references=3,
        prompt_dropout=0.25,
        steps=17,
    )
    assert FabricParams.from_dict(p.to_dict()) == p
    assert FabricParams.from_json(p.to_json()) == p
    assert json.loads(p.to_json())["max_references"] == 3


def test_ints_stay_ints_and_integral_floats_are_accepted():
    p = FabricParams(steps=20.0, max_references=4.0)
    assert isinstance(p.steps, int) and isinstance(p.max_references, int)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"feedback_start": 0.9, "feedback_end": 0.1}, "must not exceed feedback_end"),
        ({"max_weight": -0.1}, "max_weight must be >= 0"),
        ({"min_weight": 0.5, "max_weight": 0.2}, "min_weight"),
        ({"prompt_dropout": 1.0}, "prompt_dropout"),
        ({"feedback_end": 1.5}, "feedback_end"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "integer"),
        ({"max_references": 0}, "max_references"),
        ({"neg_scale": float("nan")}, "finite"),
        ({"guidance_scale": "7"}, "number"),
    ],
)
def test_invalid_values_raise_one_line_errors(kwargs, fragment):
    with pytest.raises(InvalidParameterError) as info:
        FabricParams(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_unknown_keys_are_rejected():
    with pytest.raises(InvalidParameterError, match="unknown FABRIC parameter"):
        FabricParams.from_dict({"max_weigth": 0.5})


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FabricParams().max_weight = 1.0  # type: ignore[misc]
