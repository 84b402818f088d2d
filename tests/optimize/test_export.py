"""Exporters: exact JSON round trips, the A1111 infotext (slider steps, schedule conversion, reference
images where the extension finds them), the Python script, and the notes on what a target cannot
represent. The ComfyUI graph is checked against the nodes in test_export_comfyui.py."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from fabric.errors import ConfigError, ImageError
from fabric.params import FabricParams
from fabric.preset import load_params, read_preset
from fabric.schedule import active_steps
from optimize.export import (
    ExportContext,
    a1111_active_steps,
    a1111_schedule,
    available_formats,
    export_params,
    parse_a1111,
)

TUNED = FabricParams(
    feedback_start=0.123456789, feedback_end=0.87654321, min_weight=0.05, max_weight=0.61803398875,
    neg_scale=0.3333333333333333, pos_bottleneck_scale=0.7, neg_bottleneck_scale=1.4, max_references=3,
    prompt_dropout=0.1, steps=23, guidance_scale=7.25,
)  # fmt: skip


@pytest.fixture
def context(tmp_path) -> ExportContext:
    """A context with real reference images (liked twice the same picture: copied once)."""
    from PIL import Image

    for name, colour in (("a, b.png", "red"), ("c.png", "green"), ("d.jpg", "blue")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    return ExportContext(
        prompt="a red fox, in the snow: at dawn", negative_prompt="lowres, bad anatomy", seed=1234, model="tiny",
        liked=(tmp_path / "a, b.png", tmp_path / "c.png"), disliked=(tmp_path / "d.jpg",),
        source={"study": "s", "trial": 7},
    )  # fmt: skip


def test_formats_are_registered():
    assert available_formats() == ["a1111", "comfyui", "diffusers", "json"]
    with pytest.raises(ConfigError, match="unknown export format 'png'"):
        export_params(TUNED, "png")
    with pytest.raises(ImageError, match="reference image not found"):
        export_params(TUNED, "a1111", ExportContext(liked=("/no/such.png",)))


@pytest.mark.parametrize(
    "params", [TUNED, FabricParams(), FabricParams.a1111(), FabricParams(max_references=None, prompt_dropout=0.49999)]
)
def test_json_round_trips_exactly(params, context, tmp_path):
    exported = export_params(params, "json", context)
    [path] = exported.write(tmp_path / "preset.json")
    assert load_params(path) == params
    assert FabricParams.from_dict(json.loads(exported.content)["params"]) == params
    document = read_preset(path)
    assert (
        document["prompt"] == context.prompt and document["seed"] == 1234 and document["liked"] == list(context.liked)
    )
    assert document["source"] == {"study": "s", "trial": 7} and exported.notes == ()


def test_a1111_text_parses_back_and_references_go_where_the_extension_resolves_them(context, tmp_path):
    exported = export_params(TUNED, "a1111", context)
    lines = exported.content.strip().split("\n")
    assert lines[0] == context.prompt and lines[1] == "Negative prompt: lowres, bad anatomy"
    assert lines[2].startswith("Steps: 23, Sampler: Euler a, CFG scale: 7.0, Seed: 1234, fabric_start: ")
    fields = parse_a1111(exported.content)
    assert fields["prompt"] == context.prompt and fields["negative_prompt"] == context.negative_prompt
    schedule = a1111_schedule(TUNED)
    assert fields["Steps"] == "23" and fields["Seed"] == "1234" and fields["CFG scale"] == "7.0"
    assert float(fields["fabric_start"]) == schedule.start and float(fields["fabric_end"]) == schedule.end
    # on the sliders' steps: weights 0.05, start/end 0.01
    assert (float(fields["fabric_min_weight"]), float(fields["fabric_max_weight"])) == (0.05, 0.6)
    assert float(fields["fabric_neg_scale"]) == 0.35
    for key in ("fabric_start", "fabric_end"):
        assert round(float(fields[key]), 2) == float(fields[key])
    assert any("max_weight 0.618 -> 0.6" in n and "neg_scale 0.3333 -> 0.35" in n for n in exported.notes)
    assert any("CFG scale 7.25 rounded" in n for n in exported.notes)
    # the images are copied into the extension's log/fabric layout, under the names both files use
    files = exported.write(tmp_path / "out" / "fox.a1111.txt")
    folder = tmp_path / "out" / "fox.a1111" / "log" / "fabric"
    preset = json.loads((folder / "presets" / "s.json").read_text())
    assert (
        preset["liked_paths"] == fields["fabric_pos_images"] and preset["disliked_paths"] == fields["fabric_neg_images"]
    )
    for name, source in zip(preset["liked_paths"] + preset["disliked_paths"], (*context.liked, *context.disliked)):
        assert "/" not in name and (folder / "images" / name).read_bytes() == Path(source).read_bytes()
    assert files[0].read_text() == exported.content and len(files) == 1 + 1 + 3
    usage = " ".join(exported.usage_for(tmp_path / "out" / "fox.a1111.txt"))
    assert str(folder) in usage and "extensions/sd-webui-fabric" in usage and "Presets" in usage


def test_a1111_without_references_says_the_extension_does_nothing(tmp_path):
    exported = export_params(FabricParams(), "a1111", ExportContext(source={"study": "s"}))
    assert any("applies no feedback without liked or disliked images" in n for n in exported.notes)
    assert exported.tree == {} and [p.name for p in exported.write(tmp_path / "s.a1111.txt")] == ["s.a1111.txt"]


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 20, 23, 30, 50, 100])
@pytest.mark.parametrize(
    "start, end",
    [(0.0, 0.8), (0.0, 1.0), (0.1, 0.5), (0.25, 0.75), (0.5, 0.5), (0.33, 0.66), (0.0, 0.0), (0.96, 1.0), (0.2, 0.21)],
)
def test_a1111_rounded_schedule_keeps_the_same_steps_active(steps, start, end):
    params = FabricParams(feedback_start=start, feedback_end=end, min_weight=0.1, max_weight=0.9, steps=steps)
    schedule = a1111_schedule(params)
    assert round(schedule.start, 2) == schedule.start and round(schedule.end, 2) == schedule.end
    theirs = _a1111_active(steps, schedule.start, schedule.end)
    assert a1111_active_steps(steps, schedule.start, schedule.end) == theirs
    weights = [schedule.max_weight if i in theirs else schedule.min_weight for i in range(steps)]
    expected = [0.9 if i in active_steps(steps, start, end) else 0.1 for i in range(steps)]
    assert weights == expected
    assert not any("cannot select" in n for n in schedule.notes)


def test_a1111_says_when_its_sliders_cannot_select_the_steps():
    # 150 steps: the 0.01 grid is coarser than a step
    params = FabricParams(feedback_start=0.2, feedback_end=0.203, steps=150)
    assert any("cannot select" in n for n in a1111_schedule(params).notes)


def _a1111_active(n: int, start: float, end: float) -> list[int]:
    """Steps the extension gives max_weight: progress 1 - t/(T-1) of A1111's uniform timesteps."""
    import numpy as np

    timesteps = np.linspace(999, 0, n)  # k-diffusion's discrete schedule, as the UNet sees it
    progress = 1 - timesteps / 999
    return [i for i in range(n) if start <= progress[i] <= end]


def test_notes_say_what_each_target_cannot_represent(context):
    comfy = export_params(TUNED, "comfyui", context)
    a1111 = export_params(TUNED, "a1111", context)
    for words in ("depth profile", "prompt_dropout=0.1", "max_references=3"):
        assert any(words in n for n in comfy.notes) and any(words in n for n in a1111.notes)
    assert any("min_weight=0.05 is not representable" in n for n in comfy.notes)
    assert not any("is not representable" in n and "min_weight=" in n for n in a1111.notes)  # the extension has one
    workflow = json.loads(comfy.extra[".workflow.json"])  # notes are part of the output
    assert workflow["extra"]["fabric_opt"]["notes"] == list(comfy.notes)
    assert parse_a1111(a1111.content)["fabric_opt_notes"] == " | ".join(a1111.notes)
    plain = export_params(FabricParams(), "comfyui")
    assert not any(w in n for n in plain.notes for w in ("depth", "dropout", "max_references", "min_weight"))
    assert export_params(TUNED, "diffusers", context).notes == ()


def test_diffusers_script_builds_the_same_parameters(context):
    script = export_params(TUNED, "diffusers", context).content
    tree = ast.parse(script)
    call = next(
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "params"
    )  # fmt: skip
    rebuilt = eval(compile(ast.Expression(call), "script", "eval"), {"FabricParams": FabricParams})
    assert rebuilt == TUNED
    assert "FabricGenerator.from_pretrained('tiny'" in script and "seed=1234" in script
    assert repr(context.prompt) in script and f"liked = {list(context.liked)!r}" in script
