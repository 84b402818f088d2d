from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from fabric.errors import ConfigError
from fabric.params import FabricParams
from optimize.space import CategoricalParam, CubeEncoding, FloatParam, IntParam, SearchSpace


def mixed_space() -> SearchSpace:
    return SearchSpace(
        (
            FloatParam("feedback_start", 0.0, 0.5),
            FloatParam("feedback_span", 0.0, 1.0),
            FloatParam("max_weight", 0.05, 1.0, log=True),
            IntParam("max_references", 1, 8),
            CategoricalParam("neg_scale", (0.25, 0.5, 1.0)),
        ),
        fixed={"prompt_dropout": 0.1},
        base=FabricParams(steps=7),
    )


def test_default_space_follows_design():
    space = SearchSpace.default()
    assert space.names == (
        "feedback_start",
        "feedback_span",
        "max_weight",
        "min_weight_ratio",
        "neg_scale",
        "pos_bottleneck_scale",
        "neg_bottleneck_scale",
        "max_references",
        "prompt_dropout",
    )
    dists = space.distributions()
    assert dists["pos_bottleneck_scale"] == FloatDistribution(0.0, 2.0)
    assert dists["max_references"] == IntDistribution(1, 8)
    assert dists["prompt_dropout"] == FloatDistribution(0.0, 0.5)
    assert "guidance_scale" not in dists
    assert SearchSpace.default(guidance_scale=True).distributions()["guidance_scale"] == FloatDistribution(2.0, 12.0)


def test_every_point_of_the_default_space_is_feasible():
    space = SearchSpace.default(guidance_scale=True)
    unit = torch.quasirandom.SobolEngine(len(space), scramble=True, seed=0).draw(256, dtype=torch.float64)
    corners = torch.tensor([[0.0] * len(space), [1.0] * len(space)], dtype=torch.float64)
    for values in space.from_unit(torch.cat([unit, corners])):
        params = space.to_params(values)  # FabricParams validates end >= start, min <= max
        assert params.feedback_start <= params.feedback_end <= 1.0
        assert params.min_weight <= params.max_weight


def test_reparameterisation():
    space = SearchSpace.default()
    values = space.from_params(FabricParams.paper())
    values.update(feedback_start=0.2, feedback_span=0.5, max_weight=0.6, min_weight_ratio=0.25)
    params = space.to_params(values)
    assert params.feedback_end == pytest.approx(0.2 + 0.8 * 0.5)
    assert params.min_weight == pytest.approx(0.15)
    assert space.from_params(params) == pytest.approx(values)


def test_params_round_trip_and_fixed_and_left_out_values():
    space = mixed_space()
    values = {"feedback_start": 0.3, "feedback_span": 0.25, "max_weight": 0.4, "max_references": 3, "neg_scale": 1.0}
    params = space.to_params(values)
    assert params.prompt_dropout == 0.1  # fixed
    assert params.steps == 7 and params.pos_bottleneck_scale == 1.0  # base
    back = space.from_params(params)
    assert back == pytest.approx(values)
    assert type(back["max_references"]) is int


def test_unit_cube_round_trip_keeps_types():
    space = mixed_space()
    values = {"feedback_start": 0.125, "feedback_span": 1.0, "max_weight": 0.05, "max_references": 8, "neg_scale": 0.25}
    unit = space.to_unit(values)
    assert unit.shape == (1, 5) and unit.dtype == torch.float64
    assert float(unit.min()) >= 0.0 and float(unit.max()) <= 1.0
    assert unit[0, 2] == 0.0  # log scale: low maps to 0
    back = space.from_unit(unit)[0]
    assert back["feedback_start"] == values["feedback_start"] and back["feedback_span"] == 1.0
    assert back["max_weight"] == pytest.approx(0.05, rel=1e-12)
    assert back["max_references"] == 8 and type(back["max_references"]) is int
    assert back["neg_scale"] == 0.25


def test_unit_cube_snaps_discrete_values():
    space = mixed_space()
    row = space.from_unit(torch.tensor([0.5, 0.5, 0.5, 0.49, 0.6], dtype=torch.float64))[0]
    assert row["max_references"] == round(1 + 0.49 * 7) and row["neg_scale"] == 0.5
    assert row["max_weight"] == pytest.approx(math.sqrt(0.05 * 1.0))


def test_encoding_describes_discrete_dims():
    enc = CubeEncoding(mixed_space().distributions())
    assert enc.discrete_dims == {3: [float(k) for k in range(1, 9)]}
    assert enc.cat_dims == {4: [0.0, 1.0, 2.0]}
    assert enc.bounds()[:, 2].tolist() == pytest.approx([math.log(0.05), 0.0])


def test_suggest_through_optuna():
    space = mixed_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = space.suggest(trial)
    assert set(values) == set(space.names)
    assert trial.params == values
    space.to_params(values)


def test_dict_and_yaml_round_trip(tmp_path):
    space = mixed_space()
    assert SearchSpace.from_dict(space.to_dict()) == space
    path = tmp_path / "space.yaml"
    path.write_text(
        "extends: default\n"
        "base: a1111\n"
        "parameters:\n"
        "  max_weight: {low: 0.05, high: 1.0, log: true}\n"
        "  guidance_scale: [3, 9]\n"
        "  neg_scale: {choices: [0.25, 0.5]}\n"
        "fixed: {prompt_dropout: 0.0}\n"
        "exclude: [neg_bottleneck_scale]\n"
    )
    loaded = SearchSpace.from_yaml(path)
    assert "neg_bottleneck_scale" not in loaded.names and "prompt_dropout" not in loaded.names
    assert loaded.distributions()["max_weight"] == FloatDistribution(0.05, 1.0, log=True)
    assert loaded.distributions()["guidance_scale"] == FloatDistribution(3.0, 9.0)
    assert loaded.distributions()["neg_scale"] == CategoricalDistribution((0.25, 0.5))
    assert loaded.distributions()["max_references"] == IntDistribution(1, 8)
    assert loaded.base == FabricParams.a1111() and loaded.fixed == {"prompt_dropout": 0.0}


def test_from_params_clips_only_on_request():
    space = SearchSpace((FloatParam("max_weight", 0.0, 0.5), IntParam("max_references", 1, 4)))
    with pytest.raises(ConfigError, match="outside its range"):
        space.from_params(FabricParams.a1111())  # max_weight 0.8
    values = space.from_params(FabricParams.a1111(), clip=True)
    assert values == {"max_weight": 0.5, "max_references": 4}  # None ("all") -> upper bound


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FloatParam("max_weight", 1.0, 0.5), "must be below high"),
        (lambda: FloatParam("max_weight", 0.0, 1.0, log=True), "log scale needs low > 0"),
        (lambda: IntParam("max_references", 0, 4, log=True), "log scale needs low > 0"),
        (lambda: CategoricalParam("neg_scale", ()), "must not be empty"),
        (lambda: SearchSpace((FloatParam("strength", 0, 1),)), "unknown parameter 'strength'"),
        (lambda: SearchSpace((FloatParam("max_weight", 0, 1),), fixed={"max_weight": 0.3}), "more than once"),
        (lambda: SearchSpace((FloatParam("feedback_span", 0, 1), FloatParam("feedback_end", 0, 1))), "both"),
        (lambda: SearchSpace((FloatParam("feedback_start", 0, 1),)), "search 'feedback_span' instead"),
        (lambda: SearchSpace((FloatParam("feedback_span", 0, 1.5),)), "must lie in"),
        (lambda: SearchSpace((FloatParam("prompt_dropout", 0, 1),)), "invalid FABRIC parameters"),
        (lambda: SearchSpace((FloatParam("steps", 1, 30),)), "integer"),
        (lambda: SearchSpace.from_dict({"parameters": {"max_weight": {"low": 0}}}), "missing high"),
        (
            lambda: SearchSpace.from_dict({"parameters": {"max_weight": {"low": 0, "high": 1, "scale": 2}}}),
            "unknown key",
        ),
        (lambda: SearchSpace.from_dict({"parmeters": {}}), "unknown search space key"),
    ],
)
def test_invalid_spaces_raise_one_line_config_errors(build, message):
    with pytest.raises(ConfigError, match=message) as info:
        build()
    assert "\n" not in str(info.value)


def test_from_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        SearchSpace.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters:\n  max_weight: {low: 2, high: 1}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*must be below high"):
        SearchSpace.from_yaml(bad)


def test_values_must_match_the_space():
    space = mixed_space()
    with pytest.raises(ConfigError, match="missing max_references"):
        space.to_params({"feedback_start": 0.1, "feedback_span": 0.5, "max_weight": 0.5, "neg_scale": 0.5})


# ---- frontend-compatible spaces ------------------------------------------------------------


@pytest.mark.parametrize("frontend", ["a1111", "comfyui"])
def test_a_frontend_space_tunes_only_what_the_frontend_carries(frontend):
    import random

    from optimize.frontends import UNCARRIED

    space = SearchSpace.from_dict({"extends": "default", "frontend": frontend})
    uncarried = {"pos_bottleneck_scale", "neg_bottleneck_scale", "prompt_dropout", "max_references"}
    if frontend == "comfyui":
        uncarried |= {"min_weight_ratio"}  # ComfyUI_fabric has no weight outside the feedback steps
    assert not uncarried & set(space.names)
    assert {"feedback_start", "feedback_span", "max_weight", "neg_scale"} <= set(space.names)
    rng = random.Random(0)
    for _ in range(200):
        values = {
            p.name: rng.uniform(p.low, p.high) if isinstance(p, FloatParam) else rng.randint(p.low, p.high)
            for p in space.params
        }
        params = space.to_params(values)
        assert all(getattr(params, k) == v for k, v in UNCARRIED.items())
        if frontend == "a1111":  # on the sliders' 0.05 step, min never above max
            for key in ("max_weight", "min_weight", "neg_scale"):
                assert round(getattr(params, key) / 0.05, 9) == round(getattr(params, key) / 0.05)
            assert params.min_weight <= params.max_weight
        else:
            assert params.min_weight == 0.0
    # the record keeps the frontend and reads back into an equal space
    assert SearchSpace.from_dict(space.to_dict()) == space and space.to_dict()["frontend"] == frontend


def test_a_frontend_space_refuses_what_the_frontend_cannot_carry():
    with pytest.raises(ConfigError, match="searches prompt_dropout, which a1111 cannot carry"):
        SearchSpace.from_dict({"extends": "default", "frontend": "a1111", "parameters": {"prompt_dropout": [0, 0.3]}})
    with pytest.raises(ConfigError, match="fixes prompt_dropout at 0.2, which comfyui cannot carry"):
        SearchSpace.from_dict({"extends": "default", "frontend": "comfyui", "fixed": {"prompt_dropout": 0.2}})
    with pytest.raises(ConfigError, match="unknown frontend 'invoke'"):
        SearchSpace.from_dict({"extends": "default", "frontend": "invoke"})
    # for_frontend drops them instead
    space = SearchSpace.default().for_frontend("comfyui")
    assert "min_weight_ratio" not in space.names and space.fixed["min_weight"] == 0.0


def test_from_cells_gives_every_discrete_value_an_equal_share():
    encoding = CubeEncoding(
        {
            "k": IntDistribution(1, 8),
            "s": FloatDistribution(0.0, 1.0, step=0.25),
            "c": CategoricalDistribution(("a", "b")),
        }
    )
    u = (torch.arange(800, dtype=torch.float64) + 0.5) / 800  # evenly spread in [0, 1]
    rows = encoding.decode(encoding.from_cells(u[:, None].repeat(1, 3)))
    assert [sum(r["k"] == k for r in rows) for k in range(1, 9)] == [100] * 8
    assert [sum(r["s"] == s for r in rows) for s in (0.0, 0.25, 0.5, 0.75, 1.0)] == [160] * 5
    assert [sum(r["c"] == c for r in rows) for c in "ab"] == [400, 400]
    snapped = encoding.decode(encoding.from_unit(u[:, None].repeat(1, 3)))
    assert sum(r["k"] == 1 for r in snapped) < 60  # from_unit + snapping: half a share at the ends
