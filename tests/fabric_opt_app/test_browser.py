"""The web app in a real browser: `fabric-opt app --model toy` on a free loopback port, driven by
Playwright in Debian's Chromium (``/usr/bin/chromium``; `.ci/run` installs it, nothing is downloaded).

Screenshots go to the test's temporary folder, and also to ``$FABRIC_OPT_SCREENSHOTS`` when set
(``FABRIC_OPT_SCREENSHOTS=docs/images pytest tests/fabric_opt_app/test_browser.py`` refreshes the
README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_S = 240  # gradio's import and the toy model on a busy 2-core machine
WAIT_MS = 180_000  # one round or comparison on a busy 2-core machine

pytestmark = pytest.mark.slow


def _need_chromium() -> None:
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing under CI; .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """`fabric-opt app --model toy` in its own process; yields (url, runs dir, tracking URI)."""
    _need_chromium()
    root = tmp_path_factory.mktemp("app")
    runs, port = root / "runs", _free_port()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_TEMP_DIR": str(root / "gradio"),
        "FABRIC_OPT_LOG_LEVEL": "INFO",
    }
    log = open(root / "app.log", "w")  # noqa: SIM115 - closed in the teardown
    args = ["app", "--model", "toy", "--port", str(port), "--n-images", "3", "--runs-dir", str(runs)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric_opt_cli.app", *args, "--tracking-uri", uri],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"the app did not start:\n{(root / 'app.log').read_text()[-3000:]}")
        time.sleep(1)
    yield url, runs, uri, root
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    url = app[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 1000})
        tab.set_default_timeout(WAIT_MS)
        outside: list[str] = []
        tab.on("request", lambda r: None if r.url.startswith((url[:-1], "data:", "blob:")) else outside.append(r.url))
        tab.outside_requests = outside  # type: ignore[attr-defined]
        tab.goto(url)
        tab.wait_for_selector("#generate")
        yield tab
        browser.close()


def _shot(page, root: Path, name: str) -> Path:
    path = root / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("FABRIC_OPT_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def _wait_text(page, selector: str, text: str) -> str:
    page.wait_for_function(
        "([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)", arg=[selector, text], timeout=WAIT_MS
    )
    return page.inner_text(selector)


def _session_record(uri: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fabric-opt-app")
    runs = client.search_runs([experiment.experiment_id], "tags.kind = 'rounds'")
    assert len(runs) == 1
    folder = Path(client.download_artifacts(runs[0].info.run_id, "session.json"))
    return json.loads(folder.read_text())


def test_rounds_likes_references_undo_and_bad_input(app, page):
    url, runs, uri, root = app
    page.fill("#prompt textarea", "a shape")
    page.click("#generate")
    _wait_text(page, "#round-info", "Round 1")
    thumbs = page.locator("#round-gallery .thumbnail-item")
    assert thumbs.count() == 3
    assert "references used: none" in page.inner_text("#round-info")

    thumbs.nth(1).click()  # like image 2
    assert "Image 2 of round 1: liked" in _wait_text(page, "#status", "liked")
    page.click("#generate")
    info = _wait_text(page, "#round-info", "Round 2")
    assert "liked: round 1 image 2" in info and "seeds 3–5" in info and "max_weight 0.3" in info
    assert "liked: round 1 image 2" in page.inner_text("#references")
    record = _session_record(uri)
    assert record["rounds"][1]["liked"] == ["round 1 image 2"] and record["rounds"][0]["marks"] == {"1": "liked"}
    assert record["rounds"][1]["seeds"] == [3, 4, 5]

    # mark the second round (one liked, one disliked) and keep that view for the README
    thumbs.nth(0).click()
    _wait_text(page, "#status", "Image 1 of round 2: liked")
    page.click("#mark-mode label:has-text('disliked')")
    thumbs.nth(2).click()
    _wait_text(page, "#status", "Image 3 of round 2: disliked")
    page.click("#mark-mode label:has-text('liked')")
    _shot(page, root, "app-rounds.png")

    # undo the last mark, reset, undo the reset
    page.click("#undo")
    _wait_text(page, "#status", "Undid the last mark")
    assert "disliked" not in page.inner_text("#round-gallery")
    page.click("#reset")
    _wait_text(page, "#status", "Reset")
    assert page.locator("#round-gallery .thumbnail-item").count() == 0
    page.click("#undo")
    _wait_text(page, "#status", "Undid the last reset")
    _wait_text(page, "#round-info", "Round 2")

    # a preset file fills the parameter boxes; the session exports as a preset plus references
    from fabric.params import FabricParams
    from fabric.preset import write_preset

    preset = write_preset(root / "mine.json", FabricParams(max_weight=0.65, neg_scale=0.25), prompt="a shape")
    page.set_input_files("#preset-file input[type=file]", str(preset))
    _wait_text(page, "#status", "Preset file mine.json loaded")
    page.click("text=Parameters (from the preset; edit freely)")
    assert page.input_value("#param-max_weight input") == "0.65"
    page.click("text=Export the session (preset + references)")
    page.click("#export")
    _wait_text(page, "#status", "Exported the session as json")
    exported = json.loads(next((runs / "app").glob("*/export/session.json")).read_text())
    assert exported["params"]["max_weight"] == 0.65 and len(exported["liked"]) == 2
    assert exported["seed"] == [6, 7, 8]  # the next round's seeds

    # bad input: a visible message, never a traceback, and the round stays
    page.fill("#param-feedback_start input", "0.95")
    page.click("#generate")
    assert "must not exceed feedback_end" in _wait_text(page, "#status", "⚠")
    page.fill("#param-feedback_start input", "0")
    page.fill("#model textarea", "no-such-model")
    page.click("#generate")
    assert "unknown model 'no-such-model'" in _wait_text(page, "#status", "unknown model")
    page.fill("#model textarea", "toy")
    broken = root / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    page.click("text=Add your own reference images")
    page.set_input_files("#upload-images input[type=file]", str(broken))
    page.wait_for_timeout(1500)
    page.click("#add-uploads")
    assert "cannot read image" in _wait_text(page, "#status", "cannot read image")
    body = page.inner_text("body")
    assert "Traceback" not in body and 'File "' not in body  # one-line messages, no stack trace
    assert "Round 2" in page.inner_text("#round-info")
    assert page.locator("#round-gallery .thumbnail-item").count() == 3
    assert page.outside_requests == []  # no analytics, fonts or anything else off the machine


def test_tune_mode_stores_answers_and_changes_the_proposal(app, page):
    from optimize.preference import PreferenceTuner
    from optimize.study import StorageSpec

    url, runs, uri, root = app
    page.click("button[role=tab]:has-text('Tune')")
    page.click("#tune-start")
    status = _wait_text(page, "#tune-status", "Comparison 1")
    assert "0 answer(s) stored" in status and "2 liked and 0 disliked" in status  # after the undo
    assert "No answers yet" in page.inner_text("#tune-recommendation")
    first_a = page.inner_text("#tune-params-0")
    assert "max_weight 0.3" in first_a  # the paper's defaults against a Sobol point

    def stored():
        return PreferenceTuner.open("app-tune", StorageSpec.parse(None, runs))

    page.click("#tune-pick-1")
    _wait_text(page, "#tune-status", "Comparison 2")
    tuner = stored()
    assert [q.winner for q in tuner.answered] == [1]
    second = tuner.pending
    assert second is not None and second.index == 1
    recommendation = _wait_text(page, "#tune-recommendation", "after 1 answers")

    page.click("#tune-pick-0")
    _wait_text(page, "#tune-status", "Comparison 3")
    tuner = stored()
    assert [q.winner for q in tuner.answered] == [1, 0]
    third = tuner.pending
    assert third.index == 2 and third.options != second.options != tuner.queries[0].options
    assert page.inner_text("#tune-params-0") != first_a
    assert _wait_text(page, "#tune-recommendation", "after 2 answers") != recommendation
    _shot(page, root, "app-tune.png")

    # a reload (closed browser) shows the same comparison again
    page.reload()
    page.wait_for_selector("#generate")
    page.click("button[role=tab]:has-text('Tune')")
    page.click("#tune-start")
    assert "Comparison 3" in _wait_text(page, "#tune-status", "Comparison 3")
    assert "2 answer(s) stored" in page.inner_text("#tune-status")
    assert page.outside_requests == []
