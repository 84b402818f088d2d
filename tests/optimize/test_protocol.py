from __future__ import annotations

import json
from collections import Counter

import optuna
import pytest
from PIL import Image

from fabric.errors import ConfigError
from fabric.params import FabricParams
from fabric.seeds import stable_seed
from optimize.protocol import NonFiniteScoreError, Protocol, TrialEvaluator, choose_feedback, evaluate
from optimize.space import FloatParam, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

PROMPTS = ("a red fox", "a blue car", "a green hill")
SPACE = SearchSpace(
    (FloatParam("max_weight", 0.0, 1.0), FloatParam("feedback_start", 0.0, 0.5)), base=FabricParams(steps=2)
)


def make(generator, objective, **protocol) -> TrialEvaluator:
    protocol = {"prompts": PROMPTS, "validation_prompts": ("a held-out cat",), **protocol}
    return TrialEvaluator(generator, objective, Protocol(**protocol), SPACE)


def test_feedback_improves_over_the_baseline_with_greedy_user(generator, red):
    evaluator = make(generator, red)
    strong = evaluator.evaluate(FabricParams(max_weight=0.9, steps=2))
    none = evaluator.evaluate(FabricParams(max_weight=0.0, steps=2))
    assert strong.value > 1.0
    assert none.value == 0.0  # no feedback: the same images as the baseline
    assert len(strong.prompts) == 3 and len(strong.prompts[0].round_scores) == 3
    # the greedy user liked the reddest image of each round and disliked the least red
    rounds = [c for c in generator.calls if c["prompt"] == "a red fox" and c["params"].max_weight == 0.9]
    first_round_reds = [c["liked"] for c in rounds]
    assert first_round_reds[0] == [] and len(first_round_reds[2]) == 2
    assert rounds[1]["liked"][0][0] >= rounds[1]["disliked"][0][0]


def test_common_random_numbers(standins, generator, red):
    params = FabricParams(max_weight=0.5, feedback_start=0.1, steps=2)
    a = make(generator, red).evaluate(params)
    b = make(standins.ColourGenerator(), red).evaluate(params)
    assert a.values == b.values and a.per_prompt() == b.per_prompt()
    seeds = [c["seeds"] for c in generator.calls]
    # image seeds depend on (prompt, round, index), not on the parameters
    trial_calls = [c for c in generator.calls if c["params"] == params]
    baseline_calls = [c for c in generator.calls if c["params"] != params]
    assert [c["seeds"] for c in trial_calls] == [c["seeds"] for c in baseline_calls]
    assert len({tuple(s) for s in seeds}) == 9  # 3 prompts x 3 rounds
    assert (
        stable_seed(0, "train", 0, 1, 2, 3)
        == stable_seed(0, "train", 0, 1, 2, 3)
        != stable_seed(1, "train", 0, 1, 2, 3)
    )


def test_baseline_is_computed_once_and_cached_on_disk(standins, generator, red, tmp_path):
    cache = tmp_path / "baseline.json"
    evaluator = TrialEvaluator(generator, red, Protocol(PROMPTS), SPACE, baseline_cache=cache)
    for w in (0.2, 0.4, 0.6):
        evaluator.evaluate(FabricParams(max_weight=w, steps=2))
    assert evaluator.baseline_runs == 1
    baseline_calls = [c for c in generator.calls if c["params"] == SPACE.base]
    assert len(baseline_calls) == 9  # once: 3 prompts x 3 rounds
    stored = json.loads(cache.read_text())
    assert list(stored) == [evaluator.baseline_fingerprint()]

    fresh_generator = standins.ColourGenerator()
    again = TrialEvaluator(fresh_generator, red, Protocol(PROMPTS), SPACE, baseline_cache=cache)
    again.evaluate(FabricParams(max_weight=0.2, steps=2))
    assert again.baseline_runs == 0 and len(fresh_generator.calls) == 9  # only the trial's rounds
    other = TrialEvaluator(standins.ColourGenerator(), red, Protocol(PROMPTS, seed=1), SPACE, baseline_cache=cache)
    assert other.baseline_fingerprint() != evaluator.baseline_fingerprint()


@pytest.mark.parametrize("value", ["final", "mean"])
def test_value_kinds(generator, red, value):
    evaluator = make(generator, red, value=value)
    result = evaluator.evaluate(FabricParams(max_weight=0.7, steps=2))
    for prompt in result.prompts:
        scores = [r[0] for r in prompt.round_scores]
        expected = scores[-1] if value == "final" else (scores[1] + scores[2]) / 2
        assert prompt.value[0] == pytest.approx(expected)
    assert evaluator.baseline_runs == 0


def test_the_study_sees_train_prompts_only_and_records_user_attrs(generator, red):
    evaluator = make(generator, red)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(evaluator, n_trials=3)
    assert {c["prompt"] for c in generator.calls} == set(PROMPTS)
    attrs = study.trials[0].user_attrs
    assert len(attrs["per_prompt"]) == 3 and attrs["mean"] == pytest.approx(study.trials[0].value)
    assert attrs["sem"] > 0
    assert list(study.trials[0].intermediate_values) == [0, 1, 2]
    assert len(attrs["round_metrics"]["score/red"]) == 3
    validation = evaluator.evaluate(FabricParams(max_weight=0.5, steps=2), split="validation")
    assert [p.prompt for p in validation.prompts] == ["a held-out cat"]
    assert validation.prompts[0].round_scores != ()


def test_pruner_stops_bad_trials_early(generator, red):
    evaluator = make(generator, red)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    study.enqueue_trial({"max_weight": 0.0, "feedback_start": 0.0})  # improvement 0 < 0.5
    study.optimize(evaluator, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]
    assert trial.user_attrs["n_prompts"] == 1
    assert sum(1 for c in generator.calls if c["params"].max_weight == 0.0) == 3  # one prompt's rounds


def test_non_finite_scores_fail_the_trial(standins, generator):
    evaluator = make(generator, standins.NaNObjective(), value="final")
    with pytest.raises(NonFiniteScoreError, match="returned nan for train prompt 1, round 1"):
        evaluator.evaluate(FabricParams(steps=2))
    study = optuna.create_study()
    study.optimize(evaluator, n_trials=1, catch=(NonFiniteScoreError,))
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_feedback_model_can_differ_from_the_scored_objective(standins, generator, red, blue):
    evaluator = TrialEvaluator(generator, red, Protocol(PROMPTS[:1], value="final"), SPACE, feedback_objective=blue)
    evaluator.evaluate(FabricParams(max_weight=0.5, steps=2))
    liked = generator.calls[1]["liked"][0]
    first_round = [
        standins.ColourGenerator().generate(PROMPTS[0], seed=s, n_images=1)[0].getpixel((0, 0))
        for s in generator.calls[0]["seeds"]
    ]
    assert liked == max(first_round, key=lambda c: c[2])  # the bluest, not the reddest
    assert generator.calls[1]["disliked"][0] == min(first_round, key=lambda c: c[2])


def test_target_feedback_likes_the_image_closest_to_the_target(standins, generator, red):
    target = Image.new("RGB", (8, 8), (0, 255, 0))
    protocol = Protocol(PROMPTS[:1], feedback="target", targets=(target,), value="final")
    evaluator = TrialEvaluator(generator, red.with_target(target), protocol, SPACE)
    result = evaluator.evaluate(FabricParams(max_weight=0.5, steps=2))
    first_round = [
        standins.ColourGenerator().generate(PROMPTS[0], seed=s, n_images=1)[0].getpixel((0, 0))
        for s in generator.calls[0]["seeds"]
    ]
    distance = lambda c: sum((a - b) ** 2 for a, b in zip(c, (0, 255, 0)))  # noqa: E731
    assert generator.calls[1]["liked"][0] == min(first_round, key=distance)
    assert result.value <= 0  # scored as (negative) distance to the target
    with pytest.raises(ConfigError, match="one target per prompt"):
        Protocol(PROMPTS, feedback="target", targets=(target,))


def test_noisy_user_is_seeded_and_follows_the_scores():
    scores = [0.0, 1.0, 2.0, 3.0]
    assert choose_feedback(scores, 0.0, seed=0) == (3, 0)
    assert choose_feedback(scores, 1.0, seed=7) == choose_feedback(scores, 1.0, seed=7)
    likes = Counter(choose_feedback(scores, 1.0, seed=s)[0] for s in range(400))
    dislikes = Counter(choose_feedback(scores, 1.0, seed=s)[1] for s in range(400))
    assert likes[3] > likes[2] > likes[1] and likes[0] < 40
    assert dislikes[0] > dislikes[3]
    assert all(like != dislike for like, dislike in (choose_feedback(scores, 5.0, seed=s) for s in range(50)))
    cold = Counter(choose_feedback(scores, 1e-3, seed=s)[0] for s in range(50))
    assert cold == {3: 50}


def test_noisy_user_protocol_is_reproducible(standins, generator, red):
    params = FabricParams(max_weight=0.8, steps=2)
    a = make(generator, red, temperature=5.0).evaluate(params)
    b = make(standins.ColourGenerator(), red, temperature=5.0).evaluate(params)
    assert a.values == b.values


def test_multi_objective_returns_a_tuple(standins, generator, red, blue):
    multi = standins.MultiObjective([red, standins.ChannelObjective(2, "blue", "minimize")])
    evaluator = make(generator, multi)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(evaluator, n_trials=2)
    assert all(len(t.values) == 2 for t in study.trials)
    assert evaluator.objective_names == ("red", "blue")
    assert len(study.trials[0].user_attrs["per_prompt"][0]) == 2


def test_on_round_sees_every_round_and_metrics_are_recorded(generator, red, blue):
    seen = []
    evaluator = TrialEvaluator(
        generator,
        red,
        Protocol(PROMPTS[:2]),
        SPACE,
        metrics={"blueness": blue},
        on_round=lambda p, r, images, scores, choice: seen.append((p, r, len(images), list(scores), scores, choice)),
    )
    result = evaluator.evaluate(FabricParams(max_weight=0.3, steps=2))
    assert [s[:4] for s in seen] == [(p, r, 4, ["red"]) for p in range(2) for r in range(3)]  # not the baseline's
    for _, r, _, _, scores, choice in seen:  # the user's pick: the reddest liked, the least red disliked
        if r == 2:
            assert choice is None  # the last round gets no feedback
        else:
            red_scores = scores["red"]
            assert choice == (red_scores.index(max(red_scores)), red_scores.index(min(red_scores)))
    metrics = result.round_metrics()
    assert set(metrics) == {"score/red", "blueness"} and len(metrics["blueness"]) == 3


def test_evaluate_function(generator, red):
    result = evaluate(generator, red, FabricParams(max_weight=0.5, steps=2), Protocol(PROMPTS[:1], value="final"))
    assert len(result.prompts) == 1 and result.sem == (0.0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": ()}, "at least one prompt"),
        ({"prompts": ("a", "")}, "non-empty strings"),
        ({"prompts": ("a",), "rounds": 0}, "rounds must be a positive integer"),
        ({"prompts": ("a",), "n_images": 1}, "n_images must be >= 2"),
        ({"prompts": ("a",), "value": "best"}, "value must be"),
        ({"prompts": ("a",), "temperature": -1.0}, "temperature must be finite and >= 0"),
        ({"prompts": ("a",), "feedback": "human"}, "feedback must be"),
        ({"prompts": ("a",), "prompt_batch": 0}, "prompt_batch must be a positive integer"),
        ({"prompts": ("a",), "prompt_batch": 2.0}, "prompt_batch must be a positive integer"),
    ],
)
def test_protocol_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Protocol(**kwargs)


def test_validation_split_needs_prompts(generator, red):
    evaluator = TrialEvaluator(generator, red, Protocol(PROMPTS), SPACE)
    with pytest.raises(ConfigError, match="no validation prompts"):
        evaluator.evaluate(FabricParams(steps=2), split="validation")


def test_end_to_end_with_the_tiny_generator(request):
    pytest.importorskip("fabric.fabric_generator")
    objectives = pytest.importorskip("objectives")
    generator = request.getfixturevalue("tiny_generator")
    objective = objectives.load_objective("pickscore", weights="tiny")
    space = SearchSpace.default(base=FabricParams(steps=2))
    protocol = Protocol(("a red circle", "a blue square"), validation_prompts=("a cat",), rounds=2, n_images=2)
    evaluator = TrialEvaluator(generator, objective, protocol, space)
    study = optuna.create_study(direction=objective.direction, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(evaluator, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert len(study.trials[0].user_attrs["per_prompt"]) == 2
    again = evaluator.evaluate(space.to_params(study.trials[0].params))
    assert again.value == pytest.approx(study.trials[0].value, abs=1e-5)  # common random numbers
    assert evaluator.baseline_runs == 1


def test_batched_prompts_give_the_same_trial_round_by_round(standins, red, blue):
    """prompt_batch=2 runs prompts 0 and 1 together round by round, then prompt 2: every round's
    requests carry each prompt's own feedback, so the results equal one-by-one evaluation."""
    one_by_one = make(standins.ColourGenerator(), red, rounds=3, temperature=5.0)
    batching = standins.BatchingColourGenerator()
    batched = make(batching, red, rounds=3, temperature=5.0, prompt_batch=2)
    params = FabricParams(max_weight=0.7, steps=2)
    seen: list[tuple[int, int]] = []
    a = one_by_one.evaluate(params)
    b = batched.evaluate(params, on_round=lambda p, r, images, scores, choice: seen.append((p, r)))
    assert a.values == b.values and [p.round_scores for p in a.prompts] == [p.round_scores for p in b.prompts]
    assert [p.index for p in b.prompts] == [0, 1, 2]
    # baseline (3 rounds) then the trial (3 rounds): two prompts per call, the third alone
    assert batching.batches == [list(PROMPTS[:2])] * 6
    assert seen == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert batched.baseline() == one_by_one.baseline()


def test_pruner_hears_every_prompt_of_a_batch(standins, red):
    evaluator = make(standins.BatchingColourGenerator(), red, prompt_batch=2)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    study.enqueue_trial({"max_weight": 0.0, "feedback_start": 0.0})
    study.optimize(evaluator, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0, 1]
    assert trial.user_attrs["n_prompts"] == 2


def test_batched_prompts_on_the_tiny_generator_match_one_by_one(request):
    """The real generator: generate_many shares every U-Net call between the prompts, and the
    trial's values equal one-by-one evaluation up to float rounding."""
    objectives = pytest.importorskip("objectives")
    tiny = request.getfixturevalue("tiny_generator")
    objective = objectives.load_objective("pickscore", weights="tiny")
    space = SearchSpace.default(base=FabricParams(steps=2))
    params = FabricParams(steps=2, max_weight=0.8, feedback_start=0.0)
    results, calls = {}, {}
    for batch in (1, 2):
        protocol = Protocol(("a red circle", "a blue square"), rounds=2, n_images=2, prompt_batch=batch, value="final")
        counted = []
        handle = tiny.pipeline.unet.register_forward_pre_hook(lambda m, args: counted.append(args[0].shape[0]))
        try:
            results[batch] = TrialEvaluator(tiny, objective, protocol, space).evaluate(params)
        finally:
            handle.remove()
        calls[batch] = counted
    for a, b in zip(results[1].prompts, results[2].prompts):
        assert [s for r in a.round_scores for s in r] == pytest.approx([s for r in b.round_scores for s in r], abs=1e-4)
    assert len(calls[2]) < len(calls[1]) and max(calls[2]) == 2 * max(calls[1])


# ---- the guard: a constraint by penalty on a second objective ----------------------------------


def _guarded(generator, red, guard_objective, **guard):
    from optimize.protocol import Guard

    return TrialEvaluator(generator, red, Protocol(PROMPTS), SPACE, guard=Guard(guard_objective, **guard))


def test_the_guard_subtracts_its_penalty_from_the_value(standins, generator, red, blue):
    params = FabricParams(max_weight=0.9, steps=2)
    plain = make(standins.ColourGenerator(), red).evaluate(params)
    guarded = _guarded(generator, red, blue, penalty=2.0).evaluate(params)
    # the floor: the no-feedback baseline's final-round blue, per prompt
    floors = [p[-1][0] for p in TrialEvaluator(standins.ColourGenerator(), blue, Protocol(PROMPTS), SPACE).baseline()]
    assert [p.guard_floor for p in guarded.prompts] == pytest.approx(floors)
    assert [p.unguarded for p in guarded.prompts] == [p.value for p in plain.prompts]
    drop = sum(floors) / 3 - sum(p.guard[-1] for p in guarded.prompts) / 3
    assert drop != 0
    assert guarded.value == pytest.approx(plain.value - 2.0 * max(0.0, drop))
    assert guarded.value == pytest.approx(sum(guarded.per_prompt()) / 3)  # per-prompt values still average
    attrs = guarded.user_attrs()
    assert attrs["constraint"] == pytest.approx(drop) and attrs["guard"]["unguarded"] == pytest.approx(plain.value)
    assert len(attrs["round_metrics"]["guard/blue"]) == 3
    # a tolerance above the drop switches the penalty off
    lenient = _guarded(standins.ColourGenerator(), red, blue, penalty=2.0, tolerance=abs(drop) + 1).evaluate(params)
    assert lenient.value == pytest.approx(plain.value) and lenient.per_prompt() == pytest.approx(plain.per_prompt())


def test_the_guard_reference_can_be_parameters_with_feedback(standins, generator, red, blue):
    reference = FabricParams(max_weight=0.9, steps=2)
    evaluator = _guarded(generator, red, blue, reference=reference, label="strong", penalty=5.0)
    same = evaluator.evaluate(reference)  # the reference itself loses nothing
    assert same.guard["drop"] == pytest.approx(0.0) and same.value == pytest.approx(same.guard["unguarded"])
    assert same.guard["reference"] == "strong"
    other = evaluator.evaluate(FabricParams(max_weight=0.3, steps=2))
    expected = other.guard["unguarded"] - 5.0 * max(0.0, other.guard["drop"])
    assert other.value == pytest.approx(expected)


def test_the_guard_floor_is_cached_and_scores_reach_on_round(standins, generator, red, blue, tmp_path):
    from optimize.protocol import Guard

    cache = tmp_path / "cache.json"
    seen = []
    first = TrialEvaluator(
        generator,
        red,
        Protocol(PROMPTS),
        SPACE,
        guard=Guard(blue),
        baseline_cache=cache,
        on_round=lambda p, r, images, scores, choice: seen.append(set(scores)),
    )
    first.evaluate(FabricParams(max_weight=0.5, steps=2))
    assert seen and all(s == {"red", "blue"} for s in seen)
    fresh = standins.ColourGenerator()
    again = TrialEvaluator(fresh, red, Protocol(PROMPTS), SPACE, guard=Guard(blue), baseline_cache=cache)
    assert again.guard_floor() == first.guard_floor()
    assert fresh.calls == []
    assert first.guard_fingerprint() != _guarded(fresh, red, blue, reference=FabricParams(steps=2)).guard_fingerprint()


def test_a_guard_comparison_pairs_the_final_round_guard_scores(standins, generator, red, blue):
    from optimize.recommend import compare

    evaluator = _guarded(generator, red, blue)
    ours, theirs = FabricParams(max_weight=0.9, steps=2), FabricParams(max_weight=0.2, steps=2)
    c = compare(evaluator, ours, theirs, label="weak", split="train", quantity="guard")
    expected = [
        a.guard[-1] - b.guard[-1] for a, b in zip(evaluator.evaluate(ours).prompts, evaluator.evaluate(theirs).prompts)
    ]
    assert any(d != 0 for d in expected)
    assert c.quantity == "guard" and c.reference == "weak" and list(c.per_prompt) == pytest.approx(expected)
    assert c.ci_low <= c.mean_difference <= c.ci_high
    assert c.verdict == ("better" if c.ci_low > 0 else "worse" if c.ci_high < 0 else "no difference shown")
    with pytest.raises(ConfigError, match="needs an evaluator with a guard"):
        compare(make(standins.ColourGenerator(), red), ours, theirs, split="train", quantity="guard")


def test_guard_settings_are_checked(standins, generator, red, blue):
    from optimize.protocol import Guard

    with pytest.raises(ConfigError, match="penalty"):
        Guard(blue, penalty=-1.0)
    with pytest.raises(ConfigError, match="tolerance"):
        Guard(blue, tolerance=float("nan"))
    with pytest.raises(ConfigError, match="single objective"):
        TrialEvaluator(generator, standins.MultiObjective([red, blue]), Protocol(PROMPTS), SPACE, guard=Guard(blue))
    with pytest.raises(ConfigError, match="no guard"):
        make(generator, red).guard_floor()
