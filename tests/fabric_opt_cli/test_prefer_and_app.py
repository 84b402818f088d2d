"""`fabric-opt prefer` (a simulated person, resumable) and `fabric-opt app`'s checks before serving."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fabric.preset import load_params
from fabric_opt_cli.app import main
from optimize.preference import PreferenceTuner
from optimize.study import StorageSpec


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_prefer_answers_with_a_simulated_person_resumes_and_exports(tmp_path, capsys):
    runs = tmp_path / "runs"
    common = ["--model", "tiny", "--objective-option", "taste=warm", "--steps", "2", "--n-images", "2"]
    common += ["--runs-dir", str(runs), "--prompts", "tiny"]
    code, out, err = run(["prefer", "mine", "--queries", "2", *common], capsys)
    assert code == 0, err
    assert "Tuner mine (created" in out and "2 answers" in out
    tuner = PreferenceTuner.open("mine", StorageSpec.parse(None, runs))
    assert len(tuner.answered) == 2 and tuner.pending is None

    code, out, err = run(["prefer", "mine", "--queries", "3", "--export", "json", "--export", "a1111", *common], capsys)
    assert code == 0, err
    assert "(resumed" in out and "3 answers" in out
    preset = runs / "mine" / "presets" / "mine.json"
    assert (runs / "mine" / "presets" / "mine.a1111.txt").is_file()
    tuner = PreferenceTuner.open("mine", StorageSpec.parse(None, runs))
    assert load_params(preset) == tuner.recommend().params
    assert json.loads(preset.read_text())["source"]["answers"] == 3

    # other settings under the same name: refused in one line
    code, _, err = run(["prefer", "mine", "--queries", "3", "--options", "3", *common], capsys)
    assert code == 2 and "other settings (options)" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--export", "png"], "unknown export format"),
        (["--objective-option", "taste"], "KEY=VALUE"),
        (["--options", "1"], "options must be"),
        (["--acquisition", "ei"], "acquisition must be"),
        (["--prompts", "no-such-list"], "no-such-list"),
    ],
)
def test_prefer_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, _, err = run(["prefer", "x", "--model", "tiny", "--runs-dir", str(tmp_path), *args], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "optuna.journal").exists()  # nothing created


def test_app_refuses_other_addresses_without_a_password(capsys):
    code, _, err = run(["app", "--host", "0.0.0.0"], capsys)
    assert code == 2 and "--password" in err and err.count("\n") == 1


def test_help_does_not_import_gradio():
    code = (
        "import sys\n"
        "from fabric_opt_cli.app import main\n"
        "try:\n    main(['app', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'gradio' not in sys.modules, 'gradio imported by --help'\n"
        "assert 'botorch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--password" in result.stdout
