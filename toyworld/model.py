"""The "toy" text-to-image model: a small Stable Diffusion built from the real library classes.

It is a genuine ``diffusers.StableDiffusionPipeline``: an ``AutoencoderKL`` (64x64 RGB <-> 4x16x16
latents), a ``UNet2DConditionModel`` whose two levels are ``CrossAttnDownBlock2D`` /
``CrossAttnUpBlock2D`` (so FABRIC's ``attn1`` self-attention hooks find transformer blocks at
every level, as in SD 1.5), a ``transformers.CLIPTextModel`` with the 49,408-token CLIP
vocabulary, and a DDIM scheduler (cosine schedule, v-prediction, see :func:`scheduler_config`). Trained weights ship in
``toyworld/weights/`` (``python -m toyworld.train`` reproduces them).

Example:
    >>> import torch
    >>> from toyworld.model import build_toy_pipeline
    >>> pipe = build_toy_pipeline()
    >>> g = torch.Generator().manual_seed(0)
    >>> image = pipe("a large red star on a blue background", num_inference_steps=20,
    ...              guidance_scale=6.0, generator=g).images[0]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fabric.errors import ModelLoadError, WeightsNotFoundError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = [
    "DEFAULT_WEIGHTS_DIR",
    "TEXT_MAX_LENGTH",
    "vae_config",
    "unet_config",
    "text_encoder_config",
    "scheduler_config",
    "build_toy_components",
    "build_toy_pipeline",
    "toy_pipeline_from",
    "save_toy_weights",
    "load_toy_components",
    "saved_scheduler_config",
    "toy_weights_available",
]

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path(__file__).with_name("weights")
TEXT_MAX_LENGTH = 16  # the longest toy caption is 13 words + BOS/EOS, every word one BPE token
_COMPONENTS = ("vae", "unet", "text_encoder")


def vae_config() -> dict[str, Any]:
    """``AutoencoderKL`` config: 3x64x64 images <-> 4x16x16 latents (downsampling factor 4)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        # 4 channels per group at the top level: one channel per group normalises away a flat
        # background's colour before conv_out can use it
        "norm_num_groups": 4,
        "sample_size": 64,
        "scaling_factor": 1.0,  # replaced by 1 / std of the trained latents
    }


def unet_config() -> dict[str, Any]:
    """``UNet2DConditionModel`` config: two cross-attention levels (16x16, 8x8) plus a mid block."""
    return {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [48, 96],
        "layers_per_block": 1,
        "cross_attention_dim": 64,
        # diffusers' legacy name: this is the number of heads (24 or 48 channels per head)
        "attention_head_dim": 2,
        "norm_num_groups": 16,
    }


def text_encoder_config() -> dict[str, Any]:
    """``CLIPTextConfig`` kwargs: the full CLIP vocabulary at width 64, 2 layers, 16 positions."""
    return {
        "vocab_size": 49408,
        "hidden_size": 64,
        "intermediate_size": 256,
        "projection_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": TEXT_MAX_LENGTH,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def scheduler_config() -> dict[str, Any]:
    """The noise schedule, for both training (DDPM) and sampling (DDIM).

    A cosine schedule (``squaredcos_cap_v2``) whose last step leaves almost no signal
    (``alphas_cumprod[-1]`` about 2e-9, not exactly 0, so every sigma stays finite),
    v-prediction (epsilon is ill-posed at that noise level) and ``trailing`` timesteps (sampling
    starts at t = 999, pure noise, as in training). With SD's ``scaled_linear`` betas a 16x16
    latent keeps 7 % of its amplitude at the last step, about as much as the spatial mean of its
    noise (1/16): the first toy model read the scene's colours partly off the seed's noise and
    drew the prompt's colour in under half of held-out images.
    """
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,  # ignored by trailing spacing; 1 keeps diffusers from warning
    }


# The first toy model's (2026-11-22) noise schedule, SD 1.x's: the schedule of a checkpoint saved
# without a scheduler_config.json.
_V1_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def build_toy_components(seed: int = 0) -> dict[str, torch.nn.Module]:
    """Fresh, randomly initialised ``vae``, ``unet`` and ``text_encoder`` (float32, CPU).

    Args:
        seed: seeds the initialisation through a forked RNG, so global torch state is untouched.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {
            "vae": AutoencoderKL(**vae_config()),
            "unet": UNet2DConditionModel(**unet_config()),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text_encoder_config())),
        }


def toy_weights_available(weights_dir: str | Path | None = None) -> bool:
    """Whether ``weights_dir`` (default: the packaged one) holds a complete toy checkpoint."""
    root = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR
    return all((root / f"{c}.safetensors").is_file() and (root / f"{c}_config.json").is_file() for c in _COMPONENTS)


def save_toy_weights(components: dict[str, Any], weights_dir: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Write ``<name>.safetensors`` (in ``dtype``, default half to keep the package small) and
    ``<name>_config.json`` for each of ``vae``, ``unet``, ``text_encoder``."""
    from safetensors.torch import save_file

    root = Path(weights_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name in _COMPONENTS:
        module = components[name]
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(root / f"{name}.safetensors"))
        if name == "text_encoder":
            config = {k: v for k, v in module.config.to_dict().items() if k in text_encoder_config()}
        else:
            config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
        (root / f"{name}_config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    # the weights only make sense with the schedule they were trained under
    (root / "scheduler_config.json").write_text(json.dumps(scheduler_config(), indent=1, sort_keys=True) + "\n")


def saved_scheduler_config(root: Path) -> dict[str, Any]:
    """The noise schedule a checkpoint in ``root`` was trained with (the first model's without a
    ``scheduler_config.json``)."""
    path = root / "scheduler_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else dict(_V1_SCHEDULER)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {path}: {exc}".splitlines()[0]) from exc


def load_toy_components(root: Path) -> dict[str, torch.nn.Module]:
    """The ``vae``, ``unet`` and ``text_encoder`` saved in ``root`` (float32, CPU, train mode).

    Raises:
        WeightsNotFoundError: the folder lacks a checkpoint.
        ModelLoadError: the checkpoint exists but does not load.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    if not toy_weights_available(root):
        raise WeightsNotFoundError(
            f"no toy checkpoint in {root}; run `python -m toyworld.train --out {root}` or pass trained=False"
        )
    try:
        configs = {c: json.loads((root / f"{c}_config.json").read_text()) for c in _COMPONENTS}
        modules: dict[str, torch.nn.Module] = {
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "unet": UNet2DConditionModel.from_config(configs["unet"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        }
        for name, module in modules.items():
            state = {k: v.float() for k, v in load_file(str(root / f"{name}.safetensors")).items()}
            # CLIP's position_ids buffer is not always saved; everything else must match
            missing, unexpected = module.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise ModelLoadError(
                    f"toy {name} weights in {root} do not match its config: {(missing or unexpected)[:3]}"
                )
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"could not load the toy checkpoint in {root}: {exc}".splitlines()[0]) from exc
    return modules


def build_toy_pipeline(
    weights_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trained: bool = True,
) -> StableDiffusionPipeline:
    """The toy model as a ``diffusers.StableDiffusionPipeline`` (64x64 images).

    Args:
        weights_dir: a folder written by :func:`save_toy_weights`; default: the packaged weights.
        device: where the pipeline runs.
        dtype: parameter dtype (float32 on CPU; half precision is fine on CUDA).
        trained: ``False`` gives the same architecture with seeded random weights (no files
            needed), for tests of mechanics.

    Returns:
        A pipeline with ``safety_checker=None`` and a ``DDIMScheduler``; its tokenizer is the
        offline CLIP tokenizer with ``model_max_length=16``.

    Raises:
        WeightsNotFoundError: ``trained=True`` and the folder lacks a checkpoint.
        ModelLoadError: the checkpoint exists but does not load.
    """
    if trained:
        root = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR
        modules: dict[str, Any] = load_toy_components(root)
        schedule = saved_scheduler_config(root)
    else:
        modules = build_toy_components(seed=0)
        schedule = scheduler_config()
    for module in modules.values():
        module.eval().requires_grad_(False)
    pipe = toy_pipeline_from(modules, schedule)
    for module in modules.values():
        # ModelMixin.to(dtype=...) warns about fp32-pinned submodules even when there are none
        torch.nn.Module.to(module, device=device, dtype=dtype)
    return pipe


def toy_pipeline_from(modules: dict[str, Any], schedule: dict[str, Any] | None = None) -> StableDiffusionPipeline:
    """A pipeline around the given ``vae``, ``unet`` and ``text_encoder`` (shared, not copied):
    the toy tokenizer, a DDIM scheduler (``schedule``, default :func:`scheduler_config`), no
    safety checker, progress bar off."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from fabric.tokenizer import offline_clip_tokenizer

    pipe = StableDiffusionPipeline(
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        tokenizer=offline_clip_tokenizer(model_max_length=modules["text_encoder"].config.max_position_embeddings),
        unet=modules["unet"],
        scheduler=DDIMScheduler.from_config(schedule if schedule is not None else scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
