"""``fabric-opt generate``: one FABRIC generation, written as images + grid + JSON sidecar."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from fabric.errors import ConfigError
from fabric.params import FabricParams
from fabric_opt_cli import options

logger = logging.getLogger(__name__)

# CLI flag -> FabricParams field; flags override the preset
_PARAM_FLAGS = (
    "steps",
    "guidance_scale",
    "feedback_start",
    "feedback_end",
    "min_weight",
    "max_weight",
    "neg_scale",
    "pos_bottleneck_scale",
    "neg_bottleneck_scale",
    "max_references",
    "prompt_dropout",
)


def generate(
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Text prompt (default: the preset's)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", "-n"),
    liked: list[Path] = typer.Option([], "--liked", help="Liked reference image (repeatable)."),
    disliked: list[Path] = typer.Option([], "--disliked", help="Disliked reference image (repeatable)."),
    preset: Optional[Path] = typer.Option(None, "--preset", help="fabric-opt preset or generation sidecar JSON."),
    model: str = options.MODEL,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default: the preset's, else 0)."),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="Number of images (default 4)."),
    steps: Optional[int] = typer.Option(None, "--steps"),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance-scale"),
    feedback_start: Optional[float] = typer.Option(None, "--feedback-start"),
    feedback_end: Optional[float] = typer.Option(None, "--feedback-end"),
    min_weight: Optional[float] = typer.Option(None, "--min-weight"),
    max_weight: Optional[float] = typer.Option(None, "--max-weight"),
    neg_scale: Optional[float] = typer.Option(None, "--neg-scale"),
    pos_bottleneck_scale: Optional[float] = typer.Option(None, "--pos-bottleneck-scale"),
    neg_bottleneck_scale: Optional[float] = typer.Option(None, "--neg-bottleneck-scale"),
    max_references: Optional[int] = typer.Option(None, "--max-references"),
    prompt_dropout: Optional[float] = typer.Option(None, "--prompt-dropout"),
    height: Optional[int] = typer.Option(None, "--height"),
    width: Optional[int] = typer.Option(None, "--width"),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Output folder."),
    device: Optional[str] = options.DEVICE,
    dtype: Optional[str] = options.DTYPE,
    scheduler: Optional[str] = options.SCHEDULER,
    lora: list[str] = typer.Option(
        [], "--lora", help="LoRA file or folder, PATH[:scale] (repeatable; scale 1 by default)."
    ),
    model_type: Optional[str] = typer.Option(
        None, "--model-type", help="sd or xl: family of a .safetensors/.ckpt model (default: detected)."
    ),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="Local diffusers folder with the configs of a .safetensors/.ckpt model's family (offline).",
    ),
) -> None:
    """Generate images with FABRIC feedback; writes images, a grid and a reproducible JSON sidecar."""
    from fabric.images import load_images
    from fabric.preset import read_preset

    # 1. Parameters: preset, then flags (validated before anything is loaded or written)
    base: dict = {}
    if preset is not None:
        base = read_preset(preset)
    overrides = {k: v for k, v in locals().items() if k in _PARAM_FLAGS and v is not None}
    params = FabricParams.from_dict({**(base["params"].to_dict() if base else {}), **overrides})
    prompt = prompt if prompt is not None else base.get("prompt")
    if not prompt:
        raise ConfigError("no prompt: pass --prompt or a --preset sidecar that has one")
    negative_prompt = negative_prompt if negative_prompt is not None else base.get("negative_prompt", "")
    seed = seed if seed is not None else base.get("seed", 0)
    n_images = n_images if n_images is not None else base.get("n_images", 4)
    if n_images < 1:
        raise ConfigError(f"--n-images must be >= 1, got {n_images}")
    liked_paths = [str(p) for p in liked] or list(base.get("liked", []))
    disliked_paths = [str(p) for p in disliked] or list(base.get("disliked", []))
    height = height or base.get("height")
    width = width or base.get("width")
    if preset is not None and model == "tiny" and base.get("model"):
        model = base["model"]

    # 2. Inputs: images and model, before any denoising
    from fabric.lora import parse_lora_spec
    from fabric.models import MODEL_TYPES

    if model_type is not None and model_type not in MODEL_TYPES:
        raise ConfigError(f"--model-type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    loras = [parse_lora_spec(spec) for spec in lora]
    liked_images = load_images(liked_paths)
    disliked_images = load_images(disliked_paths)
    dev, dt = options.resolve_device_dtype(device, dtype)

    from rich.progress import Progress

    from fabric.fabric_generator import FabricGenerator

    with Progress(transient=True) as bar:
        task = bar.add_task("loading model", total=None)
        # one call: no later round could reuse recorded reference tokens, so keep none
        gen = FabricGenerator.from_pretrained(
            model,
            device=dev,
            dtype=dt,
            scheduler=scheduler,
            model_type=model_type,
            config=None if config is None else str(config),
            lora=loras,
            cache_bytes=0,
        )
        bar.update(task, description="denoising", total=params.steps, completed=0)
        images = gen.generate(
            prompt,
            negative_prompt,
            liked=liked_images,
            disliked=disliked_images,
            params=params,
            n_images=n_images,
            seed=seed,
            height=height,
            width=width,
            progress=lambda i, total: bar.update(task, completed=i),
        )

    # 3. Write: images, grid, sidecar (last, so a sidecar always describes complete output)
    from fabric.images import make_grid
    from fabric.preset import write_preset

    out.mkdir(parents=True, exist_ok=True)
    assert isinstance(images, list)  # PIL images (output_type "pil")
    names = []
    for i, img in enumerate(images):
        name = f"image_{i:02d}.png"
        img.save(out / name)
        names.append(name)
    make_grid(images, cols=min(4, len(images))).save(out / "grid.png")
    w, h = images[0].size
    sidecar = write_preset(
        out / "fabric.json",
        params,
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        n_images=n_images,
        height=h,
        width=w,
        model=model,
        scheduler=scheduler,
        model_type=model_type,
        config=str(config.resolve()) if config else None,
        lora=[{"path": str(Path(p).resolve()), "scale": s} for p, s in loras],
        negative_prefix=gen.negative_prefix,
        liked=[str(Path(p).resolve()) for p in liked_paths],
        disliked=[str(Path(p).resolve()) for p in disliked_paths],
        images=names,
    )
    logger.info("wrote %d images, grid.png and %s", len(images), sidecar)
    typer.echo(f"{len(images)} images, grid and sidecar written to {out}")
