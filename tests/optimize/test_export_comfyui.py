"""The ComfyUI exports load in ComfyUI: every node's inputs checked against the nodes' own
``INPUT_TYPES`` (names, types, ranges), links against the nodes' ``RETURN_TYPES``, the UI workflow
against the API prompt, and the sampler node's steps against ComfyUI_fabric's own selection.

The tables below are written from the sources, not imported (ComfyUI is not a dependency):

* ComfyUI_fabric ``nodes.py`` (github.com/ssitu/ComfyUI_fabric, commit 952032c):
  ``KSamplerFABRICAdv`` ("KSampler FABRIC") and ``KSamplerFABRIC`` ("KSampler FABRIC (Simple)")
  extend ``KSampler.INPUT_TYPES()``; ``fabric/fabric.py``'s ``fabric_sample`` turns
  ``feedback_start``/``feedback_end`` into timesteps ``ts[start]``, ``ts[min(end, len(ts) - 1)]``
  and applies feedback when ``ts_end < t <= ts_start``; the simple node uses ``feedback_start = 0,
  feedback_end = int(steps * feedback_percent)``.
* ComfyUI ``nodes.py`` (github.com/comfyanonymous/ComfyUI): KSampler, CheckpointLoaderSimple,
  CLIPTextEncode, EmptyLatentImage, LoadImage, VAEEncode, VAEDecode, SaveImage;
  ``comfy_extras/nodes_latent.py``: LatentBatch; ``comfy/samplers.py``: sampler and scheduler
  names. Ranges are the stricter of old and current releases (MAX_RESOLUTION 8192, batch 64).
  ``execution.py`` validates a value's type and its ``min``/``max`` (not ``step``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabric.params import FabricParams
from fabric.schedule import step_weight
from optimize.export import ExportContext, comfyui_plan, export_params

MAX_SEED = 0xFFFFFFFFFFFFFFFF
SAMPLERS = (
    "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform")
FILES = "a file name"  # a combo of files in a ComfyUI folder: any name; the user puts the file there

# name -> (type, options); "required" inputs first, then "optional" ones (marked optional)
KSAMPLER = {
    "model": ("MODEL", {}),
    "seed": ("INT", {"min": 0, "max": MAX_SEED}),
    "steps": ("INT", {"min": 1, "max": 10000}),
    "cfg": ("FLOAT", {"min": 0.0, "max": 100.0}),
    "sampler_name": (SAMPLERS, {}),
    "scheduler": (SCHEDULERS, {}),
    "positive": ("CONDITIONING", {}),
    "negative": ("CONDITIONING", {}),
    "latent_image": ("LATENT", {}),
    "denoise": ("FLOAT", {"min": 0.0, "max": 1.0}),
}
WEIGHT = ("FLOAT", {"min": 0.0, "max": 1.0})
OPTIONAL_LATENTS = {"pos_latents": ("LATENT", {"optional": True}), "neg_latents": ("LATENT", {"optional": True})}
NODES = {
    "KSamplerFABRICAdv": (
        {
            **KSAMPLER,
            "null_pos": ("CONDITIONING", {}),
            "null_neg": ("CONDITIONING", {}),
            "pos_weight": WEIGHT,
            "neg_weight": WEIGHT,
            "feedback_start": ("INT", {"min": 0, "max": 10000}),
            "feedback_end": ("INT", {"min": 0, "max": 10000}),
            **OPTIONAL_LATENTS,
        },
        ("LATENT",),
    ),
    "KSamplerFABRIC": (
        {
            **KSAMPLER,
            "clip": ("CLIP", {}),
            "pos_weight": WEIGHT,
            "neg_weight": WEIGHT,
            "feedback_percent": ("FLOAT", {"min": 0.0, "max": 1.0}),
            **OPTIONAL_LATENTS,
        },
        ("LATENT",),
    ),
    "CheckpointLoaderSimple": ({"ckpt_name": (FILES, {})}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ({"text": ("STRING", {}), "clip": ("CLIP", {})}, ("CONDITIONING",)),
    "EmptyLatentImage": (
        {
            "width": ("INT", {"min": 16, "max": 8192}),
            "height": ("INT", {"min": 16, "max": 8192}),
            "batch_size": ("INT", {"min": 1, "max": 64}),
        },
        ("LATENT",),
    ),
    "LoadImage": ({"image": (FILES, {})}, ("IMAGE", "MASK")),
    "VAEEncode": ({"pixels": ("IMAGE", {}), "vae": ("VAE", {})}, ("LATENT",)),
    "LatentBatch": ({"samples1": ("LATENT", {}), "samples2": ("LATENT", {})}, ("LATENT",)),
    "VAEDecode": ({"samples": ("LATENT", {}), "vae": ("VAE", {})}, ("IMAGE",)),
    "SaveImage": ({"images": ("IMAGE", {}), "filename_prefix": ("STRING", {})}, ()),
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING")
DISPLAY = {"KSamplerFABRICAdv": "KSampler FABRIC", "KSamplerFABRIC": "KSampler FABRIC (Simple)"}


def is_widget(kind) -> bool:
    return kind in WIDGET_TYPES or kind == FILES or isinstance(kind, tuple)


def check_value(where: str, kind, options: dict, value) -> None:
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an INT"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a FLOAT"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a STRING"
    elif kind == FILES:
        assert isinstance(value, str) and value and "/" not in value, f"{where}: {value!r} is not a file name"
    else:  # a combo of fixed choices
        assert value in kind, f"{where}: {value!r} not in {kind}"
    if "min" in options:
        assert value >= options["min"], f"{where}: {value} below min {options['min']}"
    if "max" in options:
        assert value <= options["max"], f"{where}: {value} above max {options['max']}"


def validate_api(prompt: dict) -> None:
    """What ComfyUI's validate_prompt checks, against the tables above."""
    assert prompt and all(isinstance(k, str) for k in prompt)
    for node_id, node in prompt.items():
        assert set(node) <= {"class_type", "inputs", "_meta"}, node_id
        inputs, outputs = NODES[node["class_type"]]
        given = node["inputs"]
        assert set(given) <= set(inputs), f"node {node_id}: unknown inputs {set(given) - set(inputs)}"
        for name, (kind, options) in inputs.items():
            where = f"node {node_id} ({node['class_type']}).{name}"
            if name not in given:
                assert options.get("optional"), f"{where}: required input missing"
                continue
            value = given[name]
            if is_widget(kind):
                check_value(where, kind, options, value)
                continue
            assert isinstance(value, list) and len(value) == 2, f"{where}: a link is [id, output], got {value!r}"
            source, slot = value
            assert isinstance(source, str) and source in prompt, f"{where}: links to missing node {source!r}"
            source_outputs = NODES[prompt[source]["class_type"]][1]
            assert isinstance(slot, int) and 0 <= slot < len(source_outputs), f"{where}: no output {slot}"
            assert source_outputs[slot] == kind, f"{where}: {source_outputs[slot]} into {kind}"


def api_from_workflow(workflow: dict) -> dict:
    """The API prompt a UI workflow stands for (as ComfyUI's frontend builds it)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] == "Note":
            continue
        declared = NODES[node["type"]][0]
        widgets = iter(node["widgets_values"])
        inputs = {}
        link_inputs = [name for name, (kind, _) in declared.items() if not is_widget(kind)]
        assert [i["name"] for i in node["inputs"]] == link_inputs, f"node {node['id']}: input slots"
        for name, (kind, _) in declared.items():
            if is_widget(kind):
                inputs[name] = next(widgets)
                if name == "seed":
                    assert next(widgets) in ("fixed", "increment", "decrement", "randomize")
                if node["type"] == "LoadImage":
                    assert next(widgets) == "image"  # the upload widget
        assert next(widgets, None) is None, f"node {node['id']}: extra widgets_values"
        for slot, entry in enumerate(node["inputs"]):
            assert entry["type"] == declared[entry["name"]][0]
            if entry["link"] is None:
                continue
            link_id, source, source_slot, target, target_slot, kind = links[entry["link"]]
            assert (target, target_slot, kind) == (node["id"], slot, entry["type"])
            output = nodes[source]["outputs"][source_slot]
            assert output["type"] == kind and link_id in output["links"]
            inputs[entry["name"]] = [str(source), source_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    for link_id, _, _, target, target_slot, _ in workflow["links"]:
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
    assert workflow["last_link_id"] == len(workflow["links"]) and workflow["last_node_id"] == max(nodes)
    return prompt


def comfy_active(steps: int, node: dict) -> list[int]:
    """Steps ComfyUI_fabric gives feedback: fabric_sample's timestep interval (any decreasing ts)."""
    inputs = node["inputs"]
    if node["class_type"] == "KSamplerFABRIC":
        start, end = 0, int(steps * inputs["feedback_percent"])
    else:
        start, end = inputs["feedback_start"], inputs["feedback_end"]
    ts = [1000 - 1000 * i / steps for i in range(steps + 1)]  # sigmas incl. the final 0 -> steps + 1 timesteps
    ts_start, ts_end = ts[start], ts[min(end, len(ts) - 1)]
    return [i for i in range(steps) if ts_end < ts[i] <= ts_start]


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, Path]:
    from PIL import Image

    paths = []
    for name, colour in (("red.png", "red"), ("blue.png", "blue"), ("green.jpg", "green")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
        paths.append(tmp_path / name)
    return tuple(paths)


PARAMS = [
    FabricParams(),  # the paper's: steps 0..16 of 20 -> the simple node, percent for 17 steps
    FabricParams(feedback_start=0.3, feedback_end=0.7, max_weight=0.8),  # a middle range -> the Adv node
    FabricParams(min_weight=1.0, max_weight=1.0, steps=10),  # the toy demo's: one weight everywhere
    FabricParams(feedback_start=0.0, feedback_end=1.0, max_weight=0.6, steps=7),
    FabricParams(feedback_start=0.95, feedback_end=1.0, min_weight=0.0, steps=10),
    FabricParams(feedback_start=1.0, feedback_end=1.0, min_weight=0.2, max_weight=0.9, steps=4),  # no active step
    FabricParams(feedback_start=0.2, feedback_end=0.6, min_weight=0.1, max_weight=0.9),  # min > 0: nearest
    FabricParams(feedback_start=0.2, feedback_end=0.6, min_weight=0.7, max_weight=0.9),  # nearer: all steps
    FabricParams(max_weight=0.0),
]


@pytest.mark.parametrize("params", PARAMS, ids=range(len(PARAMS)))
@pytest.mark.parametrize("n_refs", [(0, 0), (1, 1), (3, 1)])
def test_api_prompt_and_workflow_validate_against_the_nodes(params, n_refs, images):
    red, blue, green = images
    liked = (red, blue, green)[: n_refs[0]]
    disliked = (blue,)[: n_refs[1]]
    context = ExportContext(
        prompt="a fox", negative_prompt="lowres", seed=7, model="org/my-model", n_images=2, height=64, width=96,
        liked=liked, disliked=disliked, source={"study": "s"},
    )  # fmt: skip
    exported = export_params(params, "comfyui", context)
    prompt = json.loads(exported.content)
    validate_api(prompt)
    workflow = json.loads(exported.extra[".workflow.json"])
    assert json.loads(json.dumps(api_from_workflow(workflow))) == {
        k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()
    }
    assert workflow["nodes"][-1]["type"] == "Note" and "fabric-opt" in workflow["nodes"][-1]["widgets_values"][0]

    by_class = {}
    for node in prompt.values():
        by_class.setdefault(node["class_type"], []).append(node)
    [sampler] = by_class.get("KSamplerFABRICAdv", []) + by_class.get("KSamplerFABRIC", [])
    assert sampler["_meta"]["title"] == DISPLAY[sampler["class_type"]]
    assert len(by_class["LoadImage"] if sum(n_refs) else []) == sum(n_refs)
    assert {n["inputs"]["image"] for n in by_class.get("LoadImage", [])} == {Path(k).name for k in exported.tree}
    assert ("pos_latents" in sampler["inputs"]) == bool(n_refs[0])
    assert ("neg_latents" in sampler["inputs"]) == bool(n_refs[1])
    # the empty prompt feeds null_pos/null_neg of the Adv node
    if sampler["class_type"] == "KSamplerFABRICAdv":
        null = prompt[sampler["inputs"]["null_pos"][0]]
        assert null["class_type"] == "CLIPTextEncode" and null["inputs"]["text"] == ""
        assert sampler["inputs"]["null_neg"] == sampler["inputs"]["null_pos"]

    # the node's steps and weights give fabric-opt's per-step weights where the plan says exact
    plan = comfyui_plan(params)
    active = comfy_active(params.steps, sampler)
    theirs = [sampler["inputs"]["pos_weight"] if i in active else 0.0 for i in range(params.steps)]
    ours = [step_weight(i, params.steps, params) for i in range(params.steps)]
    assert (theirs == ours) == plan.exact
    if plan.exact:
        assert sampler["inputs"]["neg_weight"] == pytest.approx(sampler["inputs"]["pos_weight"] * params.neg_scale)
    else:
        assert any("min_weight" in n and "nearest" in n for n in exported.notes)


def test_the_simple_node_with_percent_one_for_one_weight_everywhere():
    # the example: min = max = 1 -> weight 1 on every step, exact with the simple node
    prompt = json.loads(export_params(FabricParams(min_weight=1.0, max_weight=1.0, steps=10), "comfyui").content)
    [sampler] = [n for n in prompt.values() if n["class_type"].startswith("KSampler")]
    assert sampler["class_type"] == "KSamplerFABRIC" and sampler["inputs"]["feedback_percent"] == 1.0
    assert (sampler["inputs"]["pos_weight"], sampler["inputs"]["neg_weight"]) == (1.0, 0.5)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 20, 25, 50, 99])
@pytest.mark.parametrize(
    "start, end", [(0.0, 0.8), (0.0, 1.0), (0.1, 0.5), (0.125, 0.875), (0.5, 0.5), (0.975, 1.0), (0.0, 0.04)]
)
def test_the_node_steps_match_the_schedule(steps, start, end):
    params = FabricParams(feedback_start=start, feedback_end=end, steps=steps)
    prompt = json.loads(export_params(params, "comfyui").content)
    [sampler] = [n for n in prompt.values() if n["class_type"].startswith("KSampler")]
    active = comfy_active(steps, sampler)
    theirs = [sampler["inputs"]["pos_weight"] if i in active else 0.0 for i in range(steps)]
    assert theirs == [step_weight(i, steps, params) for i in range(steps)]
    if sampler["class_type"] == "KSamplerFABRIC":
        assert round(sampler["inputs"]["feedback_percent"], 2) == sampler["inputs"]["feedback_percent"]


def test_references_are_copied_for_comfyui_input(images, tmp_path):
    red, blue, _ = images
    exported = export_params(FabricParams(), "comfyui", ExportContext(liked=(red,), disliked=(blue, red)))
    files = exported.write(tmp_path / "out" / "s.comfyui.json")
    names = {p.name for p in files}
    assert {"s.comfyui.json", "s.comfyui.workflow.json"} <= names
    copied = sorted(p for p in files if p.parent.name == "input")
    assert len(copied) == 2 and all(p.parent.parent.name == "s.comfyui" for p in copied)  # red once
    assert any("ComfyUI/input/" in line for line in exported.usage_for(tmp_path / "out" / "s.comfyui.json"))
