"""MLflow tracking: URI validation, labelled grids, a study logged over HTTP to a real
``mlflow server`` on 127.0.0.1, and moving a study to another tracking store."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from PIL import Image

from fabric.errors import ConfigError
from optimize.config import load_study_config
from optimize.study import Components, StorageSpec, run_study
from optimize.tracking import (
    DISLIKED_COLOUR,
    LIKED_COLOUR,
    PARENT_RUN_ATTR,
    STUDY_RUN_TAG,
    TRACKING_URI_ATTR,
    MlflowTracker,
    NullTracker,
    artifact_root,
    check_tracking_uri,
    make_tracker,
    reward_grid,
    ui_command,
    ui_url,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(**changes):
    overrides = {
        "prompts": {"train": {"list": ["a", "b"]}, "validation": {"list": ["c"]}},
        "protocol": {"steps": 2, "n_images": 3},
        "sampler": "random",
        "warm_start": ["paper"],
        "metrics": [],
        "trials": 2,
        **changes,
    }
    return load_study_config("tiny", overrides)


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("sqlite:///mlflow.db", f"sqlite:///{Path.cwd() / 'mlflow.db'}"),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
        ("http://127.0.0.1:5000/", "http://127.0.0.1:5000"),
        ("https://mlflow.example.org", "https://mlflow.example.org"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("databricks", "databricks"),
        ("none", None),
        ("", None),
    ],
)
def test_tracking_uri_forms(uri, expected):
    assert check_tracking_uri(uri) == expected


@pytest.mark.parametrize(
    "uri, message",
    [
        ("./mlruns", "file stores"),
        ("file:///tmp/mlruns", "file stores"),
        ("sqlite://", "sqlite:///mlflow.db"),
        ("sqlite:/relative.db", r"write SQLite as sqlite:///relative\.db "),  # not sqlite:///sqlite:/...
        ("postgres://u@h/db", r"write postgresql://u@h/db"),
        ("http://", "has no host"),
        ("http://host:notaport", "not a valid URL"),
        ("s3://bucket", "unsupported tracking URI scheme"),
    ],
)
def test_bad_tracking_uris_are_one_line_config_errors(uri, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_tracking_uri(uri)
    assert "\n" not in str(info.value)


def test_make_tracker_ui_command_and_artifact_root():
    assert isinstance(make_tracker("none"), NullTracker) and not make_tracker("off").enabled
    tracker = make_tracker("sqlite:////tmp/runs/x.db")
    assert isinstance(tracker, MlflowTracker) and tracker.uri == "sqlite:////tmp/runs/x.db"
    # artifacts beside the database, one folder per database file
    assert artifact_root(tracker.uri) == Path("/tmp/runs/x-artifacts")
    assert artifact_root("sqlite:///runs/mlflow.db") == Path.cwd() / "runs" / "mlflow-artifacts"
    assert artifact_root("http://127.0.0.1:5000") is None and artifact_root("postgresql://u@h/db") is None
    assert ui_command(tracker.uri) == (
        "mlflow ui --backend-store-uri sqlite:////tmp/runs/x.db --default-artifact-root /tmp/runs/x-artifacts "
        "--host 127.0.0.1 --port 5000"
    )
    assert ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"
    assert ui_url(tracker.uri, "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"


def test_reward_grid_labels_every_image_with_its_scores_and_marks_the_users_choice():
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    one = reward_grid(images, {"pickscore": [1.0, 2.0, 3.0]})
    two = reward_grid(images, {"pickscore": [1.0, 2.0, 3.0], "diversity": [80.0, 81.0, 82.0]}, title="round 1: a fox")
    other = reward_grid(images, {"pickscore": [1.0, 2.5, 3.0]})
    cell = one.width // 3
    assert one.width == 3 * cell and cell >= 160  # small images are enlarged so labels fit
    assert two.height > one.height  # a label line per objective, plus the title
    # the label strip under each image has text (dark pixels) and depends on the score
    strip = one.crop((cell, cell, 2 * cell, one.height)).convert("L")
    assert min(strip.getdata()) < 100
    assert (
        one.crop((cell, cell, 2 * cell, one.height)).tobytes()
        != other.crop((cell, cell, 2 * cell, other.height)).tobytes()
    )
    assert one.getpixel((cell // 2, cell // 2)) == (255, 0, 0)
    # the liked image framed green, the disliked one red, each with a label; the images themselves untouched
    marked = reward_grid(images, {"pickscore": [1.0, 2.0, 3.0]}, choice=(2, 0))
    assert marked.height > one.height  # the "liked"/"disliked" line
    assert marked.getpixel((2 * cell + 2, cell // 2)) == LIKED_COLOUR
    assert marked.getpixel((2, cell // 2)) == DISLIKED_COLOUR
    assert marked.getpixel((cell + 2, cell // 2)) == (255, 255, 255)  # the unmarked one keeps a white margin
    assert marked.getpixel((cell // 2, cell // 2)) == (255, 0, 0)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    import os
    import signal

    from servers import start_mlflow

    with pytest.MonkeyPatch.context() as env:
        # the server's job runner (three more processes) serves features a tracking test never uses
        env.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        server = start_mlflow(tmp_path_factory.mktemp("mlflow-server"))
    if isinstance(server, str):
        pytest.skip(f"mlflow server could not start: {server}")
    yield server
    try:  # the server's process group: `mlflow server` and its uvicorn worker stop together
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    server.stop()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    # One SQLite store per test session: creating MLflow's schema costs seconds; experiment names keep tests apart.
    return f"sqlite:///{tmp_path_factory.getbasetemp() / 'studies-mlflow.db'}"


def test_study_logs_to_a_real_mlflow_server_then_moves_to_sqlite(mlflow_server, mlflow_uri, generator, red, tmp_path):
    from mlflow import MlflowClient

    storage = StorageSpec.parse(tmp_path / "s.journal")
    tracker = MlflowTracker(mlflow_server.url)
    out = run_study(
        _config(),
        name="over-http",
        storage=storage,
        tracker=tracker,
        runs_dir=tmp_path,
        components=Components(generator, red),
    )
    assert out.tracking_failure is None and out.tracking_uri == mlflow_server.url
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("over-http")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    # the trials sit beside the study run (not nested: MLflow's table would fold them away)
    assert not any("mlflow.parentRunId" in r.data.tags for r in runs)
    assert {r.data.tags[STUDY_RUN_TAG] for r in children} == {parents[0].info.run_id}
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # images and presets went through the server's artifact proxy, named trial-N/prompt-K/round-R.png
    number = children[0].data.tags["trial_number"]
    images = [
        a.path
        for folder in client.list_artifacts(children[0].info.run_id, f"trial-{number}")
        for a in client.list_artifacts(children[0].info.run_id, folder.path)
    ]
    assert sorted(images) == [f"trial-{number}/prompt-{p}/round-{r}.png" for p in (1, 2) for r in (1, 2)]
    assert "presets/over-http.json" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "presets")}
    assert out.study.user_attrs[TRACKING_URI_ATTR] == mlflow_server.url
    # the experiment page on its runs table (MLflow 3 opens GenAI pages without workflowType)
    assert (
        tracker.run_url()
        == f"{mlflow_server.url}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    )

    # Resumed against another tracking store, the study gets a new parent run there
    sqlite_uri = mlflow_uri
    moved = run_study(
        _config(trials=3),
        name="over-http",
        storage=storage,
        tracker=MlflowTracker(sqlite_uri),
        runs_dir=tmp_path,
        components=Components(generator, red),
        export=False,
    )
    assert moved.resumed and moved.parent_run_id not in (None, parents[0].info.run_id)
    assert moved.study.user_attrs[PARENT_RUN_ATTR] == moved.parent_run_id
    assert moved.study.user_attrs[TRACKING_URI_ATTR] == sqlite_uri
    local = MlflowClient(sqlite_uri)
    moved_experiment = local.get_experiment_by_name("over-http")
    assert len(local.search_runs([moved_experiment.experiment_id])) == 2  # study run + trial 2
    # a SQLite store keeps its artifacts beside the database
    root = artifact_root(sqlite_uri)
    assert moved_experiment.artifact_location.removeprefix("file://") == str(root / "over-http")
