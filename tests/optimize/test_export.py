"""Exporters: exact JSON round trips, A1111 infotext and schedule conversion, ComfyUI step
indices, the Python script, and the notes on what a target cannot represent."""

from __future__ import annotations

import ast
import json

import pytest

from fabric.errors import ConfigError
from fabric.params import FabricParams
from fabric.preset import load_params, read_preset
from fabric.schedule import active_steps
from optimize.export import (
    ExportContext,
    a1111_schedule,
    available_formats,
    comfyui_steps,
    export_params,
    parse_a1111,
)

TUNED = FabricParams(
    feedback_start=0.123456789, feedback_end=0.87654321, min_weight=0.05, max_weight=0.61803398875,
    neg_scale=0.3333333333333333, pos_bottleneck_scale=0.7, neg_bottleneck_scale=1.4, max_references=3,
    prompt_dropout=0.1, steps=23, guidance_scale=7.25,
)  # fmt: skip
CONTEXT = ExportContext(
    prompt="a red fox, in the snow: at dawn", negative_prompt="lowres, bad anatomy", seed=1234, model="tiny",
    liked=("/img/a, b.png", "/img/c.png"), disliked=("/img/d.png",), source={"study": "s", "trial": 7},
)  # fmt: skip


def test_formats_are_registered():
    assert available_formats() == ["a1111", "comfyui", "diffusers", "json"]
    with pytest.raises(ConfigError, match="unknown export format 'png'"):
        export_params(TUNED, "png")


@pytest.mark.parametrize(
    "params", [TUNED, FabricParams(), FabricParams.a1111(), FabricParams(max_references=None, prompt_dropout=0.49999)]
)
def test_json_round_trips_exactly(params, tmp_path):
    exported = export_params(params, "json", CONTEXT)
    [path] = exported.write(tmp_path / "preset.json")
    assert load_params(path) == params
    assert FabricParams.from_dict(json.loads(exported.content)["params"]) == params
    document = read_preset(path)
    assert (
        document["prompt"] == CONTEXT.prompt and document["seed"] == 1234 and document["liked"] == list(CONTEXT.liked)
    )
    assert document["source"] == {"study": "s", "trial": 7} and exported.notes == ()


def test_a1111_text_parses_back(tmp_path):
    exported = export_params(TUNED, "a1111", CONTEXT)
    lines = exported.content.strip().split("\n")
    assert lines[0] == CONTEXT.prompt and lines[1] == "Negative prompt: lowres, bad anatomy"
    assert lines[2].startswith("Steps: 23, Sampler: Euler a, CFG scale: 7.25, Seed: 1234, fabric_start: ")
    fields = parse_a1111(exported.content)
    assert fields["prompt"] == CONTEXT.prompt and fields["negative_prompt"] == CONTEXT.negative_prompt
    start, end, min_w, max_w, _ = a1111_schedule(TUNED)
    assert fields["Steps"] == "23" and fields["Seed"] == "1234" and fields["CFG scale"] == "7.25"
    assert float(fields["fabric_start"]) == start and float(fields["fabric_end"]) == end
    assert (
        float(fields["fabric_min_weight"]) == TUNED.min_weight
        and float(fields["fabric_max_weight"]) == TUNED.max_weight
    )
    assert float(fields["fabric_neg_scale"]) == TUNED.neg_scale
    assert fields["fabric_pos_images"] == list(CONTEXT.liked) and fields["fabric_neg_images"] == list(CONTEXT.disliked)
    # the extension's own preset file
    main, preset = exported.write(tmp_path / "fox.a1111.txt")
    assert preset.name == "fox.a1111.preset.json"
    assert json.loads(preset.read_text()) == {
        "liked_paths": list(CONTEXT.liked),
        "disliked_paths": list(CONTEXT.disliked),
    }
    assert main.read_text() == exported.content


def _a1111_active(n: int, start: float, end: float) -> list[int]:
    """Steps the extension gives max_weight: progress 1 - t/(T-1) of A1111's uniform timesteps."""
    import numpy as np

    timesteps = np.linspace(999, 0, n)  # k-diffusion's discrete schedule, as the UNet sees it
    progress = 1 - timesteps / 999
    return [i for i in range(n) if start <= progress[i] <= end]


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 20, 30, 50])
@pytest.mark.parametrize(
    "start, end", [(0.0, 0.8), (0.0, 1.0), (0.1, 0.5), (0.25, 0.75), (0.5, 0.5), (0.33, 0.66), (0.0, 0.0), (0.96, 1.0)]
)
def test_a1111_schedule_keeps_the_same_steps_active(steps, start, end):
    params = FabricParams(feedback_start=start, feedback_end=end, min_weight=0.1, max_weight=0.9, steps=steps)
    a_start, a_end, min_w, max_w, _ = a1111_schedule(params)
    ours = list(active_steps(steps, start, end))
    weights = [max_w if i in _a1111_active(steps, a_start, a_end) else min_w for i in range(steps)]
    expected = [0.9 if i in ours else 0.1 for i in range(steps)]
    assert weights == expected


def _comfy_active(n: int, start: int, end: int) -> list[int]:
    """ComfyUI_fabric: feedback when t[end] < t_i <= t[start], i.e. start <= i < end."""
    return [i for i in range(n) if start <= i < end]


@pytest.mark.parametrize("steps", [1, 3, 10, 20, 25, 50])
@pytest.mark.parametrize("start, end", [(0.0, 0.8), (0.0, 1.0), (0.1, 0.5), (0.125, 0.875), (0.5, 0.5), (0.975, 1.0)])
def test_comfyui_step_indices_match_the_schedule(steps, start, end):
    params = FabricParams(feedback_start=start, feedback_end=end, steps=steps)
    first, stop = comfyui_steps(params)
    assert _comfy_active(steps, first, stop) == list(active_steps(steps, start, end))
    document = json.loads(export_params(params, "comfyui").content)
    adv = document["nodes"]["KSamplerFABRICAdv"]["inputs"]
    assert (adv["feedback_start"], adv["feedback_end"], adv["steps"]) == (first, stop, steps)
    simple = document["nodes"]["KSamplerFABRIC"]["inputs"]
    # the simple node's feedback_end = int(steps * feedback_percent)
    assert int(steps * simple["feedback_percent"]) == stop


def test_comfyui_design_example_and_absolute_weights():
    # DESIGN section 7 / the paper's defaults: 20 steps, feedback on steps round(0)..round(16) -> [0, 17)
    document = json.loads(export_params(FabricParams(max_weight=0.8, neg_scale=0.5), "comfyui").content)
    nodes = document["nodes"]
    assert nodes["KSamplerFABRICAdv"]["inputs"] == {
        "seed": 0, "steps": 20, "cfg": 6.0, "sampler_name": "euler_ancestral", "scheduler": "normal", "denoise": 1.0,
        "pos_weight": 0.8, "neg_weight": 0.4, "feedback_start": 0, "feedback_end": 17,
    }  # fmt: skip
    assert nodes["KSamplerFABRICAdv"]["widgets_values"] == [
        0,
        "fixed",
        20,
        6.0,
        "euler_ancestral",
        "normal",
        1.0,
        0.8,
        0.4,
        0,
        17,
    ]
    assert nodes["FABRICPatchModel"]["inputs"] == {"pos_weight": 0.8, "neg_weight": 0.4}


def test_notes_say_what_each_target_cannot_represent():
    comfy = export_params(TUNED, "comfyui", CONTEXT)
    a1111 = export_params(TUNED, "a1111", CONTEXT)
    for words in ("depth profile", "prompt_dropout=0.1", "max_references=3"):
        assert any(words in n for n in comfy.notes) and any(words in n for n in a1111.notes)
    assert any("min_weight=0.05" in n for n in comfy.notes)
    assert not any("min_weight=" in n for n in a1111.notes)  # the extension has a minimum weight
    assert json.loads(comfy.content)["notes"] == list(comfy.notes)  # notes are part of the output
    assert parse_a1111(a1111.content)["fabric_opt_notes"] == " | ".join(a1111.notes)
    plain = export_params(FabricParams(), "comfyui")
    assert not any(w in n for n in plain.notes for w in ("depth", "dropout", "max_references", "min_weight"))
    assert export_params(TUNED, "diffusers", CONTEXT).notes == ()


def test_diffusers_script_builds_the_same_parameters():
    script = export_params(TUNED, "diffusers", CONTEXT).content
    tree = ast.parse(script)
    call = next(
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "params"
    )  # fmt: skip
    rebuilt = eval(compile(ast.Expression(call), "script", "eval"), {"FabricParams": FabricParams})
    assert rebuilt == TUNED
    assert "FabricGenerator.from_pretrained('tiny'" in script and "seed=1234" in script
    assert repr(CONTEXT.prompt) in script and "liked = ['/img/a, b.png', '/img/c.png']" in script
