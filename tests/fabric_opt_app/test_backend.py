"""The app without the browser: settings, presets, parameter checks, and tune mode that resumes."""

from __future__ import annotations

import json

import pytest

from fabric.errors import ConfigError, InvalidParameterError
from fabric.params import FabricParams
from fabric.preset import write_preset
from fabric_opt_app.backend import AppBackend
from fabric_opt_app.config import AppConfig, is_loopback
from fabric_opt_app.session import RoundSettings
from fabric_opt_app.ui import PARAM_FIELDS, box_value, read_params


def test_only_loopback_is_served_without_a_password():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    AppConfig(host="127.0.0.1")
    with pytest.raises(ConfigError, match="set a password") as info:
        AppConfig(host="0.0.0.0")
    assert info.value.option == "password"
    assert AppConfig(host="0.0.0.0", password="s3cret").needs_login
    with pytest.raises(ConfigError):
        AppConfig(password="")
    with pytest.raises(ConfigError):
        AppConfig(port=70000)


def test_presets_builtin_files_and_bad_files(tmp_path):
    runs = tmp_path / "runs"
    (runs / "study" / "presets").mkdir(parents=True)
    tuned = FabricParams(max_weight=0.66, min_weight=0.2)
    write_preset(runs / "study" / "presets" / "study.json", tuned, prompt="a fox")
    (runs / "study" / "presets" / "study.comfyui.json").write_text("{}")  # an export, not a preset: not listed
    backend = AppBackend(AppConfig(runs_dir=runs))
    labels = [c.label for c in backend.preset_choices()]
    assert labels[0].startswith("paper") and labels[1].startswith("a1111") and len(labels) == 3
    assert backend.load_preset(labels[1])[0] == FabricParams.a1111()
    params, extra, label = backend.load_preset(labels[2])
    assert params == tuned and extra["prompt"] == "a fox" and label == "study.json"

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        backend.load_preset(bad)
    foreign = tmp_path / "a1111.json"
    foreign.write_text(json.dumps({"liked_paths": []}))
    with pytest.raises(ConfigError, match="not a fabric-opt preset"):
        backend.load_preset(foreign)
    with pytest.raises(ConfigError, match="a preset is a fabric-opt .json"):
        backend.load_preset(tmp_path / "image.png")


def test_the_parameter_boxes_are_checked():
    values = [box_value(FabricParams.paper(), n) for n in PARAM_FIELDS]
    assert values[PARAM_FIELDS.index("max_references")] == 0  # "all"
    assert read_params(values) == FabricParams.paper()
    three = dict(zip(PARAM_FIELDS, values), max_references=3)
    assert read_params([three[n] for n in PARAM_FIELDS]).max_references == 3
    impossible = dict(zip(PARAM_FIELDS, values), feedback_start=0.9, feedback_end=0.5)
    with pytest.raises(InvalidParameterError, match="must not exceed"):
        read_params([impossible[n] for n in PARAM_FIELDS])
    empty = dict(zip(PARAM_FIELDS, values), max_weight=None)
    with pytest.raises(InvalidParameterError, match="max_weight is empty"):
        read_params([empty[n] for n in PARAM_FIELDS])


def test_tune_mode_needs_references_stores_answers_and_resumes_after_a_restart(tmp_path, tiny_generator):
    config = AppConfig(model="tiny", runs_dir=tmp_path / "runs", tracking_uri=None)
    backend = AppBackend(config)
    backend._generator, backend._generator_model = tiny_generator, "tiny"  # the shared test model
    base = FabricParams(steps=2)
    session = backend.new_session("tiny")
    settings = RoundSettings("a red circle", n_images=2, params=base)
    session.generate(tiny_generator, settings)

    tuner = backend.tuner("mine", options=2, base=base)
    with pytest.raises(InvalidParameterError, match="mark at least one image"):
        tuner.ask(session, settings)
    session.toggle(1, 0, "liked")
    query, rounds = tuner.ask(session, settings)
    assert query.index == 0 and len(rounds) == 2 and len(rounds[0]) == 2
    assert [p.steps for p in query.params(tuner.tuner.space)] == [2, 2]
    liked = query.context["liked"]
    assert len(liked) == 1 and liked[0].startswith(str((tmp_path / "runs" / "mine" / "references").resolve()))
    tuner.answer(0, 1)
    second, _ = tuner.ask(session, settings)
    assert second.index == 1 and second.options != query.options

    # a restarted server: a new backend reads the same answers and shows the same comparison
    restarted = AppBackend(config)
    restarted._generator, restarted._generator_model = tiny_generator, "tiny"
    again = restarted.tuner("mine", options=3, base=FabricParams())  # the stored settings win
    assert len(again.tuner.answered) == 1 and again.tuner.config.options == 2
    resumed, resumed_rounds = again.ask(None, None)  # no session needed to show the pending comparison
    assert resumed.index == 1 and resumed.options == second.options
    assert [im.tobytes() for im in resumed_rounds[0]] == [im.tobytes() for im in tuner.rounds(second)[0]]
    again.answer(1, 0)
    assert again.recommendation().answers == 2
    files, notes = again.export("json")
    data = json.loads(files[0].read_text())
    assert FabricParams.from_dict(data["params"]) == again.recommendation().params
    assert data["liked"] == liked and data["source"]["preference_tuner"] == "mine"
    with pytest.raises(ConfigError, match="not the right|answered already"):
        again.answer(1, 0)
