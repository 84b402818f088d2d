"""Bad input through the CLI: exit code 2, exactly one ``error: ...`` line on stderr, nothing
written (no journal, no ``mlflow.db``, no output folder: the folder listing is unchanged).

Each case is ``(argv, files to create first, a fragment of the message)``; ``{d}`` in argv is the
test's working folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabric_opt_cli.app import main

A1111_PRESET = {"prompt": "a cat", "steps": 20, "sampler_name": "Euler a", "cfg_scale": 7, "width": 512, "height": 512}
STUDY_BAD_YAML = "name: x\nobjective: [unclosed\n"
STUDY_UNKNOWN_KEY = "extends: tiny\nname: x\nsurch_space: {}\n"
STUDY_BAD_BOUNDS = "extends: tiny\nname: x\nsearch_space:\n  max_weight: {low: 2.0, high: 0.5}\n"
STUDY_NEGATIVE_BOUND = "extends: tiny\nname: x\nsearch_space:\n  feedback_start: {low: -1.0, high: 0.5}\n"
STUDY_NO_ROUNDS = "extends: tiny\nname: x\nprotocol: {rounds: 0}\n"
PNG_NOT = b"this is not a PNG"
CORRUPT_CKPT = b"\x00\x01garbage, not a checkpoint"
SAFETENSORS_BAD = b"\xff\xff\xff\xff\xff\xff\xff\x7f{}"

CASES = [
    # study files
    (["study", "--study", "{d}/nosuch.yaml"], {}, "nosuch"),
    (["study", "--study", "{d}/bad.yaml"], {"bad.yaml": STUDY_BAD_YAML}, ""),
    (["study", "--study", "{d}/bad.yaml"], {"bad.yaml": STUDY_UNKNOWN_KEY}, "surch_space"),
    (["study", "--study", "{d}/bad.yaml"], {"bad.yaml": STUDY_BAD_BOUNDS}, "max_weight"),
    (["study", "--study", "{d}/bad.yaml"], {"bad.yaml": STUDY_NEGATIVE_BOUND}, "feedback_start"),
    (["study", "--study", "{d}/bad.yaml"], {"bad.yaml": STUDY_NO_ROUNDS}, "rounds"),
    (["study", "--study", "tiny", "--trials", "-3"], {}, "trials"),
    (["study", "--study", "tiny", "--prompt-batch", "0"], {}, "prompt_batch"),
    (["study", "--study", "tiny", "--token-cache-gb", "-1"], {}, "--token-cache-gb"),
    (["study", "--study", "tiny", "--token-cache-gb", "nan"], {}, "--token-cache-gb"),
    # prompt files
    (["study", "--study", "tiny", "--prompts", "{d}/empty.txt"], {"empty.txt": ""}, "prompt"),
    (["study", "--study", "tiny", "--prompts", "{d}/missing.txt"], {}, "missing.txt"),
    (["study", "--study", "tiny", "--prompts", "{d}/p.json"], {"p.json": "{not json"}, "p.json"),
    # storage URLs and tracking URIs
    (["study", "--study", "tiny", "--storage", "{d}/study.db"], {}, "sqlite:///"),
    (["study", "--study", "tiny", "--storage", "{d}"], {}, "folder"),
    (["study", "--study", "tiny", "--storage", "sqlite:///:memory:"], {}, "in-memory"),
    (["study", "--study", "tiny", "--storage", "redis://localhost/0"], {}, "unsupported storage URL scheme"),
    (["study", "--study", "tiny", "--tracking-uri", "gopher://x"], {}, "tracking URI"),
    (["study", "--study", "tiny", "--storage", "sqlite:/relative.db"], {}, "write SQLite as sqlite:///relative.db "),
    (["study", "--study", "tiny", "--storage", "postgres://u@h/db"], {}, "write postgresql://u@h/db"),
    (["study", "--study", "tiny", "--tracking-uri", "sqlite:/relative.db"], {}, "sqlite:///relative.db (relative"),
    # every missing weight and the model in one error, each with the flag that fixes it
    (
        ["study", "--study", "tiny", "-w", "pickscore={d}/no.pt", "-w", "diversity={d}/no.pt", "-m", "{d}/no.ckpt"],
        {},
        "3 problems: diversity: ",
    ),
    (
        ["study", "--study", "tiny", "-w", "pickscore={d}/no.pt", "-m", "{d}/no.ckpt"],
        {},
        "(--objective-weights pickscore=PATH); checkpoint file not found",
    ),
    (["study", "--study", "tiny", "-m", "org/not-cached-model"], {}, "the hub is offline (HF_HUB_OFFLINE)"),
    (["study", "--study", "tiny", "-m", "org/not-cached-model"], {}, "(--model PATH)"),
    (["worker", "tiny", "--storage", "{d}/none.journal"], {}, "no study storage"),
    (["worker", "tiny", "--device", "cuda:1"], {}, "CUDA"),
    # unknown study names for report / export
    (["report", "nosuch", "--storage", "{d}/none.journal"], {}, "no study storage"),
    (["report", "nosuch", "--storage", "{d}/none.journal", "--compare-seeds", "0"], {}, "--compare-seeds >= 1"),
    (["export", "nosuch", "--storage", "{d}/none.journal", "--format", "a1111"], {}, "no study storage"),
    # presets from other tools, images, checkpoints
    (
        ["generate", "--prompt", "x", "--preset", "{d}/a1111.json", "--out", "{d}/out"],
        {"a1111.json": json.dumps(A1111_PRESET)},
        "preset",
    ),
    (["generate", "--prompt", "x", "--preset", "{d}/list.json", "--out", "{d}/out"], {"list.json": "[1, 2]"}, "preset"),
    (["generate", "--prompt", "x", "--liked", "{d}/like.png", "--out", "{d}/out"], {"like.png": PNG_NOT}, "like.png"),
    (["generate", "--prompt", "x", "--liked", "{d}/gone.png", "--out", "{d}/out"], {}, "gone.png"),
    (
        ["generate", "--prompt", "x", "--model", "{d}/model.ckpt", "--out", "{d}/out"],
        {"model.ckpt": CORRUPT_CKPT},
        "model.ckpt",
    ),
    (
        ["generate", "--prompt", "x", "--model", "{d}/model.safetensors", "--out", "{d}/out"],
        {"model.safetensors": SAFETENSORS_BAD},
        "model.safetensors",
    ),
    (["generate", "--prompt", "x", "--max-weight", "-1", "--out", "{d}/out"], {}, "max_weight"),
    (
        ["generate", "--prompt", "x", "--feedback-start", "0.9", "--feedback-end", "0.1", "--out", "{d}/out"],
        {},
        "feedback",
    ),
]


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@pytest.mark.parametrize("argv, files, message", CASES, ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_error_line_exit_2_and_writes_nothing(argv, files, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default runs/, mlflow.db and outputs/ would land here
    monkeypatch.delenv("FABRIC_OPT_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub model is checked against the cache only
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _listing(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{d}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert _listing(tmp_path) == before  # no journal, no mlflow.db, no output folder


def test_there_are_at_least_20_cases():
    assert len(CASES) >= 20
