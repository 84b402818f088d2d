"""Train the toy world's models on CPU, reproducibly: ``python -m toyworld.train``.

Two jobs, both seeded end to end (data, initialisation, batches, noise):

* ``sd``: the toy Stable Diffusion (:mod:`toyworld.model`). First the VAE (L1 + MSE
  reconstruction, a tiny KL term; or ``--vae-from`` an existing checkpoint's), then the latents'
  scale is measured, then the UNet and the text encoder together with the diffusion loss of
  :func:`toyworld.model.scheduler_config`'s prediction type (v; min-SNR-5 weighting, 10 % empty
  captions for classifier-free guidance, EMA weights are the ones saved). Every
  ``eval_every`` steps the EMA weights are written to the output folder and the attribute
  classifier reads images generated from held-out captions (:func:`generation_accuracy`).
* ``rewards``: the attribute classifier and toy-clip (:mod:`toyworld.rewards`).

``--quick`` runs every phase for a handful of steps into a temporary folder (a smoke test, about a
minute). The full run's time and hardware are recorded in ``training.json`` beside the weights and
in docs/BENCHMARKS.md.

Example:
    python -m toyworld.train --only sd --out toyworld/weights
    python -m toyworld.train --quick
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fabric.errors import FabricOptError, InvalidParameterError
from toyworld.data import TrainConfig, render_dataset, to_model_range

__all__ = ["TrainConfig", "render_dataset", "caption_variants", "train_vae", "train_unet", "train_sd", "main"]

logger = logging.getLogger(__name__)


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, shape_weight: float = 5.0) -> torch.Tensor:
    """L1 + MSE with the shapes' pixels weighted ``shape_weight`` times the background's.

    Shapes cover a few percent of a scene; unweighted, their colour is the last thing the VAE
    learns. The corner pixel is always background (shapes keep clear of the border).
    """
    err = (recon - x).abs() + (recon - x).square()
    shape = ((x - x[:, :, :1, :1]).abs().sum(dim=1, keepdim=True) > 0.05).float()
    weight = 1.0 + (shape_weight - 1.0) * shape
    return (err * weight).sum() / (weight.sum() * x.shape[1])


def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> dict:
    """Fit ``vae`` to reconstruct ``images`` (uint8, ``N x 3 x 64 x 64``); sets its ``scaling_factor``."""
    vae.train()
    with torch.no_grad():
        # start from a nearly deterministic posterior (std 0.02): at log-variance 0 the latents
        # drown in unit noise and the decoder first learns the mean image, colourless blobs
        vae.quant_conv.bias[vae.config.latent_channels :] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.vae_steps, max(1, cfg.vae_steps // 20)))
    losses, t0 = [], time.perf_counter()
    for step in range(cfg.vae_steps):
        idx = torch.randint(len(images), (cfg.vae_batch,), generator=generator)
        x = to_model_range(images[idx])
        posterior = vae.encode(x).latent_dist
        # posterior.sample() draws from the global RNG: draw the noise from ours instead
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        loss = _reconstruction_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == cfg.vae_steps:
            logger.info(
                "vae step %d/%d loss %.4f (%.2f s/step)",
                step + 1,
                cfg.vae_steps,
                sum(losses[-50:]) / len(losses[-50:]),
                (time.perf_counter() - t0) / (step + 1),
            )
    vae.eval()
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(to_model_range(images[i : i + 256])).latent_dist.mean for i in range(0, len(images), 256)]
        )
        recon_mse = F.mse_loss(vae.decode(latents[:256]).sample.clamp(-1, 1), to_model_range(images[:256])).item()
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    logger.info(
        "vae done: recon mse %.4f, latent std %.3f -> scaling_factor %.4f",
        recon_mse,
        1 / scaling_factor,
        scaling_factor,
    )
    return {
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "recon_mse": recon_mse,
        "scaling_factor": scaling_factor,
        "seconds": time.perf_counter() - t0,
        "latents": latents,
    }


def caption_variants(scenes: Sequence, seed: int, n_partial: int = 2) -> list[tuple[str, ...]]:
    """Per scene: its full caption, then ``n_partial`` partial ones (seeded)."""
    import random

    from toyworld.scenes import caption, partial_caption

    rng = random.Random(seed)
    return [(caption(s), *(partial_caption(s, rng) for _ in range(n_partial))) for s in scenes]


def train_unet(
    unet,
    text_encoder,
    latents: torch.Tensor,
    captions: Sequence[Sequence[str]],
    cfg: TrainConfig,
    generator: torch.Generator,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict:
    """Train ``unet`` and ``text_encoder`` on ``latents`` (already scaled, ``N x 4 x 16 x 16``).

    ``captions[i]`` holds image ``i``'s full caption first, then partial ones; a sample uses a
    partial caption with probability ``cfg.partial_captions``. The saved weights are the
    exponential moving averages, copied into the modules at the end. Every ``cfg.eval_every``
    steps ``on_checkpoint(step)`` is called with the EMA weights swapped in (modules in eval
    mode); it must not draw from ``generator``.
    """
    from diffusers import DDPMScheduler

    from fabric.tokenizer import offline_clip_tokenizer
    from toyworld.model import scheduler_config

    tokenizer = offline_clip_tokenizer(model_max_length=text_encoder.config.max_position_embeddings)

    def tokenize(texts: Sequence[str]) -> torch.Tensor:
        return tokenizer(
            list(texts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    n_variants = len(captions[0])
    if any(len(c) != n_variants for c in captions):
        raise InvalidParameterError("every image needs the same number of caption variants")
    ids = tokenize([c for variants in captions for c in variants]).view(len(captions), n_variants, -1)
    empty = tokenize([""])
    sched_cfg = {k: v for k, v in scheduler_config().items() if k not in ("set_alpha_to_one", "steps_offset")}
    noise_scheduler = DDPMScheduler(**sched_cfg)
    abar = noise_scheduler.alphas_cumprod
    snr = abar / (1 - abar)
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
    # min-SNR-gamma weighting (Hang et al. 2023), written for the model's prediction target
    loss_weight = torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1 if v_prediction else snr)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.unet_steps, max(1, cfg.unet_steps // 20)))
    unet.train()
    text_encoder.train()
    losses, t0 = [], time.perf_counter()
    n_steps = cfg.unet_stop or cfg.unet_steps  # a stop keeps the learning-rate schedule of unet_steps
    for step in range(n_steps):
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=generator)
        drop = torch.rand(cfg.unet_batch, generator=generator) < cfg.caption_dropout
        partial = torch.rand(cfg.unet_batch, generator=generator) < cfg.partial_captions
        variant = torch.randint(1, max(2, n_variants), (cfg.unet_batch,), generator=generator).clamp(max=n_variants - 1)
        batch_ids = ids[idx, torch.where(partial, variant, torch.zeros_like(variant))]
        batch_ids = torch.where(drop[:, None], empty, batch_ids)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=generator)
        noisy = noise_scheduler.add_noise(z0, noise, t)
        target = noise_scheduler.get_velocity(z0, noise, t) if v_prediction else noise
        cond = text_encoder(batch_ids).last_hidden_state  # (B, 16, 64)
        pred = unet(noisy, t, cond).sample
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * loss_weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # EMA warm-up: early steps average over few updates so short runs are not all init weights
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(per_sample.mean().item())
        if (step + 1) % 50 == 0 or step + 1 == n_steps:
            logger.info(
                "unet step %d/%d mse %.4f (%.2f s/step)",
                step + 1,
                cfg.unet_steps,
                sum(losses[-50:]) / len(losses[-50:]),
                (time.perf_counter() - t0) / (step + 1),
            )
        if on_checkpoint is not None and (step + 1) % cfg.eval_every == 0 and step + 1 < n_steps:
            unet.eval()
            text_encoder.eval()
            with _ema_weights(params, ema):
                on_checkpoint(step + 1)
            unet.train()
            text_encoder.train()
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    return {
        "final_mse": sum(losses[-100:]) / len(losses[-100:]),
        "seconds": time.perf_counter() - t0,
        "mse_curve": [round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4) for i in range(0, len(losses), 50)],
    }


@contextlib.contextmanager
def _ema_weights(params: list[torch.Tensor], ema: list[torch.Tensor]):
    """Swap the EMA weights in for the duration of the block (for a checkpoint), then back."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, e in zip(params, ema):
            p.copy_(e)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _classifier(weights_dir: Path | None):
    """The attribute classifier in ``weights_dir`` (default: the packaged one), or ``None``."""
    from toyworld.model import DEFAULT_WEIGHTS_DIR
    from toyworld.rewards import load_attribute_classifier

    root = weights_dir if weights_dir is not None else DEFAULT_WEIGHTS_DIR
    if not (root / "classifier.safetensors").is_file():
        return None
    return load_attribute_classifier(root)


def reconstruction_accuracy(vae, seed: int, n: int = 500, classifier_dir: Path | None = None) -> dict | None:
    """The attribute classifier's accuracy on VAE round trips of ``n`` held-out scenes
    (``None`` without a trained classifier): what the VAE lets the U-Net express."""
    from toyworld.rewards import classifier_accuracy, scene_targets

    classifier = _classifier(classifier_dir)
    if classifier is None:
        return None
    images, _, scenes = render_dataset(n, seed=seed, split="heldout")
    with torch.no_grad():
        x = to_model_range(images)
        recon = torch.cat([vae.decode(vae.encode(x[i : i + 100]).latent_dist.mean).sample for i in range(0, n, 100)])
    return {
        k: round(v, 3) for k, v in classifier_accuracy(classifier, recon.clamp(-1, 1), scene_targets(scenes)).items()
    }


def generation_accuracy(
    modules: dict,
    seed: int,
    n: int = 200,
    classifier_dir: Path | None = None,
    steps: int = 20,
    guidance: float = 6.0,
    schedule: dict | None = None,
) -> dict | None:
    """The attribute classifier's accuracy on images generated from ``n`` held-out captions (half
    one-shape, half two-shape scenes; seed ``seed + i`` for caption ``i``); ``None`` without a
    trained classifier. This is the number the toy model is trained to raise.

    ``schedule``: the sampler's scheduler config (default: :func:`toyworld.model.scheduler_config`)."""
    from toyworld.model import toy_pipeline_from
    from toyworld.rewards import classifier_accuracy, images_to_tensor, scene_targets
    from toyworld.scenes import caption, held_out_scenes

    classifier = _classifier(classifier_dir)
    if classifier is None:
        return None
    scenes = held_out_scenes(n // 2, seed=seed, n_shapes=1) + held_out_scenes(n - n // 2, seed=seed, n_shapes=2)
    pipe = toy_pipeline_from(modules, schedule)
    images = []
    with torch.no_grad():
        for i in range(0, n, 25):
            batch = scenes[i : i + 25]
            generators = [torch.Generator().manual_seed(seed + i + j) for j in range(len(batch))]
            images += pipe(
                [caption(s) for s in batch], num_inference_steps=steps, guidance_scale=guidance, generator=generators
            ).images
    acc = classifier_accuracy(classifier, images_to_tensor(images), scene_targets(scenes))
    return {k: round(v, 3) for k, v in acc.items()}


def continuation_start(init_from: Path, vae_from: Path | None = None) -> dict[str, torch.nn.Module]:
    """The modules of the toy checkpoint ``init_from``, checked to be one training can continue.

    Raises:
        InvalidParameterError: ``vae_from`` names another folder (the U-Net only fits its own
            VAE's latents), or the checkpoint has another noise schedule than
            :func:`toyworld.model.scheduler_config`.
        ModelLoadError: the checkpoint is missing or does not load.
    """
    from toyworld.model import load_toy_components, saved_scheduler_config, scheduler_config

    if vae_from is not None and Path(vae_from).resolve() != Path(init_from).resolve():
        raise InvalidParameterError("init_from keeps its own VAE; vae_from must be unset or the same folder")
    modules = load_toy_components(Path(init_from))  # first: a missing checkpoint says so
    if saved_scheduler_config(Path(init_from)) != scheduler_config():
        raise InvalidParameterError(f"{init_from} was trained with another noise schedule; it cannot be continued")
    return modules


def train_sd(
    cfg: TrainConfig,
    out: Path,
    vae_from: Path | None = None,
    classifier_dir: Path | None = None,
    init_from: Path | None = None,
) -> dict:
    """Train the toy Stable Diffusion and write its weights to ``out``; returns a summary.

    Args:
        vae_from: a toy checkpoint whose VAE (and its scaling factor) to keep; the VAE phase is
            skipped and only the U-Net and text encoder are trained.
        classifier_dir: where the attribute classifier that measures the checkpoints lives
            (default: the packaged one).
        init_from: a toy checkpoint to continue from: its U-Net and text encoder are the starting
            weights (a fresh optimiser and learning-rate cycle of ``cfg.unet_steps``) and its VAE
            is kept, since the U-Net was trained on that VAE's latents. Its noise schedule must be
            :func:`toyworld.model.scheduler_config`'s.
    """
    from toyworld.model import build_toy_components, load_toy_components, save_toy_weights

    start: dict | None = None
    if init_from is not None:
        start = continuation_start(init_from, vae_from)
        vae_from = init_from
    generator = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    images, _, scenes = render_dataset(cfg.n_images, seed=cfg.seed, split="train")
    captions = caption_variants(scenes, seed=cfg.seed)
    logger.info("rendered %d training scenes in %.1f s", len(images), time.perf_counter() - t0)
    modules = start if start is not None else build_toy_components(seed=cfg.seed)
    vae_stats: dict
    if vae_from is None:
        vae_stats = train_vae(modules["vae"], images, cfg, generator)
        latents = vae_stats.pop("latents") * vae_stats["scaling_factor"]
    else:
        vae: Any = (start or load_toy_components(vae_from))["vae"].eval()
        modules["vae"] = vae
        vae_stats = {"from": str(vae_from), "scaling_factor": vae.config.scaling_factor}
        with torch.no_grad():
            latents = torch.cat(
                [vae.encode(to_model_range(images[i : i + 256])).latent_dist.mean for i in range(0, len(images), 256)]
            )
        latents = latents * vae_stats["scaling_factor"]
    vae_stats["reconstruction_accuracy"] = reconstruction_accuracy(modules["vae"], cfg.seed + 1, 500, classifier_dir)
    logger.info("attribute accuracy of VAE reconstructions: %s", vae_stats["reconstruction_accuracy"])
    curve: list[dict] = []

    def checkpoint(step: int) -> None:
        save_toy_weights(modules, out)
        acc = generation_accuracy(modules, cfg.seed + 100, cfg.eval_images, classifier_dir)
        curve.append({"step": step, "seconds": round(time.perf_counter() - t0), "heldout_accuracy": acc})
        logger.info("checkpoint at step %d: held-out generation accuracy %s", step, acc)

    unet_stats = train_unet(
        modules["unet"], modules["text_encoder"], latents, captions, cfg, generator, on_checkpoint=checkpoint
    )
    save_toy_weights(modules, out)
    unet_stats["heldout_accuracy"] = generation_accuracy(modules, cfg.seed + 100, cfg.eval_images, classifier_dir)
    unet_stats["checkpoints"] = curve
    logger.info("held-out generation accuracy %s", unet_stats["heldout_accuracy"])
    if init_from is not None:
        unet_stats["init_from"] = str(init_from)
    return {"vae": vae_stats, "unet": unet_stats, "seconds": time.perf_counter() - t0}


def training_record(cfg: TrainConfig, init_from: Path | None = None) -> dict:
    """The start of ``training.json``: the config, the machine, the date and, for a run that
    continues a checkpoint, that checkpoint's own record (so the weights' history stays with them)."""
    record: dict[str, Any] = {"config": dataclasses.asdict(cfg), "hardware": _hardware()}
    record["date"] = time.strftime("%Y-%m-%d")
    if init_from is not None and (Path(init_from) / "training.json").is_file():
        record["continues"] = json.loads((Path(init_from) / "training.json").read_text())
    return record


def _hardware() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point; returns the output folder."""
    parser = argparse.ArgumentParser(prog="python -m toyworld.train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: toyworld/weights, or a temp folder with --quick)",
    )
    parser.add_argument("--only", choices=("sd", "rewards", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="a few steps of every phase, into a temp folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared 2-core box)")
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--unet-lr", type=float, default=None, help="peak learning rate of the U-Net phase")
    parser.add_argument(
        "--unet-stop",
        type=int,
        default=None,
        help="end the U-Net phase after this many steps, keeping the learning-rate schedule of --unet-steps",
    )
    parser.add_argument(
        "--vae-from", type=Path, default=None, help="keep the VAE of this toy checkpoint; train only U-Net + text"
    )
    parser.add_argument(
        "--classifier", type=Path, default=None, help="folder of the attribute classifier that scores checkpoints"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="continue from this toy checkpoint: its U-Net and text encoder start, its VAE is kept",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    overrides = {"seed": args.seed, "threads": args.threads}
    if args.unet_steps is not None:
        overrides["unet_steps"] = args.unet_steps
    if args.unet_stop is not None:
        overrides["unet_stop"] = args.unet_stop
    if args.vae_steps is not None:
        overrides["vae_steps"] = args.vae_steps
    if args.unet_lr is not None:
        overrides["unet_lr"] = args.unet_lr
    try:
        cfg = TrainConfig.quick(**overrides) if args.quick else TrainConfig(**overrides)
        if args.init_from is not None:  # fail here, before anything is written
            continuation_start(args.init_from, args.vae_from)
    except FabricOptError as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.out is not None:
        out = args.out
    elif args.quick:
        out = Path(tempfile.mkdtemp(prefix="fabric-toy-"))
    else:
        from toyworld.model import DEFAULT_WEIGHTS_DIR

        out = DEFAULT_WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    logger.info("training %s into %s with %s", args.only, out, cfg)

    record = training_record(cfg, args.init_from)
    if args.only in ("sd", "all"):
        record["sd"] = train_sd(
            cfg, out, vae_from=args.vae_from, classifier_dir=args.classifier, init_from=args.init_from
        )
        (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    if args.only in ("rewards", "all"):
        from toyworld.rewards import train_rewards

        record["rewards"] = train_rewards(cfg, out)
        (out / "rewards_training.json").write_text(json.dumps(record, indent=1) + "\n")
    logger.info("done: weights in %s", out)
    return out


if __name__ == "__main__":
    main()
