"""LoRA adapters: the HPS legacy per-processor layout, diffusers/PEFT files (AlignProp-style),
scales, the HPS negative-prompt prefix, and FABRIC's processors running through LoRA layers.

The reference for "the LoRA's effect" is computed without PEFT: the same low-rank deltas merged
into the base weights (``W + scale * up @ down``).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fabric import FabricParams
from fabric.errors import InvalidParameterError, ModelLoadError

P = FabricParams(steps=2, max_weight=0.8)
RANK = 2


def _projections(unet):
    """``(processor name, projection, Linear)`` for every attention layer's q/k/v/out."""
    for name in unet.attn_processors:
        attn = unet.get_submodule(name[: -len(".processor")])
        for proj, linear in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
            yield name, proj, linear


def hps_state_dict(unet, seed: int) -> dict[str, torch.Tensor]:
    """A synthetic LoRA in the HPS release's layout (diffusers <= 0.20 ``LoRAAttnProcessor``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, proj, linear in _projections(unet):
        sd[f"{name}.{proj}_lora.down.weight"] = 0.3 * torch.randn(RANK, linear.in_features, generator=g)
        sd[f"{name}.{proj}_lora.up.weight"] = 0.3 * torch.randn(linear.out_features, RANK, generator=g)
    return sd


def merge(generator, sd: dict[str, torch.Tensor], scale: float) -> None:
    """Add ``scale * up @ down`` to the base weights (the LoRA's effect, without PEFT)."""
    with torch.no_grad():
        for name, proj, linear in _projections(generator.pipeline.unet):
            linear.weight += scale * sd[f"{name}.{proj}_lora.up.weight"] @ sd[f"{name}.{proj}_lora.down.weight"]


def _gen(**kwargs):
    from fabric.fabric_generator import FabricGenerator

    return FabricGenerator.from_pretrained("tiny", **kwargs)


@pytest.fixture(scope="module")
def hps_file(tmp_path_factory):
    from fabric.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("hps") / "adapted_model.bin"
    torch.save(hps_state_dict(build_tiny_pipeline().unet, seed=1), path)
    return path


@pytest.fixture(scope="module")
def base():
    return _gen()


def _latents(gen, images, **kwargs):
    refs = dict(liked=[images["red"], images["green"]], disliked=[images["blue"]])
    return gen.generate(
        "a red circle", negative_prompt="blurry", params=P, n_images=1, seed=4, output_type="latent", **refs, **kwargs
    )


def test_hps_layout_is_converted_to_peft_keys():
    from fabric.lora import convert_attn_procs_lora, is_attn_procs_lora

    sd = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.zeros(2, 8),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.zeros(8, 2),
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight": torch.zeros(2, 8),
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight": torch.zeros(8, 2),
    }
    assert is_attn_procs_lora(sd)
    assert sorted(convert_attn_procs_lora(sd)) == [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_A.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_B.weight",
    ]
    assert not is_attn_procs_lora({"unet.x.to_q.lora_A.weight": torch.zeros(1)})
    with pytest.raises(ModelLoadError, match="only one of"):
        convert_attn_procs_lora({k: v for k, v in sd.items() if not k.endswith("to_q_lora.up.weight")})


def test_hps_lora_equals_its_merged_weights_and_the_same_weights_as_a_peft_adapter(hps_file, base, solid_images):
    from peft import LoraConfig

    gen = _gen(lora=[(str(hps_file), 1.0)])
    sd = torch.load(hps_file, weights_only=True)
    ours = _latents(gen, solid_images)
    assert not torch.allclose(ours, _latents(base, solid_images), atol=1e-2)  # the LoRA does something

    merged = _gen(negative_prefix=gen.negative_prefix)
    merge(merged, sd, 1.0)
    torch.testing.assert_close(ours, _latents(merged, solid_images), rtol=1e-4, atol=1e-4)

    # the same tensors put into a PEFT adapter by module name (no key conversion involved)
    peft = _gen(negative_prefix=gen.negative_prefix)
    unet = peft.pipeline.unet
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), "ref")
    with torch.no_grad():
        for name, proj, linear in _projections(unet):
            linear.lora_A["ref"].weight.copy_(sd[f"{name}.{proj}_lora.down.weight"])
            linear.lora_B["ref"].weight.copy_(sd[f"{name}.{proj}_lora.up.weight"])
    assert torch.equal(ours, _latents(peft, solid_images))


def test_hps_lora_prefixes_the_negative_prompt_once(hps_file, solid_images):
    from fabric.lora import HPS_NEGATIVE_PREFIX, load_lora
    from fabric.tiny import build_tiny_pipeline

    assert load_lora(build_tiny_pipeline(), hps_file).negative_prefix == HPS_NEGATIVE_PREFIX == "Weird image. "
    gen = _gen(lora=[(str(hps_file), 1.0)])
    assert gen.negative_prefix == "Weird image. "
    a = gen.generate("x", negative_prompt="blurry", params=P, n_images=1, output_type="latent")
    b = gen.generate("x", negative_prompt="Weird image. blurry", params=P, n_images=1, output_type="latent")
    c = gen.generate(
        "x", negative_prompt="Weird image. Weird image. blurry", params=P, n_images=1, output_type="latent"
    )
    assert torch.equal(a, b) and not torch.equal(a, c)  # added once, never twice


def test_scale_zero_is_the_base_model_bit_for_bit(hps_file, base, solid_images):
    gen = _gen(lora=[(str(hps_file), 0.0)])  # switched off: no weights and no "Weird image. " prefix
    assert gen.negative_prefix == ""
    base.clear_caches()
    assert torch.equal(_latents(gen, solid_images), _latents(base, solid_images))
    plain = dict(negative_prompt="blurry", params=P, n_images=1, output_type="latent")
    assert torch.equal(gen.generate("x", **plain), base.generate("x", **plain))


def test_diffusers_format_lora_from_reward_finetuning_loads_with_its_scale(tmp_path, base, solid_images):
    """An AlignProp-style LoRA: a PEFT adapter saved with diffusers' ``save_lora_weights``."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from fabric.lora import load_lora
    from fabric.tiny import build_tiny_pipeline

    trained = build_tiny_pipeline()
    trained.unet.add_adapter(
        LoraConfig(
            r=RANK, lora_alpha=RANK, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
        )
    )
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(trained.unet))
    deltas = {}
    for name, proj, linear in _projections(trained.unet):
        deltas[f"{name}.{proj}_lora.down.weight"] = linear.lora_A["default"].weight.detach().clone()
        deltas[f"{name}.{proj}_lora.up.weight"] = linear.lora_B["default"].weight.detach().clone()

    gen = _gen()
    info = load_lora(gen.pipeline, tmp_path, 0.5)  # a folder: pytorch_lora_weights.safetensors
    assert (
        info.format == "diffusers"
        and info.negative_prefix == ""
        and gen.pipeline.get_active_adapters() == [info.adapter_name]
    )
    merged = _gen()
    merge(merged, deltas, 0.5)
    torch.testing.assert_close(_latents(gen, solid_images), _latents(merged, solid_images), rtol=1e-4, atol=1e-4)


def test_several_loras_stay_active_with_their_own_scales(hps_file, tmp_path, solid_images):
    from fabric.tiny import build_tiny_pipeline

    second = hps_state_dict(build_tiny_pipeline().unet, seed=2)
    torch.save(second, tmp_path / "second_lora.bin")
    gen = _gen(lora=[f"{hps_file}:0.5", (str(tmp_path / "second_lora.bin"), -0.25)])
    assert sorted(gen.pipeline.get_active_adapters()) == ["adapted_model", "second_lora"]
    assert gen.negative_prefix == "Weird image. "  # only the HPS file asks for it
    merged = _gen(negative_prefix="Weird image. ")
    merge(merged, torch.load(hps_file, weights_only=True), 0.5)
    merge(merged, second, -0.25)
    torch.testing.assert_close(_latents(gen, solid_images), _latents(merged, solid_images), rtol=1e-4, atol=1e-4)


def test_an_adapter_deleted_through_diffusers_is_forgotten(hps_file, tmp_path):
    from fabric.lora import load_lora
    from fabric.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    first = load_lora(pipe, hps_file, 0.5)
    pipe.delete_adapters(first.adapter_name)
    torch.save(torch.load(hps_file, weights_only=True), tmp_path / "again.bin")
    second = load_lora(pipe, tmp_path / "again.bin", 0.7)
    assert pipe.get_active_adapters() == [second.adapter_name] == ["again"]


def test_lora_specs_and_errors(tmp_path, hps_file):
    from fabric.lora import load_lora, parse_lora_spec
    from fabric.tiny import build_tiny_pipeline

    assert parse_lora_spec("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5)
    assert parse_lora_spec("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert parse_lora_spec(r"C:\loras\b.safetensors") == (r"C:\loras\b.safetensors", 1.0)
    with pytest.raises(InvalidParameterError, match="finite"):
        parse_lora_spec("b.safetensors:nan")

    pipe = build_tiny_pipeline()
    with pytest.raises(ModelLoadError, match="not found"):
        load_lora(pipe, tmp_path / "missing.safetensors")
    with pytest.raises(ModelLoadError, match="no LoRA weights"):
        load_lora(pipe, tmp_path)
    torch.save({"down": torch.zeros(1), "note": argparse.Namespace(a=1)}, tmp_path / "pickled.bin")  # not weights-only
    with pytest.raises(ModelLoadError, match="safely"):
        load_lora(pipe, tmp_path / "pickled.bin")
    wrong = {k.replace("transformer_blocks", "blocks"): v for k, v in torch.load(hps_file, weights_only=True).items()}
    torch.save(wrong, tmp_path / "other_model.bin")
    with pytest.raises(ModelLoadError, match="could not load LoRA|matched no layer"):
        load_lora(pipe, tmp_path / "other_model.bin")


def test_cli_lora_option_reaches_the_generator_and_the_sidecar(hps_file, tmp_path, capsys):
    from fabric_opt_cli.app import main

    out = tmp_path / "run"
    argv = [
        "generate",
        "--prompt",
        "a red circle",
        "--steps",
        "2",
        "--n-images",
        "1",
        "--lora",
        f"{hps_file}:0.0",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0, capsys.readouterr().err
    sidecar = json.loads((out / "fabric.json").read_text())
    assert sidecar["lora"] == [{"path": str(hps_file.resolve()), "scale": 0.0}]
    assert sidecar["negative_prefix"] == ""  # scale 0 switches the HPS LoRA off, its prefix included
    # ... so the images are the base model's, bit for bit
    base = tmp_path / "base"
    with pytest.raises(SystemExit) as info:
        main([*argv[: argv.index("--lora")], "--out", str(base)])
    assert info.value.code == 0
    assert np.array_equal(np.asarray(Image.open(out / "image_00.png")), np.asarray(Image.open(base / "image_00.png")))

    with pytest.raises(SystemExit) as info:
        main(["generate", "--prompt", "x", "--model-type", "sd3", "--out", str(tmp_path / "bad")])
    assert info.value.code == 2 and "--model-type" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
