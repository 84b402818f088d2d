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
    PARENT_RUN_ATTR,
    TRACKING_URI_ATTR,
    MlflowTracker,
    NullTracker,
    check_tracking_uri,
    make_tracker,
    reward_grid,
    ui_command,
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
        ("sqlite://", "sqlite:///relative.db"),
        ("http://", "has no host"),
        ("http://host:notaport", "not a valid URL"),
        ("s3://bucket", "unsupported tracking URI scheme"),
    ],
)
def test_bad_tracking_uris_are_one_line_config_errors(uri, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_tracking_uri(uri)
    assert "\n" not in str(info.value)


def test_make_tracker_and_ui_command():
    assert isinstance(make_tracker("none"), NullTracker) and not make_tracker("off").enabled
    tracker = make_tracker("sqlite:////tmp/x.db")
    assert isinstance(tracker, MlflowTracker) and tracker.uri == "sqlite:////tmp/x.db"
    assert ui_command(tracker.uri) == "mlflow ui --backend-store-uri sqlite:////tmp/x.db"
    assert ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"


def test_reward_grid_labels_every_image_with_its_scores():
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    one = reward_grid(images, {"pickscore": [1.0, 2.0, 3.0]})
    two = reward_grid(images, {"pickscore": [1.0, 2.0, 3.0], "diversity": [80.0, 81.0, 82.0]}, title="round 0: a fox")
    other = reward_grid(images, {"pickscore": [1.0, 2.5, 3.0]})
    tile = one.width // 3
    assert one.width == 3 * tile and tile >= 160  # small images are enlarged so labels fit
    assert two.height > one.height  # a label line per objective, plus the title
    # the label strip under each image has text (dark pixels) and depends on the score
    strip = one.crop((tile, tile, 2 * tile, one.height)).convert("L")
    assert min(strip.getdata()) < 100
    assert (
        one.crop((tile, tile, 2 * tile, one.height)).tobytes()
        != other.crop((tile, tile, 2 * tile, other.height)).tobytes()
    )
    assert one.getpixel((tile // 2, tile // 2)) == (255, 0, 0)


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
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    # images and presets went through the server's artifact proxy
    images = [a.path for a in client.list_artifacts(children[0].info.run_id, "images")]
    assert sum(p.endswith(".png") for p in images) == 4  # 2 prompts x 2 rounds
    assert "presets/over-http.json" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "presets")}
    assert out.study.user_attrs[TRACKING_URI_ATTR] == mlflow_server.url
    assert tracker.run_url().startswith(f"{mlflow_server.url}/#/experiments/{experiment.experiment_id}/runs/")

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
    assert len(local.search_runs([local.get_experiment_by_name("over-http").experiment_id])) == 2  # parent + trial 2
