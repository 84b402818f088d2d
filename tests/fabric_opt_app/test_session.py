"""A person's FABRIC session without the browser: rounds, marks, undo, reset, uploads, export, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fabric.errors import ConfigError, InvalidParameterError
from fabric.params import FabricParams
from fabric_opt_app.session import RoundSettings, RoundsSession, marked_grid

PARAMS = FabricParams(steps=3, max_weight=0.8)


def settings(seed: int = 0, **kw) -> RoundSettings:
    return RoundSettings("a red circle", n_images=3, params=PARAMS, seed=seed, **kw)


def pixels(images) -> list[bytes]:
    return [np.asarray(im.convert("RGB")).tobytes() for im in images]


def test_settings_are_validated():
    assert settings(seed=5).seeds == [5, 6, 7]
    for bad in ({"prompt": " "}, {"n_images": 0}, {"n_images": 17}, {"seed": -1}):
        with pytest.raises(InvalidParameterError):
            RoundSettings(**{"prompt": "a", **bad})


def test_marked_images_are_the_next_rounds_references_and_undo_reset_work(tiny_generator):
    session = RoundsSession("tiny")
    first = session.generate(tiny_generator, settings(seed=0))
    assert first.number == 1 and first.liked == () and first.disliked == ()
    assert session.toggle(1, 1, "liked") == "liked"
    assert session.toggle(1, 2, "disliked") == "disliked"
    assert session.toggle(1, 0, "liked") == "liked"
    assert session.toggle(1, 0, "liked") is None  # a second click clears the mark
    liked, disliked = session.reference_images()
    assert pixels(liked) == pixels([first.images[1]]) and pixels(disliked) == pixels([first.images[2]])

    second = session.generate(tiny_generator, settings(seed=3))
    assert second.liked == ("round 1 image 2",) and second.disliked == ("round 1 image 3",)
    # the references changed the images: without them the same seeds give the plain round
    plain = tiny_generator.generate("a red circle", params=PARAMS, n_images=3, seed=[3, 4, 5])
    assert pixels(second.images) != pixels(plain)
    again = tiny_generator.generate(
        "a red circle", liked=liked, disliked=disliked, params=PARAMS, n_images=3, seed=[3, 4, 5]
    )
    assert pixels(second.images) == pixels(again)

    assert session.undo() == "round"
    assert [r.number for r in session.rounds] == [1]
    assert session.undo() == "mark"  # the cleared mark on image 1 comes back
    assert session.mark_of(1, 0) == "liked"
    session.reset()
    assert session.rounds == [] and session.references() == []
    assert session.undo() == "reset"
    assert [r.number for r in session.rounds] == [1] and len(session.references()) == 3
    third = session.generate(tiny_generator, settings(seed=6))
    assert third.number == 3  # numbers are never reused: an undone round keeps its MLflow artifacts
    with pytest.raises(InvalidParameterError, match="no round 2"):
        session.set_mark(2, 0, "liked")
    with pytest.raises(InvalidParameterError, match="no image 9"):
        session.set_mark(3, 8, "liked")
    with pytest.raises(InvalidParameterError):
        RoundsSession("tiny").undo()


def test_uploaded_images_are_references_too(tiny_generator, solid_images):
    session = RoundsSession("tiny")
    refs = session.add_uploads([solid_images["red"], solid_images["blue"]], ["red.png", "blue.png"], "liked")
    assert [r.label for r in refs] == ["upload 1 (red.png)", "upload 2 (blue.png)"]
    first = session.generate(tiny_generator, settings())
    assert first.liked == ("upload 1 (red.png)", "upload 2 (blue.png)")
    assert session.undo() == "round" and session.undo() == "upload"
    assert session.references() == []


def test_the_exported_json_preset_replays_the_next_round_with_fabric_opt_generate(tiny_generator, tmp_path, capsys):
    from fabric_opt_cli.app import main

    session = RoundsSession("tiny", export_dir=tmp_path / "session")
    session.generate(tiny_generator, settings(seed=0))
    session.toggle(1, 0, "liked")
    session.toggle(1, 2, "disliked")
    nxt = settings(seed=10, negative_prompt="blurry")
    exported = session.export("json", nxt)
    preset = exported.files[0]
    data = json.loads(preset.read_text())
    assert data["seed"] == [10, 11, 12] and data["n_images"] == 3 and data["model"] == "tiny"
    assert len(data["liked"]) == 1 and len(data["disliked"]) == 1
    assert FabricParams.from_dict(data["params"]) == PARAMS

    out = tmp_path / "replay"
    with pytest.raises(SystemExit) as info:
        main(["generate", "--preset", str(preset), "--out", str(out)])
    assert info.value.code == 0, capsys.readouterr().err
    from PIL import Image

    replayed = [Image.open(out / f"image_{i:02d}.png").convert("RGB") for i in range(3)]
    round2 = session.generate(tiny_generator, nxt)
    assert pixels(replayed) == pixels(round2.images)

    a1111 = session.export("a1111", nxt, out_dir=tmp_path / "a1111")
    text = a1111.files[0].read_text()
    assert "fabric_pos_images" in text and "Seed: 10" in text
    comfy = session.export("comfyui", nxt, out_dir=tmp_path / "comfy")
    assert comfy.notes  # ComfyUI has no minimum weight etc.: said, not dropped silently
    with pytest.raises(ConfigError, match="unknown export format"):
        session.export("png", nxt)


def test_the_session_is_one_mlflow_run_with_every_round_and_mark(tiny_generator, tmp_path):
    from mlflow import MlflowClient

    from optimize.tracking import AppRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = AppRun(uri, "fabric-opt-app", "session-test", tags={"kind": "rounds"})
    session = RoundsSession("tiny", run=run)
    session.generate(tiny_generator, settings(seed=0))
    session.toggle(1, 1, "liked")
    session.generate(tiny_generator, settings(seed=3))
    session.toggle(2, 0, "disliked")
    run.end()

    client = MlflowClient(uri)
    info = client.get_run(run.run_id)
    assert info.info.status == "FINISHED" and info.data.tags["model"] == "tiny"
    files = {f.path for f in client.list_artifacts(run.run_id)}
    assert {"round-1", "round-2", "session.json"} <= files
    # artifacts lie beside the database, as a study's do, not in ./mlruns
    assert (tmp_path / "mlflow-artifacts" / "fabric-opt-app" / run.run_id / "artifacts" / "session.json").is_file()
    assert {f.path for f in client.list_artifacts(run.run_id, "round-2")} == {
        "round-2/image-0.png", "round-2/image-1.png", "round-2/image-2.png", "round-2/marked.png",
    }  # fmt: skip
    record = json.loads(Path(client.download_artifacts(run.run_id, "session.json", str(tmp_path))).read_text())
    rounds = record["rounds"]
    assert [r["seeds"] for r in rounds] == [[0, 1, 2], [3, 4, 5]]
    assert rounds[0]["marks"] == {"1": "liked"} and rounds[1]["marks"] == {"0": "disliked"}
    assert rounds[1]["liked"] == ["round 1 image 2"] and rounds[1]["params"] == PARAMS.to_dict()
    assert [e["event"] for e in record["events"]] == ["round", "mark", "round", "mark"]
    history = client.get_metric_history(run.run_id, "liked")
    assert [m.value for m in history][-1] == 1.0
    assert "MLflow run" in run.describe()


def test_marked_grid_frames_the_marks(solid_images):
    grid = marked_grid([solid_images["blue"]] * 3, ["liked", "disliked", None], size=20)
    assert grid.size == (3 * 28, 28)
    assert grid.getpixel((0, 0)) == (34, 160, 60) and grid.getpixel((28, 0)) == (200, 40, 40)
