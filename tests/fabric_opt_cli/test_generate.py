"""`fabric-opt generate`: outputs, reproduction from the sidecar, and bad input (exit 2, one line, nothing written)."""

import json

import numpy as np
import pytest
from PIL import Image

from fabric_opt_cli.app import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_generate_writes_images_grid_and_sidecar_that_reproduces_the_run(tmp_path, capsys, solid_images):
    liked = tmp_path / "liked.png"
    solid_images["red"].save(liked)
    out = tmp_path / "run1"
    code, _, err = run(
        [
            "generate",
            "--prompt",
            "a red circle",
            "--liked",
            str(liked),
            "--steps",
            "3",
            "--n-images",
            "2",
            "--seed",
            "4",
            "--max-weight",
            "0.7",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["fabric.json", "grid.png", "image_00.png", "image_01.png"]
    sidecar = json.loads((out / "fabric.json").read_text())
    assert sidecar["params"]["max_weight"] == 0.7 and sidecar["params"]["steps"] == 3 and sidecar["seed"] == 4
    assert Image.open(out / "grid.png").size == (128, 64)

    out2 = tmp_path / "run2"
    code, _, err = run(["generate", "--preset", str(out / "fabric.json"), "--out", str(out2)], capsys)
    assert code == 0, err
    for name in ("image_00.png", "image_01.png"):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(out2 / name)))


def _bad_images(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    bad_preset = tmp_path / "preset.json"
    bad_preset.write_text(json.dumps({"format": "fabric-opt.preset", "version": 1, "params": {"max_weight": -1}}))
    return {"corrupt": corrupt, "empty": empty, "preset": bad_preset}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--liked", "{tmp}/missing.png"], "image not found"),
        (["--liked", "{corrupt}"], "cannot read image"),
        (["--liked", "{empty}"], "cannot read image"),
        (["--feedback-start", "0.9", "--feedback-end", "0.2"], "must not exceed"),
        (["--max-weight", "-0.5"], "max_weight must be >= 0"),
        (["--prompt-dropout", "1"], "prompt_dropout"),
        (["--model", "./no/such/model"], "unknown model"),
        (["--model", "{tmp}/missing.safetensors"], "checkpoint file not found"),
        (["--preset", "{preset}"], "max_weight"),
        (["--preset", "{tmp}/none.json"], "preset not found"),
        (["--steps", "many"], "Invalid value"),
        (["--dtype", "float8"], "unknown dtype"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, fragment):
    files = _bad_images(tmp_path)
    args = [a.format(tmp=tmp_path, **files) for a in args]
    out = tmp_path / "out"
    code, stdout, err = run(["generate", "--prompt", "x", "--steps", "2", "--out", str(out), *args], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert not out.exists()


def test_log_level_comes_from_the_environment(monkeypatch, capsys):
    import logging

    monkeypatch.setenv("FABRIC_OPT_LOG_LEVEL", "loud")
    code, out, err = run(["--help"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "FABRIC_OPT_LOG_LEVEL" in err
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # basicConfig only acts on a root without handlers
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setenv("FABRIC_OPT_LOG_LEVEL", "info")
    code, _, _ = run(["--help"], capsys)
    assert code == 0 and root.level == logging.INFO


def test_everyday_image_files_are_accepted_as_references(tmp_path, capsys):
    """CMYK JPEGs (print and stock workflows) and 16-bit PNGs (scanners, HDR tools) are read as
    diffusers' load_image, A1111 and ComfyUI read them."""
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 0, 0)).save(cmyk)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(deep)
    out = tmp_path / "out"
    argv = ["generate", "--prompt", "a circle", "--liked", str(cmyk), "--disliked", str(deep), "--steps", "2"]
    code, _, err = run([*argv, "--n-images", "1", "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "image_00.png").is_file()
