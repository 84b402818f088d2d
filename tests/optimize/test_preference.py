"""The preference engine: real PairwiseGP fits and EUBO proposals, storage, resuming, export."""

from __future__ import annotations

import json
import math

import pytest

from fabric.errors import ConfigError
from fabric.params import FabricParams
from fabric.preset import load_params
from optimize.preference import PreferenceConfig, PreferenceTuner, Query, run_queries
from optimize.space import FloatParam, IntParam, SearchSpace
from optimize.study import StorageSpec

# Two knobs keep the GP and the acquisition fast; the engine treats any space the same way.
SPACE = SearchSpace((FloatParam("max_weight", 0.0, 1.0), FloatParam("neg_scale", 0.0, 1.0)))
FAST = {"num_restarts": 2, "raw_samples": 64, "mc_samples": 32}


def likes_strong_feedback(query: Query, params: list[FabricParams]) -> int:
    """A noiseless person whose utility is max_weight."""
    return max(range(len(params)), key=lambda i: params[i].max_weight)


def test_config_is_validated_and_round_trips():
    config = PreferenceConfig(space=SPACE, options=3, acquisition="random", seed=4, **FAST)
    assert PreferenceConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in ({"options": 1}, {"acquisition": "ei"}, {"anchor": "mine"}, {"initial_queries": 0}, {"options": 9}):
        with pytest.raises(ConfigError):
            PreferenceConfig(space=SPACE, **bad)
    with pytest.raises(ConfigError, match="unknown preference config"):
        PreferenceConfig.from_dict({"options": 2, "colour": "red"})


def test_first_query_pits_the_paper_defaults_against_a_sobol_point_and_is_seeded():
    tuner = PreferenceTuner(PreferenceConfig(space=SPACE, seed=3, **FAST))
    query = tuner.ask({"prompt": "a fox"})
    assert query.source == "anchor" and query.index == 0 and not query.answered
    paper = FabricParams.paper()
    assert query.params(SPACE)[0] == paper
    assert query.params(SPACE)[1] != paper
    assert query.context == {"prompt": "a fox"}
    again = PreferenceTuner(PreferenceConfig(space=SPACE, seed=3, **FAST)).ask()
    assert again.options == query.options  # the same seed asks the same first query
    other = PreferenceTuner(PreferenceConfig(space=SPACE, seed=4, **FAST)).ask()
    assert other.options[1] != query.options[1]


def test_ask_returns_the_pending_query_until_it_is_answered():
    tuner = PreferenceTuner(PreferenceConfig(space=SPACE, **FAST))
    first = tuner.ask({"n": 1})
    assert tuner.ask({"n": 2}) is first  # same query, its own context
    assert tuner.pending is first
    with pytest.raises(ConfigError, match="options 0..1"):
        tuner.tell(first.index, 2)
    with pytest.raises(ConfigError, match="no query 5"):
        tuner.tell(5, 0)
    done = tuner.tell(first, 1)
    assert done.winner == 1 and done.answered_at is not None and tuner.pending is None
    with pytest.raises(ConfigError, match="answered already"):
        tuner.tell(first.index, 0)
    second = tuner.ask(lambda index: {"index": index})
    assert second.index == 1 and second.context == {"index": 1} and second.source == "sobol"


def test_pairwise_gp_learns_a_utility_and_eubo_proposes_where_it_is_high():
    tuner = PreferenceTuner(PreferenceConfig(space=SPACE, seed=0, **FAST))
    rec = run_queries(tuner, likes_strong_feedback, 8)
    sources = [q.source for q in tuner.queries]
    assert sources[:2] == ["anchor", "sobol"] and set(sources[2:]) == {"eubo"}
    assert rec.method == "posterior_mean" and rec.answers == 8
    # the posterior ranks the shown presets by max_weight, the person's utility
    ranked = [r.params.max_weight for r in rec.ranked]
    assert rec.params.max_weight == pytest.approx(max(ranked))
    assert rec.params.max_weight > 0.8
    low, high = tuner.utility([{"max_weight": 0.05, "neg_scale": 0.5}, {"max_weight": 0.95, "neg_scale": 0.5}])[0]
    assert high > low
    # EUBO's options are at least as strong as the space-filling ones on average
    eubo = [max(p.max_weight for p in q.params(SPACE)) for q in tuner.queries if q.source == "eubo"]
    assert sum(eubo) / len(eubo) > 0.7


def test_a_best_of_k_answer_is_k_minus_one_comparisons():
    tuner = PreferenceTuner(PreferenceConfig(space=SPACE, options=3, **FAST))
    query = tuner.ask()
    assert len(query.options) == 3
    tuner.tell(query, 2)
    X, comparisons, values = tuner.data()
    assert X.shape == (3, 2) and comparisons.tolist() == [[2, 0], [2, 1]]
    assert values == [dict(o) for o in query.options]
    rec = run_queries(tuner, likes_strong_feedback, 3)  # the third query is a 3-option q-EUBO query
    assert tuner.queries[2].source == "eubo" and len(tuner.queries[2].options) == 3
    assert rec.answers == 3


def test_random_acquisition_keeps_asking_space_filling_queries():
    tuner = PreferenceTuner(PreferenceConfig(space=SPACE, acquisition="random", **FAST))
    run_queries(tuner, likes_strong_feedback, 4)
    assert [q.source for q in tuner.queries] == ["anchor", "sobol", "random", "random"]
    points = {json.dumps(o, sort_keys=True) for q in tuner.queries for o in q.options}
    assert len(points) == 8


def test_recommend_needs_an_answer_and_integer_parameters_stay_integers():
    space = SearchSpace((FloatParam("max_weight", 0.0, 1.0), IntParam("max_references", 1, 8)))
    tuner = PreferenceTuner(PreferenceConfig(space=space, **FAST))
    with pytest.raises(ConfigError, match="no answers yet"):
        tuner.recommend()
    rec = run_queries(tuner, likes_strong_feedback, 3)
    for q in tuner.queries:
        for option in q.options:
            assert isinstance(option["max_references"], int)
    assert isinstance(rec.params.max_references, int)


def test_answers_are_stored_as_they_come_and_a_reopened_tuner_resumes(tmp_path):
    spec = StorageSpec.parse(tmp_path / "prefs.journal")
    config = PreferenceConfig(space=SPACE, seed=1, **FAST)
    tuner = PreferenceTuner.open("mine", spec, config)
    run_queries(tuner, likes_strong_feedback, 3)
    pending = tuner.ask({"prompt": "asked before the crash"})

    # a new process: the same answers, the same unanswered query (not a new proposal)
    again = PreferenceTuner.open("mine", spec)
    assert [q.to_dict() for q in again.queries] == [q.to_dict() for q in tuner.queries]
    assert again.pending is not None and again.pending.options == pending.options
    assert again.ask({"prompt": "ignored"}).context == {"prompt": "asked before the crash"}
    assert again.recommend().params == tuner.recommend().params
    again.tell(pending.index, 0)
    assert len(PreferenceTuner.open("mine", spec, config).answered) == 4


def test_open_refuses_other_settings_and_studies(tmp_path):
    import optuna

    spec = StorageSpec.parse(tmp_path / "prefs.journal")
    PreferenceTuner.open("mine", spec, PreferenceConfig(space=SPACE, **FAST))
    with pytest.raises(ConfigError, match=r"other settings \(options\)"):
        PreferenceTuner.open("mine", spec, PreferenceConfig(space=SPACE, options=3, **FAST))
    optuna.create_study(study_name="a-study", storage=spec.open())
    with pytest.raises(ConfigError, match="not a preference tuner"):
        PreferenceTuner.open("a-study", spec, PreferenceConfig(space=SPACE, **FAST))
    with pytest.raises(ConfigError, match="no preference tuner named"):
        PreferenceTuner.open("missing", spec)


def test_the_recommendation_exports_like_a_study_preset(tmp_path):
    from optimize.export import ExportContext

    tuner = PreferenceTuner(PreferenceConfig(space=SPACE, **FAST), name="mine")
    rec = run_queries(tuner, likes_strong_feedback, 3)
    exported = tuner.export("json", ExportContext(prompt="a fox", seed=3))
    path = exported.write(tmp_path / "mine.json")[0]
    assert load_params(path) == rec.params
    data = json.loads(path.read_text())
    assert data["source"]["preference_tuner"] == "mine" and data["source"]["answers"] == 3
    assert not math.isnan(data["source"]["utility"])
    a1111 = tuner.export("a1111", ExportContext(prompt="a fox"))
    assert "fabric_max_weight" in a1111.content


def test_run_queries_counts_the_budget_in_total(tmp_path):
    tuner = PreferenceTuner(PreferenceConfig(space=SPACE, acquisition="random", **FAST))
    seen = []
    run_queries(tuner, likes_strong_feedback, 2, on_answer=seen.append)
    run_queries(tuner, likes_strong_feedback, 3, on_answer=seen.append)
    assert [q.index for q in seen] == [0, 1, 2]
    with pytest.raises(ConfigError):
        run_queries(PreferenceTuner(PreferenceConfig(space=SPACE)), likes_strong_feedback, 0)
