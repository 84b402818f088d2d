"""Model families (tiny SD 1.x, SD 2.x v-prediction, SDXL) and single-file checkpoints.

The single-file tests write the tiny pipelines in the ORIGINAL (LDM/CompVis) layout with a
diffusers -> LDM key mapping of their own (the inverse of diffusers' single-file converters, which
only go the other way), then load them back through ``from_single_file`` with a config-only
folder, so every weight must come from the checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fabric import FabricParams
from fabric.errors import ModelLoadError
from fabric.fabric_generator import FabricGenerator

P = FabricParams(steps=3, max_weight=0.8)
FAMILIES = {"tiny": "sd1", "tiny-v": "sd2", "tiny-xl": "xl"}


@pytest.fixture(scope="module")
def generators():
    """One generator per tiny family, built once for this module."""
    return {name: FabricGenerator.from_pretrained(name) for name in FAMILIES}


def _arrays(images):
    return np.stack([np.asarray(img) for img in images])


# ---- families ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_without_feedback_is_its_plain_pipeline_and_feedback_changes_it(generators, solid_images, name):
    gen = generators[name]
    kwargs = dict(params=P, n_images=2, seed=3)
    ours = gen.generate("a red circle", negative_prompt="blurry", **kwargs)
    plain = gen.pipeline(
        prompt="a red circle",
        negative_prompt="blurry",
        num_images_per_prompt=2,
        num_inference_steps=P.steps,
        guidance_scale=P.guidance_scale,
        generator=torch.Generator().manual_seed(3),
    ).images
    assert np.array_equal(_arrays(ours), _arrays(plain))

    refs = dict(liked=[solid_images["red"], solid_images["green"]], disliked=[solid_images["blue"]])
    fed = gen.generate("a red circle", negative_prompt="blurry", **refs, **kwargs)
    assert not np.array_equal(_arrays(fed), _arrays(ours))
    assert np.array_equal(
        _arrays(fed), _arrays(gen.generate("a red circle", negative_prompt="blurry", **refs, **kwargs))
    )


def test_the_tiny_families_have_their_family_traits(generators):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sd1, sd2, xl = (generators[n].pipeline for n in FAMILIES)
    assert type(sd1) is StableDiffusionPipeline and sd1.scheduler.config.prediction_type == "epsilon"
    assert type(sd2) is StableDiffusionPipeline and sd2.scheduler.config.prediction_type == "v_prediction"
    assert sd2.unet.config.use_linear_projection and isinstance(sd2.unet.config.attention_head_dim, (list, tuple))
    assert sd2.tokenizer.pad_token == "!" and sd1.tokenizer.pad_token == "<|endoftext|>"
    assert type(xl) is StableDiffusionXLPipeline and xl.unet.config.addition_embed_type == "text_time"
    assert type(xl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert xl.tokenizer_2.pad_token == "!" and xl.vae.config.force_upcast
    # several transformer layers per block, as SDXL's (1, 2, 10)
    assert any(".transformer_blocks.1.attn1" in n for n in xl.unet.attn_processors)


def test_xl_reference_pass_uses_the_empty_prompt_pooled_embedding_and_the_time_ids(generators, solid_images):
    gen = FabricGenerator(generators["tiny-xl"].pipeline, fuse_reference_pass=False)  # a reference pass of its own
    calls = []

    def spy(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs.get("encoder_hidden_states"), kwargs.get("added_cond_kwargs")))

    handle = gen.pipeline.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        gen.generate(
            "a circle",
            liked=[solid_images["red"]],
            params=P,
            n_images=1,
            seed=0,
            height=64,
            width=96,
            output_type="latent",
        )
    finally:
        handle.remove()
    empty, _, pooled, _ = gen.pipeline.encode_prompt(
        "", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    reference_calls = [c for c in calls if c[0] == 1]  # main passes have batch 2 (guidance)
    assert len(reference_calls) == P.steps
    for _, text, added in reference_calls:
        assert torch.equal(text, empty)
        assert torch.equal(added["text_embeds"], pooled)
        assert added["time_ids"].tolist() == [[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]]  # (size, crop, target)


def test_depth_profile_covers_sdxl_three_levels_and_deep_transformer_blocks():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from fabric.schedule import layer_weights
    from fabric.shapes import SDXL_UNET

    with init_empty_weights():  # SDXL base's U-Net shape, no memory
        unet = UNet2DConditionModel(**SDXL_UNET)
    names = [n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn1.processor")]
    assert len(names) == 70  # 2*2 + 2*10 down, 10 mid, 3*10 + 3*2 up
    w = layer_weights(names, 1.0, 0.4, len(unet.down_blocks))  # linspace(1, .4, 4) = 1, .8, .6, .4
    expected = {"down_blocks.1": 0.8, "down_blocks.2": 0.6, "mid_block": 0.4, "up_blocks.0": 0.6, "up_blocks.1": 0.8}
    for name, weight in w.items():
        block = re.match(r"(down_blocks\.\d|up_blocks\.\d|mid_block)", name)[1]
        assert weight == pytest.approx(expected[block]), name
    assert sum(".transformer_blocks.9.attn1" in n for n in names) == 6  # the deep blocks are all covered


def test_fp16_vae_with_force_upcast_encodes_references_in_float32(solid_images):
    from fabric.fabric_generator import FabricGenerator

    gen = FabricGenerator.from_pretrained("tiny-xl", dtype=torch.float16)
    seen = []
    handle = gen.pipeline.vae.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    try:
        latents = gen.generate(
            "x", liked=[solid_images["red"]], params=P.replace(steps=1), n_images=1, output_type="latent"
        )
        gen.pipeline.vae.register_to_config(force_upcast=False)
        gen.generate("x", liked=[solid_images["blue"]], params=P.replace(steps=1), n_images=1, output_type="latent")
    finally:
        handle.remove()
    assert seen == [torch.float32, torch.float16]
    assert gen.pipeline.vae.dtype == torch.float16 and latents.dtype == torch.float16
    assert torch.isfinite(latents).all()


def test_builtin_and_unknown_models():
    from fabric.models import BUILTIN_MODELS, load_pipeline

    assert {"tiny", "tiny-v", "tiny-xl"} <= set(BUILTIN_MODELS)
    with pytest.raises(ModelLoadError, match="single-file checkpoints"):
        load_pipeline("tiny", model_type="xl")


# ---- diffusers -> original (LDM) layout, the inverse of diffusers' single-file converters -------
_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)


def _rename(name: str, pairs) -> str:
    for old, new in pairs:
        if name.startswith(old + "."):
            return new + name[len(old) :]
    return name


def _unet_to_ldm(unet) -> dict:
    n = unet.config.layers_per_block + 1  # per level: the resnets (+ attention), then a downsampler
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    out = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        if module in fixed:
            new = f"{fixed[module]}.{param}"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            slot = f"0.{_rename(m[4], _RESNET)}" if m[2] == "resnets" else f"1.{m[4]}"
            new = f"input_blocks.{1 + int(m[1]) * n + int(m[3])}.{slot}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{int(m[1]) * n + n}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            slot = f"0.{_rename(m[4], _RESNET)}" if m[2] == "resnets" else f"1.{m[4]}"
            new = f"output_blocks.{int(m[1]) * n + int(m[3])}.{slot}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            after = 2 if hasattr(unet.up_blocks[int(m[1])], "attentions") else 1
            new = f"output_blocks.{int(m[1]) * n + n - 1}.{after}.conv.{m[2]}"
        else:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(vae) -> dict:
    last = len(vae.decoder.up_blocks) - 1  # LDM numbers decoder levels bottom-up
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    shortcut = (("conv_shortcut", "nin_shortcut"),)
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], shortcut)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{last - int(m[1])}.block.{m[2]}.{_rename(m[3], shortcut)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.up.{last - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        out["first_stage_model." + new] = value
    return out


def _clip_to_ldm(text_encoder, prefix: str) -> dict:
    """OpenAI-CLIP layout (SD 1.x, SDXL's first encoder): transformers 4.x keys under ``prefix``."""
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def _open_clip_to_ldm(text_encoder, prefix: str) -> dict:
    """OpenCLIP layout (SD 2.x, SDXL's second encoder): fused qkv, resblocks, (width, proj) projection."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    names = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    layer = (
        ("self_attn.out_proj", "attn.out_proj"),
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    )
    out = {}
    for key, value in sd.items():
        if key in names:
            out[prefix + names[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key):
            qkv = [sd[f"encoder.layers.{m[1]}.self_attn.{p}_proj.{m[2]}"] for p in "qkv"]
            out[f"{prefix}transformer.resblocks.{m[1]}.attn.in_proj_{m[2]}"] = torch.cat(qkv)
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.*)", key):
            if not re.match(r"self_attn\.[kv]_proj", m[2]):
                out[f"{prefix}transformer.resblocks.{m[1]}.{_rename(m[2], layer)}"] = value
        else:
            raise KeyError(key)
    return out


def ldm_state_dict(pipe, family: str) -> dict[str, torch.Tensor]:
    sd = {**_unet_to_ldm(pipe.unet), **_vae_to_ldm(pipe.vae)}
    if family == "sd1":
        sd.update(_clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    elif family == "sd2":
        sd.update(_open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model."))
    else:
        sd.update(_clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        sd.update(_open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def save_configs(pipe, folder: Path) -> Path:
    """The component configs of ``pipe`` (no weights): what ``config=`` needs offline."""
    pipe.save_config(folder)
    for name, part in pipe.components.items():
        if hasattr(part, "save_config"):  # diffusers models and schedulers
            part.save_config(folder / name)
        elif hasattr(getattr(part, "config", None), "save_pretrained"):  # transformers models
            part.config.save_pretrained(folder / name)
        elif part is not None:  # tokenizers
            part.save_pretrained(folder / name)
    return folder


def write_checkpoint(pipe, family: str, path: Path) -> Path:
    state = ldm_state_dict(pipe, family)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:  # the Lightning layout of original .ckpt files
        torch.save({"state_dict": state, "global_step": 1}, path)
    return path


# ---- single-file checkpoints -------------------------------------------------------------------
@pytest.mark.parametrize("name, suffix", [("tiny", ".ckpt"), ("tiny-v", ".safetensors"), ("tiny-xl", ".safetensors")])
def test_single_file_round_trip_gives_identical_images(generators, solid_images, tmp_path, name, suffix):
    from fabric.fabric_generator import FabricGenerator
    from fabric.models import detect_model_type

    gen = generators[name]
    family = FAMILIES[name]
    ckpt = write_checkpoint(gen.pipeline, family, tmp_path / f"model{suffix}")
    config = save_configs(gen.pipeline, tmp_path / "config")
    assert not list(config.rglob("*.safetensors")) and not list(config.rglob("*.bin"))
    assert detect_model_type(ckpt) == family

    loaded = FabricGenerator.from_pretrained(str(ckpt), config=str(config))
    assert type(loaded.pipeline) is type(gen.pipeline)
    assert type(loaded.pipeline.scheduler) is type(gen.pipeline.scheduler)
    # Bitwise equality holds by construction only if both models' weights sit at allocator-aligned
    # addresses: CPU kernels take other paths for unaligned operands (seen on AMD EPYC).
    assert all(p.data_ptr() % 64 == 0 for p in loaded.pipeline.unet.parameters())
    # images no other test of this module encodes: cached latents/tokens computed in batches of
    # another size would differ in the last float bits
    magenta = Image.new("RGB", (64, 64), (200, 30, 200))
    kwargs = dict(liked=[solid_images["yellow"]], disliked=[magenta], params=P, n_images=1, seed=5)
    assert np.array_equal(
        _arrays(loaded.generate("a red circle", **kwargs)), _arrays(gen.generate("a red circle", **kwargs))
    )


class _Payload:
    """Pickles as a call to ``_touch``: loading it with full unpickling would run code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def _touch(path: str) -> None:
    Path(path).write_text("unpickled")


def test_ckpt_with_pickled_objects_is_refused_without_running_them(generators, tmp_path):
    from fabric.models import load_pipeline

    marker = tmp_path / "ran"
    state = ldm_state_dict(generators["tiny"].pipeline, "sd1")
    torch.save({"state_dict": state, "callback": _Payload(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(ModelLoadError, match="safely"):
        load_pipeline(tmp_path / "evil.ckpt", config=tmp_path)
    assert not marker.exists()


def test_model_type_and_config_are_checked(generators, tmp_path):
    from safetensors.torch import save_file

    from fabric.models import detect_model_type, load_pipeline

    sd_file = write_checkpoint(generators["tiny"].pipeline, "sd1", tmp_path / "sd.safetensors")
    xl_config = save_configs(generators["tiny-xl"].pipeline, tmp_path / "xl-config")
    sd_config = save_configs(generators["tiny"].pipeline, tmp_path / "sd-config")
    with pytest.raises(ModelLoadError, match="same model family"):
        load_pipeline(sd_file, config=xl_config)  # detected sd1, config for SDXL
    with pytest.raises(ModelLoadError, match="same model family"):
        load_pipeline(sd_file, model_type="xl", config=sd_config)  # forced xl, config for SD
    with pytest.raises(ModelLoadError, match="unknown model type"):
        load_pipeline(sd_file, model_type="sd3", config=sd_config)
    with pytest.raises(ModelLoadError, match="config folder not found"):
        load_pipeline(sd_file, config=tmp_path / "missing")

    lora_like = tmp_path / "lora.safetensors"
    save_file({"unet.conv_in.lora_A.weight": torch.zeros(2, 4)}, str(lora_like))
    with pytest.raises(ModelLoadError, match="not an original-layout"):
        detect_model_type(lora_like)
    refiner = {
        k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
        for k, v in ldm_state_dict(generators["tiny-xl"].pipeline, "xl").items()
        if ".embedders.0." not in k
    }
    save_file(refiner, str(tmp_path / "refiner.safetensors"))
    with pytest.raises(ModelLoadError, match="refiner"):
        detect_model_type(tmp_path / "refiner.safetensors")
