"""Studies end to end: Optuna storage, MLflow parent/child runs, resuming, presets and plots.

The end-to-end test runs the real tiny generator and tiny reward models; the others use the
solid-colour stand-ins of ``conftest.py`` so they take a fraction of a second per trial.
"""

from __future__ import annotations

import warnings

import optuna
import pytest

from fabric.errors import ConfigError
from fabric.preset import read_preset
from optimize.config import load_study_config
from optimize.study import CONFIG_ATTR, Components, StorageSpec, load_components, open_study, run_study
from optimize.tracking import PARENT_RUN_ATTR, STUDY_RUN_TAG, MlflowTracker, NullTracker, TrackingWarning

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The tiny demo study shrunk further: one train and one held-out prompt, 2 rounds x 2 images, 3 steps.
SMALL = {
    "prompts": {
        "train": {"list": ["a red circle on a blue background"]},
        "validation": {"list": ["a green circle on a white background"]},
    },
    "protocol": {"steps": 3},
    "sampler": {"name": "random"},
    "trials": 2,
}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    # One SQLite store per test session: creating MLflow's schema costs seconds; experiment names keep tests apart.
    return f"sqlite:///{tmp_path_factory.getbasetemp() / 'studies-mlflow.db'}"


def _runs(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) + len(children) == len(runs)
    return client, parents, children


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_tiny_study_end_to_end_then_resume(tiny_generator, mlflow_uri, tmp_path):
    config = load_study_config("tiny", SMALL)
    components = load_components(config, generator=tiny_generator)
    storage = StorageSpec.parse(tmp_path / "study.journal")

    out = run_study(
        config, name="e2e", storage=storage, tracker=MlflowTracker(mlflow_uri), runs_dir=tmp_path, components=components
    )

    assert out.new_trials == (0, 1) and not out.resumed and out.tracking_failure is None
    client, parents, children = _runs(mlflow_uri, "e2e")
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert out.study.user_attrs[PARENT_RUN_ATTR] == parent.info.run_id == out.parent_run_id
    assert {c.data.tags[STUDY_RUN_TAG] for c in children} == {parent.info.run_id}
    assert parent.info.run_name == "e2e (study)"
    for child in children:
        run_id, data = child.info.run_id, child.data
        assert data.tags["sampler"] == "random" and data.tags["state"] == "COMPLETE"
        assert child.info.status == "FINISHED" and child.info.run_name == f"trial-{data.tags['trial_number']}"
        assert data.tags["warm_start"] in ("paper", "a1111")  # both trials were the enqueued defaults
        trial = out.study.trials[int(data.tags["trial_number"])]
        assert float(data.params["max_weight"]) == trial.user_attrs["fabric_params"]["max_weight"]
        assert data.params["steps"] == "3" and "search/feedback_span" in data.params
        for key in ("score/pickscore", "diversity"):
            assert _steps(client, run_id, key) == [1, 2]  # one value per round, rounds from 1
        assert data.metrics["value"] == pytest.approx(trial.value)
        assert {"mean", "se"} <= set(data.metrics)
        number = data.tags["trial_number"]
        images = [a.path for a in client.list_artifacts(run_id, f"trial-{number}/prompt-1")]
        assert images == [f"trial-{number}/prompt-1/round-1.png", f"trial-{number}/prompt-1/round-2.png"]
        assert [a.path for a in client.list_artifacts(run_id)] == [f"trial-{number}"]  # no generated names
    assert _steps(client, parent.info.run_id, "best_value") == [0, 1]  # step = trial number
    assert _steps(client, parent.info.run_id, "baseline/score/pickscore") == [1, 2]
    assert parent.data.params["rounds"] == "2" and parent.data.params["objective"] == "pickscore"
    artifacts = {a.path for folder in ("plots", "presets") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {
        "plots/history.png",
        "presets/e2e.json",
        "presets/e2e.a1111.txt",
        "presets/e2e.comfyui.json",
        "presets/e2e.comfyui.workflow.json",
        "presets/e2e.py",
    } <= artifacts
    # the flat trial table at the top of the study run's artifacts
    assert "trials.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    table = (tmp_path / "e2e" / "trials.csv").read_text().splitlines()
    assert table[0].startswith("trial,state,value,warm_start,") and len(table) == 3
    # the recommendation's JSON preset loads back into the exact parameters
    assert out.presets[0].name == "e2e.json" and read_preset(out.presets[0])["params"] == out.recommendation.params

    # Resuming with a larger budget adds one trial under the same parent run
    more = run_study(
        config.replace(trials=3),
        name="e2e",
        storage=storage,
        tracker=MlflowTracker(mlflow_uri),
        runs_dir=tmp_path,
        components=components,
        export=False,
    )
    assert more.resumed and more.new_trials == (2,) and more.parent_run_id == parent.info.run_id
    _, parents, children = _runs(mlflow_uri, "e2e")
    assert len(parents) == 1 and len(children) == 3
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == [0, 1, 2]
    # the baseline came from the cache: still one value per round on the parent
    assert _steps(client, parent.info.run_id, "baseline/score/pickscore") == [1, 2]

    # The budget is spent: running again adds nothing
    again = run_study(
        config.replace(trials=3),
        name="e2e",
        storage=storage,
        tracker=MlflowTracker(mlflow_uri),
        runs_dir=tmp_path,
        components=components,
        export=False,
    )
    assert again.new_trials == () and len(_runs(mlflow_uri, "e2e")[2]) == 3


def _standin_config(**changes):
    overrides = {
        **SMALL,
        "prompts": {"train": {"list": ["a", "b"]}, "validation": {"list": ["c"]}},
        "protocol": {"steps": 2, "n_images": 3},
        "warm_start": [],
        "metrics": [],
    }
    overrides.update(changes)
    return load_study_config("tiny", overrides)


def test_resume_refuses_changed_settings_and_creates_nothing(standins, generator, red, tmp_path):
    config = _standin_config(trials=1)
    storage = StorageSpec.parse(tmp_path / "s.journal")
    run_study(config, storage=storage, runs_dir=tmp_path, components=Components(generator, red), export=False)
    before = storage.path.read_bytes()
    changed = _standin_config(trials=2, prompts={"train": {"list": ["a", "z"]}})
    with pytest.raises(ConfigError, match="different prompts.*another study name") as error:
        run_study(changed, storage=storage, runs_dir=tmp_path, components=Components(standins.ColourGenerator(), red))
    assert (error.value.option, error.value.example) == ("name", "NEW")
    assert storage.path.read_bytes() == before  # nothing written to the storage
    # the sampler and the budget may change between runs
    resumed = run_study(
        _standin_config(trials=2, sampler={"name": "tpe"}),
        storage=storage,
        runs_dir=tmp_path,
        components=Components(generator, red),
        export=False,
    )
    assert resumed.resumed and len(resumed.new_trials) == 1


def test_stored_config_reopens_the_study(generator, red, tmp_path):
    config = _standin_config(trials=1)
    storage = StorageSpec.parse(tmp_path / "s.journal")
    run_study(
        config, name="kept", storage=storage, runs_dir=tmp_path, components=Components(generator, red), export=False
    )
    study, stored = open_study("kept", storage)
    assert stored.fingerprint() == config.replace(name="kept").fingerprint()
    assert stored.protocol.prompts == ("a", "b") and study.user_attrs[CONFIG_ATTR]["trials"] == 1
    with pytest.raises(ConfigError, match="no study named 'nope'.*kept"):
        open_study("nope", storage)
    with pytest.raises(ConfigError, match="no study storage"):
        open_study("kept", StorageSpec.parse(tmp_path / "missing.journal"))
    assert not (tmp_path / "missing.journal").exists()


def test_tracking_failure_warns_once_and_the_study_goes_on(generator, red, tmp_path):
    from servers import free_port

    tracker = MlflowTracker(f"http://127.0.0.1:{free_port()}", health_timeout=1.0)  # nothing listens there
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_study(
            _standin_config(trials=2),
            storage=tmp_path / "s.journal",
            tracker=tracker,
            runs_dir=tmp_path,
            components=Components(generator, red),
        )
    tracking_warnings = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(tracking_warnings) == 1 and "resume" in str(tracking_warnings[0].message)
    assert len(out.new_trials) == 2 and all(t.state.name == "COMPLETE" for t in out.study.trials)
    assert out.tracking_uri is None and "no MLflow server" in out.tracking_failure
    assert out.presets and out.plots  # presets and plots are still written locally


def test_pareto_study_plots_the_front(standins, generator, red, blue, mlflow_uri, tmp_path):
    config = _standin_config(
        objective="pickscore,diversity", trials=4, protocol={"prune": False, "steps": 2, "n_images": 3}
    )
    objective = standins.MultiObjective([red, standins.ChannelObjective(2, "blue", "minimize")])
    out = run_study(
        config,
        name="pareto",
        storage=tmp_path / "s.journal",
        tracker=MlflowTracker(mlflow_uri),
        runs_dir=tmp_path,
        components=Components(generator, objective),
    )
    assert [d.name for d in out.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert {p.name for p in out.plots} >= {"history.png", "pareto.png"}
    client, parents, children = _runs(mlflow_uri, "pareto")
    assert len(children) == 4
    assert {"value/pickscore", "value/diversity"} <= set(children[0].data.metrics)
    assert _steps(client, parents[0].info.run_id, "pareto_front_size") == [0, 1, 2, 3]


def test_nan_scores_fail_the_trial_not_the_study(standins, generator, tmp_path):
    tracker = NullTracker()
    out = run_study(
        _standin_config(trials=2, protocol={"value": "final", "steps": 2, "n_images": 3}),
        storage=tmp_path / "s.journal",
        tracker=tracker,
        runs_dir=tmp_path,
        components=Components(generator, standins.NaNObjective()),
    )
    assert [t.state.name for t in out.study.trials] == ["FAIL", "FAIL"]
    assert out.recommendation is None and out.presets == ()


def test_target_image_study_on_the_tiny_model(tiny_generator, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (220, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (64, 64), (30, 40, 220)).save(tmp_path / "blue.png")
    (tmp_path / "pairs.csv").write_text("prompt,image\na red circle,red.png\n")
    (tmp_path / "heldout.csv").write_text("prompt,image\na blue square,blue.png\n")
    overrides = {
        "model": "tiny", "objective_weights": {"target": "tiny"}, "trials": 1, "warm_start": ["paper"],
        "pruner": "none",
        "prompts": {"train": str(tmp_path / "pairs.csv"), "validation": str(tmp_path / "heldout.csv")},
        "protocol": {"rounds": 2, "n_images": 2, "steps": 3}, "sampler": "random",
    }  # fmt: skip
    config = load_study_config("target", overrides)
    components = load_components(config, generator=tiny_generator)
    out = run_study(config, storage=tmp_path / "s.journal", runs_dir=tmp_path, components=components, export=False)
    [trial] = out.study.trials
    assert trial.state.name == "COMPLETE" and set(trial.user_attrs["round_metrics"]) == {"score/target"}
    assert len(trial.user_attrs["round_metrics"]["score/target"]) == 2
    with pytest.raises(ConfigError, match="compares with a target image"):
        load_components(
            config.replace(feedback_objective="pickscore", objective_weights={"target": "tiny", "pickscore": "tiny"}),
            generator=tiny_generator,
        )


def test_the_token_cache_bound_reaches_the_study_generator():
    """``--token-cache-gb`` -> run_study -> load_components -> the loaded generator."""
    config = load_study_config("tiny", SMALL)
    assert load_components(config, cache_bytes=3 << 20).generator.state_cache.max_bytes == 3 << 20
    assert load_components(config).generator.state_cache.max_bytes == 1 << 30  # the generator's default


@pytest.mark.parametrize("frontend", ["a1111", "comfyui"])
def test_a_frontend_study_exports_exactly_what_it_tuned(frontend, generator, red, tmp_path):
    from optimize.export import comfyui_plan, export_params

    config = _standin_config(
        trials=4, warm_start=["paper", "a1111"], search_space={"extends": "default", "frontend": frontend}
    )
    out = run_study(config, storage=tmp_path / "s.journal", runs_dir=tmp_path, components=Components(generator, red))
    for number in out.new_trials:  # every trial ran parameters the frontend can apply
        params = out.study.trials[number].user_attrs["fabric_params"]
        assert params["prompt_dropout"] == 0.0 and params["max_references"] is None
        assert params["pos_bottleneck_scale"] == params["neg_bottleneck_scale"] == 1.0
    tuned = out.recommendation.params
    exported = export_params(tuned, frontend)
    lossy = ("not representable", "rounded", "cannot select", "nearest")
    assert not [n for n in exported.notes if any(word in n for word in lossy)], exported.notes
    if frontend == "comfyui":
        assert comfyui_plan(tuned).exact
    # the study's own presets (written at the end) say the same
    ending = ".a1111.txt" if frontend == "a1111" else ".comfyui.workflow.json"
    written = tmp_path / config.name / "presets" / f"{config.name}{ending}"
    assert written.is_file() and "not representable" not in written.read_text()
