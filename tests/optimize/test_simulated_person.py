"""The simulated person: references from a first round, Bradley-Terry answers, seeded and cached."""

from __future__ import annotations

import math

import pytest

from fabric.errors import ConfigError
from fabric.params import FabricParams
from optimize.preference import PreferenceConfig, PreferenceTuner, Query, run_queries
from optimize.simulated_person import SimulatedPerson, preference_probability
from optimize.space import FloatParam, SearchSpace


def test_preference_probability_is_bradley_terry():
    p = preference_probability([0.3, 0.1], 0.1)
    assert p[0] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert sum(p) == pytest.approx(1.0)
    assert preference_probability([0.1, 0.3, 0.3], 0) == [0.0, 0.5, 0.5]
    three = preference_probability([1.0, 0.0, 0.0], 1.0)
    assert three[0] == pytest.approx(math.e / (math.e + 2))


def test_the_person_likes_the_best_first_image_and_prefers_the_stronger_pull(generator, red):
    person = SimulatedPerson(generator, red, ["a", "b"], n_images=4, temperature=0.0, seed=1)
    context = person.context(0)
    assert context["prompt"] == "a" and len(context["seeds"]) == 4
    assert person.context(1)["prompt"] == "b" and person.context(2)["prompt"] == "a"
    assert person.context(2)["first_seeds"] == context["first_seeds"]  # fixed per prompt
    assert person.context(2)["seeds"] != context["seeds"]  # fresh per query

    liked, disliked = person.references("a", context["first_seeds"])
    assert liked.getpixel((0, 0))[0] >= disliked.getpixel((0, 0))[0]
    weak, strong = FabricParams(max_weight=0.1), FabricParams(max_weight=0.9)
    u_weak, u_strong = person.utilities([weak, strong], context)
    assert u_strong != u_weak
    query = Query(0, ({"max_weight": 0.1}, {"max_weight": 0.9}), context=context)
    assert person(query, [weak, strong]) == (1 if u_strong > u_weak else 0)

    calls = len(generator.calls)
    assert person.utilities([strong, weak], context) == [u_strong, u_weak]
    assert len(generator.calls) == calls  # cached: nothing generated again


def test_noisy_answers_are_seeded_per_query(generator, red):
    def answers(seed: int) -> list[int]:
        person = SimulatedPerson(generator, red, ["a"], n_images=2, temperature=50.0, seed=seed)
        params = [FabricParams(max_weight=0.2), FabricParams(max_weight=0.8)]
        return [person(Query(i, ({}, {}), context=person.context(0)), params) for i in range(40)]

    first = answers(0)
    assert first == answers(0)
    assert first != answers(1)
    assert 0 < sum(first) < 40  # a noisy person does not always pick the same option


def test_the_person_drives_a_tuner_towards_stronger_feedback(generator, red):
    space = SearchSpace((FloatParam("max_weight", 0.0, 1.0),))
    person = SimulatedPerson(generator, red, ["a", "b", "c"], n_images=3, temperature=0.5)
    tuner = PreferenceTuner(PreferenceConfig(space=space, num_restarts=2, raw_samples=32))
    rec = run_queries(tuner, person, 6, context=person.context)
    assert tuner.queries[3].context["prompt"] == "a"
    assert rec.params.max_weight > FabricParams.paper().max_weight


def test_bad_settings_are_refused(generator, red, standins):
    with pytest.raises(ConfigError):
        SimulatedPerson(generator, red, [])
    with pytest.raises(ConfigError):
        SimulatedPerson(generator, red, ["a"], temperature=-1)
    with pytest.raises(ConfigError):
        SimulatedPerson(generator, red, ["a"], n_images=1)
    with pytest.raises(ConfigError, match="one objective"):
        SimulatedPerson(generator, standins.MultiObjective([red, red]), ["a"])


def test_with_more_rounds_each_option_is_a_session_judged_on_its_last_round(generator, red):
    person = SimulatedPerson(generator, red, ["a"], n_images=3, temperature=0.0, rounds=3)
    context = person.context(0)
    calls = len(generator.calls)
    person.utilities([FabricParams(max_weight=0.5)], context)
    rounds = generator.calls[calls + 1 :]  # after the first round without feedback
    assert [len(c["liked"]) for c in rounds] == [1, 2, 3] and [len(c["disliked"]) for c in rounds] == [1, 2, 3]
    assert rounds[0]["seeds"] == context["seeds"] and rounds[1]["seeds"] != context["seeds"]
    assert person.rounds_generated == 3
