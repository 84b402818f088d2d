"""Where weights come from, and how missing or broken weights fail (one line, with the fix)."""

from __future__ import annotations

import pytest
import torch

import objectives
from fabric.errors import ModelLoadError, WeightsNotFoundError
from objectives.weights import WeightSource, env_var, load_state_dict, resolve_weights

# every built-in objective's default weights need a download (or, for hps, a local file)
DEFAULTS = ["pickscore", "hps", "hpsv2", "hpsv21", "aesthetic", "clipscore", "target", "diversity"]


def test_environment_variable_names():
    assert env_var("pickscore") == "FABRIC_OPT_PICKSCORE_WEIGHTS"
    assert env_var("hpsv21") == "FABRIC_OPT_HPSV21_WEIGHTS"
    assert env_var("clip") == "FABRIC_OPT_CLIP_WEIGHTS"
    assert env_var("toy-clip") == "FABRIC_OPT_TOY_CLIP_WEIGHTS"


@pytest.mark.parametrize("name", DEFAULTS)
def test_missing_weights_fail_before_loading_with_one_line_naming_the_fix(offline, name):
    with pytest.raises(WeightsNotFoundError) as checked:
        objectives.check_available(name)
    message = str(checked.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: ")
    assert checked.value.option == "objective_weights" and checked.value.example in (f"{name}=PATH", "clip=PATH")
    assert "--" not in message  # the library speaks library; the CLI adds --objective-weights
    assert env_var(name) in message or "FABRIC_OPT_CLIP_WEIGHTS" in message
    # loading fails the same way, without building anything first
    with pytest.raises(WeightsNotFoundError) as loaded:
        objectives.load_objective(name)
    assert str(loaded.value) == message


def test_missing_hub_weights_say_what_was_looked_for(offline):
    with pytest.raises(WeightsNotFoundError, match=r"yuvalkirstain/PickScore_v1.*offline"):
        objectives.check_available("pickscore")
    with pytest.raises(WeightsNotFoundError, match=r"xswu/HPSv2/HPS_v2\.1_compressed\.pt"):
        objectives.check_available("hpsv21")
    with pytest.raises(WeightsNotFoundError, match=r"no public hub copy.*tgxs002/align_sd"):
        objectives.check_available("hps")


def test_environment_variable_is_read_and_named_when_wrong(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("FABRIC_OPT_HPSV2_WEIGHTS", str(tmp_path / "nowhere.pt"))
    with pytest.raises(WeightsNotFoundError, match="from FABRIC_OPT_HPSV2_WEIGHTS"):
        objectives.check_available("hpsv2")
    monkeypatch.setenv("FABRIC_OPT_HPSV2_WEIGHTS", "tiny")
    objectives.check_available("hpsv2")
    assert objectives.load_objective("hpsv2").backbone.preprocess.size == 32


def test_explicit_weights_win_over_the_environment(offline, monkeypatch):
    monkeypatch.setenv("FABRIC_OPT_CLIPSCORE_WEIGHTS", "/does/not/exist")
    objectives.check_available("clipscore", weights="tiny")


def test_folder_must_hold_the_expected_file(offline, tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"contains none of HPS_v2_compressed\.pt"):
        objectives.check_available("hpsv2", weights=str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="has no config.json"):
        objectives.check_available("pickscore", weights=str(tmp_path))


def test_transformers_folder_from_env_loads(offline, monkeypatch, tmp_path, tiny, colour_images):
    reference = tiny("clipscore")
    reference.backbone.model.save_pretrained(tmp_path / "clip")
    monkeypatch.setenv("FABRIC_OPT_CLIPSCORE_WEIGHTS", str(tmp_path / "clip"))
    objectives.check_available("clipscore")
    loaded = objectives.load_objective("clipscore")
    assert loaded.backbone is not reference.backbone
    assert torch.allclose(loaded.score(colour_images, "a cat"), reference.score(colour_images, "a cat"), atol=1e-5)


def test_checkpoint_file_in_a_folder_is_found(offline, tmp_path, tiny, colour_images):
    from objectives.aesthetic import load_head

    head = tiny("aesthetic").head
    torch.save(head.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    loaded = load_head(str(tmp_path), dim=32)
    x = torch.nn.functional.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.equal(loaded(x), head(x))


def test_corrupt_checkpoints_fail_in_one_line(offline, tmp_path):
    garbage = tmp_path / "HPS_v2_compressed.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ModelLoadError) as info:
        objectives.load_objective("hpsv2", weights=str(garbage))
    assert "\n" not in str(info.value) and "not a readable checkpoint" in str(info.value)
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        load_state_dict(truncated, objective="pickscore")


def test_pickles_are_loaded_weights_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_state_dict(path, objective="hps", key="state_dict")


def test_checkpoints_that_do_not_fit_fail_fast_in_one_line(offline, tmp_path):
    wrong = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(2, 3, 4, 4)}}, wrong)
    with pytest.raises(ModelLoadError, match=r"does not fit the model: \d+ of \d+ tensors missing"):
        objectives.load_objective("hpsv2", weights=str(wrong))
    head = tmp_path / "head.pth"
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, head)
    from objectives.aesthetic import load_head

    with pytest.raises(ModelLoadError, match="head='linear'"):
        load_head(str(head), "mlp")


def test_state_dict_files_load_in_both_layouts(tmp_path, tiny, colour_images):
    """A bare state dict (transformers layout, or OpenAI's as in HPS v1's hpc.pth) becomes the same model."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from objectives.backbone import seeded
    from objectives.clip import load_hf_clip
    from objectives.preprocess import openai_clip
    from objectives.weights import ResolvedWeights

    source = WeightSource("hps", "hps", "HPS v1")
    with seeded(1):  # an OpenAI-layout CLIP (open_clip with QuickGELU) at the tiny HF shape
        openai = CLIP(
            embed_dim=32,
            vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=32),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2, mlp_ratio=2.0),
            quick_gelu=True,
        ).eval()
    torch.save({"state_dict": openai.state_dict()}, tmp_path / "hpc.pth")
    cpu, f32 = torch.device("cpu"), torch.float32
    converted = load_hf_clip(
        ResolvedWeights("file", str(tmp_path / "hpc.pth"), source),
        "tiny",
        device=cpu,
        dtype=f32,
        checkpoint_key="state_dict",
    )

    import open_clip

    prompts = ["a red circle", "a photo of a dog on the beach"]
    with torch.no_grad():
        image_ref = torch.nn.functional.normalize(openai.encode_image(openai_clip(32)(colour_images)), dim=-1)
        text_ref = torch.nn.functional.normalize(openai.encode_text(open_clip.tokenize(prompts)), dim=-1)
    assert torch.allclose(converted.embed_images(colour_images), image_ref, atol=1e-5)
    assert torch.allclose(converted.embed_texts(prompts), text_ref, atol=1e-5)

    from safetensors.torch import save_file

    save_file(converted.model.state_dict(), tmp_path / "model.safetensors")
    again = load_hf_clip(
        ResolvedWeights("file", str(tmp_path / "model.safetensors"), source), "tiny", device=cpu, dtype=f32
    )
    assert again is not converted
    assert torch.allclose(again.embed_images(colour_images), image_ref, atol=1e-5)


def test_open_clip_checkpoint_file_loads(tmp_path, tiny, colour_images):
    from objectives.clip import load_open_clip
    from objectives.weights import ResolvedWeights

    reference = tiny("hpsv2").backbone
    torch.save(
        {"state_dict": {k: v.half() for k, v in reference.model.state_dict().items()}},
        tmp_path / "HPS_v2_compressed.pt",
    )
    source = WeightSource("hpsv2", "hpsv2", "HPS v2")
    loaded = load_open_clip(
        ResolvedWeights("file", str(tmp_path / "HPS_v2_compressed.pt"), source),
        "tiny",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert loaded is not reference
    assert torch.allclose(loaded.embed_images(colour_images), reference.embed_images(colour_images), atol=5e-3)
    assert torch.allclose(loaded.embed_texts(["a cat"]), reference.embed_texts(["a cat"]), atol=5e-3)


def test_hub_ids_and_paths_are_told_apart(offline, tmp_path):
    source = WeightSource("x", "x", "X", repo_id="org/model")
    assert resolve_weights(source, "TINY").kind == "tiny"
    with pytest.raises(WeightsNotFoundError, match="not an existing file or folder, nor a hub id"):
        resolve_weights(source, "./missing/model.safetensors")
    with pytest.raises(WeightsNotFoundError, match="not an existing file or folder, nor a hub id"):
        resolve_weights(source, "a/b/c")
    with pytest.raises(WeightsNotFoundError, match="some-org/some-model"):
        resolve_weights(source, "some-org/some-model")
