from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from fabric.errors import ConfigError
from fabric.params import FabricParams
from optimize.protocol import Protocol, TrialEvaluator
from optimize.recommend import compare, posterior_means, recommend
from optimize.space import FloatParam, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = SearchSpace((FloatParam("max_weight", 0.0, 1.0),), base=FabricParams(steps=2))


def study_with(points: list[tuple[float, float]], direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    dist = {"max_weight": FloatDistribution(0.0, 1.0)}
    study.add_trials(
        [optuna.trial.create_trial(params={"max_weight": x}, distributions=dist, value=v) for x, v in points]
    )
    return study


def smooth_with_a_lucky_outlier(sign: float = 1.0) -> list[tuple[float, float]]:
    """-(x - 0.6)^2 on a grid with small alternating noise, plus one lucky draw at x = 0.1."""
    points = [(i / 20, -((i / 20 - 0.6) ** 2) + (0.01 if i % 2 else -0.01)) for i in range(21)]
    points.append((0.1, 0.03))  # true value -0.25: a lucky +0.28
    return [(x, sign * v) for x, v in points]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_recommends_by_posterior_mean_not_the_noisy_maximum(direction):
    sign = 1.0 if direction == "maximize" else -1.0
    study = study_with(smooth_with_a_lucky_outlier(sign), direction)
    rec = recommend(study, SPACE, references=None)
    assert rec.method == "posterior_mean"
    assert rec.noisy_best.values["max_weight"] == 0.1
    assert abs(rec.best.values["max_weight"] - 0.6) <= 0.1
    assert rec.best.posterior_mean is not None and rec.best.posterior_std > 0
    assert rec.params == SPACE.to_params(rec.best.values)
    assert [c.trial_number for c in rec.candidates][0] == rec.best.trial_number


def test_posterior_means_cover_every_complete_trial():
    study = study_with(smooth_with_a_lucky_outlier())
    candidates = posterior_means(study, SPACE)
    assert len(candidates) == 22 and all(c.posterior_mean is not None for c in candidates)
    outlier = next(c for c in candidates if c.observed == 0.03)
    assert outlier.posterior_mean < 0.0  # the GP does not believe the lucky draw


def test_constant_values_fall_back_to_the_observed_best():
    study = study_with([(0.1, 1.0), (0.5, 1.0), (0.9, 1.0)])
    rec = recommend(study, SPACE, references=None)
    assert rec.method == "observed" and rec.best.posterior_mean is None


def test_no_complete_trial_is_a_config_error():
    with pytest.raises(ConfigError, match="no complete trial"):
        recommend(optuna.create_study(), SPACE, references=None)


def test_reevaluation_and_comparison_with_defaults(standins):
    red = standins.ChannelObjective(0, "red")
    protocol = Protocol(("a fox", "a car", "a hill"), validation_prompts=("v1", "v2", "v3", "v4"), rounds=2)
    evaluator = TrialEvaluator(standins.ColourGenerator(), red, protocol, SPACE)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(evaluator, n_trials=6)
    rec = recommend(study, SPACE, evaluator=evaluator, top_k=2, extra_seeds=2, n_bootstrap=500, seed=3)
    assert rec.method == "reevaluated"
    assert [len(c.reevaluated) for c in rec.candidates[:2]] == [2, 2]
    assert rec.best.estimate == max(c.estimate for c in rec.candidates[:2])
    assert [c.reference for c in rec.comparisons] == ["paper", "a1111"]
    paper = rec.comparisons[0]
    assert paper.split == "validation" and len(paper.per_prompt) == 4
    assert paper.ci_low <= paper.mean_difference <= paper.ci_high
    again = recommend(study, SPACE, evaluator=evaluator, top_k=2, extra_seeds=2, n_bootstrap=500, seed=3)
    assert again.comparisons == rec.comparisons  # seeded bootstrap, common random numbers
    # the validation prompts never reached the sampler's trials
    assert all(len(t.user_attrs["per_prompt"]) == 3 for t in study.trials)


def test_compare_is_paired(standins):
    red = standins.ChannelObjective(0, "red")
    protocol = Protocol(("a",), validation_prompts=("v1", "v2", "v3"), rounds=3)
    evaluator = TrialEvaluator(standins.ColourGenerator(), red, protocol, SPACE)
    same = compare(evaluator, FabricParams(max_weight=0.5, steps=2), FabricParams(max_weight=0.5, steps=2))
    assert same.per_prompt == (0.0, 0.0, 0.0) and (same.ci_low, same.ci_high) == (0.0, 0.0)
    better = compare(evaluator, FabricParams(max_weight=0.9, steps=2), FabricParams(max_weight=0.0, steps=2), seed=1)
    assert all(d > 0 for d in better.per_prompt) and better.better


def test_compare_on_several_seed_sets_averages_each_prompt_over_them(standins):
    red = standins.ChannelObjective(0, "red")
    protocol = Protocol(("a",), validation_prompts=("v1", "v2", "v3"), rounds=2)
    evaluator = TrialEvaluator(standins.ColourGenerator(), red, protocol, SPACE)
    ours, theirs = FabricParams(max_weight=0.9, steps=2), FabricParams(max_weight=0.2, steps=2)
    three = compare(evaluator, ours, theirs, seed_sets=3)
    by_set = [
        [
            a - b
            for a, b in zip(
                evaluator.evaluate(ours, split="validation", replicate=k).per_prompt(0),
                evaluator.evaluate(theirs, split="validation", replicate=k).per_prompt(0),
            )
        ]
        for k in range(3)
    ]
    assert three.seed_sets == 3 and len(three.per_prompt) == 3
    assert three.per_prompt == pytest.approx([sum(col) / 3 for col in zip(*by_set)], abs=1e-12)
    assert by_set[0] != by_set[1]  # fresh seeds, not the study's again
    assert compare(evaluator, ours, theirs).per_prompt == pytest.approx(by_set[0], abs=1e-12)
    with pytest.raises(ConfigError, match="seed_sets"):
        compare(evaluator, ours, theirs, seed_sets=0)


def test_options_that_need_an_evaluator():
    study = study_with(smooth_with_a_lucky_outlier())
    with pytest.raises(ConfigError, match="needs an evaluator"):
        recommend(study, SPACE, extra_seeds=1, references=None)
    with pytest.raises(ConfigError, match="needs an evaluator"):
        recommend(study, SPACE)


def test_the_recommendation_models_categorical_parameters_as_categories():
    """The GP of the recommendation treats a categorical as unordered: listing its choices in
    another order gives the same posterior (an ordinal encoding would not)."""
    from optuna.distributions import CategoricalDistribution

    from optimize.recommend import posterior_at_points

    rng = __import__("numpy").random.default_rng(0)
    effect = {0.25: 0.0, 0.5: -1.0, 1.0: 0.2}  # the middle choice is the bad one
    points = [{"max_weight": float(x), "neg_scale": c} for x in rng.uniform(size=6) for c in effect]
    values = [effect[p["neg_scale"]] - (p["max_weight"] - 0.5) ** 2 + float(rng.normal(0, 0.05)) for p in points]
    means = []
    for order in ((0.25, 0.5, 1.0), (0.5, 1.0, 0.25)):
        dists = {"max_weight": FloatDistribution(0.0, 1.0), "neg_scale": CategoricalDistribution(order)}
        mean, std = posterior_at_points(dists, points, values, seed=0)
        means.append(mean)
        assert all(s > 0 for s in std)
    assert max(abs(a - b) for a, b in zip(*means)) < 1e-3
    best = max(range(len(points)), key=lambda i: means[0][i])
    assert points[best]["neg_scale"] == 1.0


def test_recommend_searches_a_space_with_a_categorical_parameter():
    from optuna.distributions import CategoricalDistribution

    from optimize.space import CategoricalParam

    space = SearchSpace(
        (FloatParam("max_weight", 0.0, 1.0), CategoricalParam("neg_scale", (0.25, 0.5, 1.0))),
        base=FabricParams(steps=2),
    )
    dists = {"max_weight": FloatDistribution(0.0, 1.0), "neg_scale": CategoricalDistribution((0.25, 0.5, 1.0))}
    study = optuna.create_study(direction="maximize")
    rng = __import__("numpy").random.default_rng(1)
    for x in rng.uniform(size=5):
        for c, v in ((0.25, 0.0), (0.5, -1.0), (1.0, 0.2)):
            value = v - (x - 0.5) ** 2 + float(rng.normal(0, 0.05))
            params = {"max_weight": float(x), "neg_scale": c}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    rec = recommend(study, space, references=None)
    assert rec.method == "posterior_mean" and rec.best.values["neg_scale"] == 1.0
