"""The ``study``, ``report`` and ``export`` commands, run in-process through
``fabric_opt_cli.app.main`` (the console entry point), on the tiny model.

Bad input must give one ``error: ...`` line, exit code 2, and leave no study, run or file behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabric.preset import read_preset
from fabric_opt_cli.app import main
from optimize.export import parse_a1111

NAME = "clitiny"
STUDY_YAML = """\
extends: tiny           # the demo study, shrunk further for the test
name: clitiny
prompts:
  train: {list: ["a red circle on a blue background"]}
  validation: {list: ["a green circle on a white background"]}
protocol: {steps: 3}
sampler: random
warm_start: [paper]
trials: 2
"""


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "study.yaml").write_text(STUDY_YAML)
    return root


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    # One SQLite store per test session: creating MLflow's schema costs seconds; experiment names keep tests apart.
    return tmp_path_factory.getbasetemp() / "studies-mlflow.db"


@pytest.fixture(scope="module")
def common(workdir, mlflow_db):
    return ["--runs-dir", str(workdir / "runs"), "--tracking-uri", f"sqlite:///{mlflow_db}"]


@pytest.fixture(scope="module")
def ran(workdir, common):
    """One CLI study of 2 trials, shared by the tests below (model loading is the slow part)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only contend with other test processes
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["study", "--study", str(workdir / "study.yaml"), *common])
    finally:
        torch.set_num_threads(threads)
    assert exit_info.value.code == 0
    return workdir


def test_study_prints_summary_preset_and_mlflow_command(ran, common, mlflow_db, capsys):
    # a finished study runs no trial when called again, and prints the same summary
    code, out, err = run(["study", "--study", str(ran / "study.yaml"), *common], capsys)
    assert code == 0, err
    assert "Study clitiny (resumed" in out and "2 of 2 finished" in out and "0 run now" in out
    assert f"recommended preset: {ran / 'runs' / NAME / 'presets' / 'clitiny.json'}" in out
    root = mlflow_db.with_name("studies-mlflow-artifacts")  # the artifacts beside the database
    assert f"mlflow ui --backend-store-uri sqlite:///{mlflow_db} --default-artifact-root {root} " in out
    assert "#/experiments/" in out and "?workflowType=machine_learning" in out
    assert (ran / "runs" / "optuna.journal").is_file() and (ran / "runs" / NAME / "plots" / "history.png").is_file()


def test_resume_with_more_trials_adds_them(ran, common, mlflow_db, capsys):
    from mlflow import MlflowClient

    code, out, err = run(["study", "--study", str(ran / "study.yaml"), "--trials", "3", *common], capsys)
    assert code == 0, err
    assert "3 of 3 finished" in out and "1 run now" in out
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert len(runs) == 4  # the study run, three trial runs


def test_report_compares_with_the_defaults_on_held_out_prompts(ran, common, capsys):
    code, out, err = run(["report", NAME, *common], capsys)
    assert code == 0, err
    report = json.loads((ran / "runs" / NAME / "report" / "report.json").read_text())
    comparisons = {c["reference"]: c for c in report["recommendation"]["comparisons"]}
    assert set(comparisons) == {"paper", "a1111"}
    for c in comparisons.values():
        assert c["ci_low"] <= c["mean_difference"] <= c["ci_high"] and len(c["per_prompt"]) == 1
    assert report["trials"]["COMPLETE"] >= 2 and report["recommendation"]["params"]["steps"] == 3
    for plot in ("history.png", "comparison.png", "showcase.png"):
        assert (ran / "runs" / NAME / "report" / plot).is_file()
    assert "Held-out comparison" in out and "paper" in out and "a1111" in out
    assert "caution: the comparison uses 1 held-out prompt(s)" in out  # one prompt is not evidence


def test_export_formats(ran, capsys, tmp_path):
    runs = ["--runs-dir", str(ran / "runs")]
    code, out, err = run(["export", NAME, "--format", "json", *runs], capsys)
    assert code == 0, err
    preset = read_preset(ran / "runs" / NAME / "presets" / f"{NAME}.json")
    assert preset["prompt"] == "a red circle on a blue background" and preset["model"] == "tiny"

    from PIL import Image

    liked, disliked = tmp_path / "liked.png", tmp_path / "disliked.png"
    Image.new("RGB", (8, 8), "red").save(liked)
    Image.new("RGB", (8, 8), "blue").save(disliked)
    references = ["--liked", str(liked), "--disliked", str(disliked)]
    code, out, err = run(
        ["export", NAME, "--format", "a1111", "--trial", "0", *references, "--out", str(tmp_path / "p.txt"), *runs],
        capsys,
    )
    assert code == 0, err
    fields = parse_a1111((tmp_path / "p.txt").read_text())
    assert fields["prompt"] == "a red circle on a blue background"
    assert fields["negative_prompt"] == "lowres, bad anatomy, bad hands, cropped, worst quality"
    assert fields["Steps"] == "3" and fields["fabric_max_weight"] == "0.3"  # trial 0 is the paper's preset
    # the references are copied where the extension resolves the preset's and the text's file names
    folder = tmp_path / "p" / "log" / "fabric"
    extension_preset = json.loads((folder / "presets" / f"{NAME}.json").read_text())
    assert extension_preset == {
        "liked_paths": fields["fabric_pos_images"],
        "disliked_paths": fields["fabric_neg_images"],
    }
    assert (folder / "images" / fields["fabric_pos_images"][0]).read_bytes() == liked.read_bytes()
    assert "note: schedule converted" in out and f"to use: copy the folder {folder}" in out

    code, out, err = run(["export", NAME, "--format", "comfyui", "--out", str(tmp_path / "c.json"), *runs], capsys)
    assert code == 0, err
    prompt = json.loads((tmp_path / "c.json").read_text())
    [sampler] = [n for n in prompt.values() if n["class_type"] in ("KSamplerFABRIC", "KSamplerFABRICAdv")]
    assert sampler["inputs"]["steps"] == 3 and (tmp_path / "c.workflow.json").is_file()
    assert "note:" in out and "give reference images: fabric-opt export" in out

    code, out, err = run(["export", NAME, "--format", "diffusers", "--out", str(tmp_path / "gen.py"), *runs], capsys)
    assert code == 0, err
    compile((tmp_path / "gen.py").read_text(), "gen.py", "exec")


def test_export_needs_neither_torch_nor_mlflow(ran, tmp_path):
    # the stored recommendation spares the GP fit: fast (`fabric-opt export` is a few small files)
    import subprocess
    import sys

    code = (
        "import runpy, sys\n"
        f"sys.argv = ['fabric-opt', 'export', {NAME!r}, '--format', 'a1111', '--runs-dir', {str(ran / 'runs')!r},"
        f" '--out', {str(tmp_path / 'x.txt')!r}]\n"
        "try:\n    runpy.run_module('fabric_opt_cli', run_name='__main__')\nexcept SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print(sorted(m for m in ('mlflow', 'torch', 'botorch', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]" and (tmp_path / "x.txt").is_file()


# ---- bad input ------------------------------------------------------------------------------


@pytest.fixture
def empty_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["study", "--objective", "nosuch"], "unknown objective 'nosuch'"),
        (["study", "--study", "tiny", "--sampler", "nosuch"], "unknown sampler 'nosuch'"),
        (["study", "--study", "nosuch"], "unknown study 'nosuch'"),
        (["study"], r"give an objective .*\(--study\)"),
        (["study", "--study", "tiny", "--storage", "foo://x/y"], "unsupported storage URL scheme"),
        (["study", "--study", "tiny", "--storage", "postgresql://user@host:notaport/db"], "malformed"),
        (["study", "--study", "tiny", "--storage", "mysql://user@host/db"], "driver"),
        (["study", "--study", "tiny", "--tracking-uri", "file:///tmp/mlruns"], "file stores"),
        (["study", "--study", "tiny", "--tracking-uri", "ftp://host"], "unsupported tracking URI"),
        (["study", "--study", "tiny", "--objective-weights", "pickscore"], "NAME=PATH"),
        (["study", "--study", "tiny", "--objective-weights", "pickscore=/no/such/weights.pt"], "pickscore"),
        (["study", "--study", "tiny", "--trials", "0"], "trials must be a positive integer"),
        (["study", "--study", "tiny", "--model", "/no/such/model.safetensors"], "checkpoint file not found"),
        (["study", "--study", "target", "--objective-weights", "target=tiny"], "no train prompts"),
        (["report", "nosuch"], r"no study storage .*\(--storage\)"),
        (["export", "nosuch"], "no study storage"),
        (["export", "nosuch", "--format", "png"], "unknown export format"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(argv, message, empty_dir, capsys):
    import re

    defaults = {"--runs-dir": "runs", "--tracking-uri": "sqlite:///mlflow.db"} if argv[0] == "study" else {}
    extra = [item for flag, value in defaults.items() if flag not in argv for item in (flag, value)]
    code, out, err = run([*argv, *extra], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), err
    assert _files(empty_dir) == set()


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: broken\nprotocol: {rounds: 2\n", "not valid YAML at line"),
        ("extends: tiny\nprotocol: {rounds: two}\n", "rounds must be a positive integer"),
        (
            "extends: tiny\nsearch_space: {parameters: {max_weight: {low: 0.9, high: 0.1}}}\n",
            "low .* must be below high",
        ),
        ("extends: tiny\nwhat: 1\n", "unknown key"),
        ("extends: tiny\nprompts: {train: empty.txt}\n", "has no prompts"),
        ("extends: tiny\nprompts: {train: missing.txt}\n", "prompt file not found"),
    ],
)
def test_bad_study_file_is_one_line_exit_2_and_creates_nothing(text, message, empty_dir, capsys):
    import re

    (empty_dir / "study.yaml").write_text(text)
    (empty_dir / "empty.txt").write_text("\n  \n")
    before = _files(empty_dir)
    code, out, err = run(
        ["study", "--study", "study.yaml", "--runs-dir", "runs", "--tracking-uri", "sqlite:///mlflow.db"], capsys
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), err
    assert _files(empty_dir) == before


def test_empty_prompt_file_flag(empty_dir, capsys):
    (empty_dir / "empty.txt").write_text("")
    code, _, err = run(["study", "--study", "tiny", "--prompts", "empty.txt", "--runs-dir", "runs"], capsys)
    assert code == 2 and "has no prompts" in err and _files(empty_dir) == {"empty.txt"}


def test_unknown_study_name_for_report_and_export(ran, common, capsys):
    before = _files(ran)
    runs = ["--runs-dir", str(ran / "runs")]
    for command in (["report", "nosuch", *common], ["export", "nosuch", "--format", "a1111", *runs]):
        code, _, err = run(command, capsys)
        assert code == 2 and "no study named 'nosuch'" in err and NAME in err
    code, _, err = run(["export", NAME, "--trial", "99", *runs], capsys)
    assert code == 2 and "has no trial 99" in err
    assert _files(ran) == before


def test_help_lists_the_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and all(name in out for name in ("study", "report", "export"))


def test_study_modules_import_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import sys, fabric_opt_cli.study, optimize.study, optimize.tracking, optimize.export, optimize.report, "
        "studies\n"
        "print(sorted(m for m in ('mlflow', 'optuna', 'torch', 'matplotlib', 'botorch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_commands_hide_the_torch_jit_deprecation_from_botorch_imports():
    # linear_operator (imported with BoTorch, the demo's sampler) warns at import under torch 2.14;
    # pytest's own filters hide it here, so each case runs in a fresh interpreter.
    import subprocess
    import sys

    importing = "import botorch.models"
    code = "from fabric_opt_cli.console import quiet_libraries; quiet_libraries(); " + importing
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loud = subprocess.run([sys.executable, "-c", importing], capture_output=True, text=True, check=True)
    assert "torch.jit.script" in loud.stderr  # the filter still has something to hide
    assert quiet.stderr == ""
