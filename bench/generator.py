"""FABRIC's speed and memory against the plain diffusers pipeline: ``python -m bench.generator``.

One run times, interleaved (plain, FABRIC, plain, FABRIC, ...), the stock pipeline call and
:meth:`FabricGenerator.generate` with 0, 1+1, 2+2 and 4+4 references (liked + disliked), at
batch 4 and 20 steps, with cold reference caches (fresh images, cleared token cache). It reports
images/s, the median of the FABRIC/plain time ratios measured next to each other, the FLOP
bound (``plain time * FABRIC FLOPs / plain FLOPs``, see :mod:`bench.flops`) and measured time
over that bound, and the peak memory of each call above what was held before it.

Further parts (``--parts``):

* ``backends``: which fused attention kernel each bias variant (none, ``mask``, ``fold``) gets
  on this device, and its time at the model's largest self-attention layer.
* ``headroom``: the U-Net on the guided batch and on the references separately (as FABRIC runs
  them) against one call on all rows: the fixed cost of the second call per step.
* ``syncs`` (CUDA): host-device synchronisations of one plain and one FABRIC call.
* ``rounds``: an iterative session (rounds with growing liked/disliked lists, the token cache
  kept) against the same rounds run cold, and against repeating the final round cold; once
  with a large token cache and once with the default budget scaled to this model.
* ``options``: ``mask`` vs ``fold`` bias, the fused reference pass (``fuse``), channels-last U-Net,
  and (``--options ...,compile``)
  a ``torch.compile``d U-Net forward, each measured off/on, interleaved, for the plain call and
  FABRIC 2+2. Compiling the tiny U-Net took 3 min (plain) and 10 min (FABRIC's shapes) on the
  shared 2-core CPU, hence opt-in.

Models (random weights: time and memory equal the real checkpoints'; DESIGN section 6):

* ``tiny``: the built-in tiny SD 1.x pipeline, 64x64 (CPU).
* ``sd15``: SD 1.5 shapes (U-Net, VAE, CLIP-L text encoder), 512x512, fp16 on CUDA.
* ``sdxl``: SDXL base shapes (U-Net, VAE, CLIP-L + OpenCLIP bigG), 1024x1024, fp16 on CUDA.

``NAME:SIZE`` overrides the image size, e.g. ``sd15:64`` runs the SD 1.5 U-Net on 8x8 latents,
which a 2-core CPU finishes in minutes.

Usage::

    python -m bench.generator                                   # CPU: tiny, all parts
    python -m bench.generator --models sd15:64 --refs 2 --repeats 3 --parts throughput
    python -m bench.generator --device cuda --models sd15,sdxl --json runs/bench_generator_cuda.json

CPU timings are wall clock and process CPU time; on a machine shared with other jobs the CPU
time of a 1-thread run is the steadier of the two. Memory on CPU is the peak resident set
(``VmHWM``, reset before each call) above the resident set before it; on CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the call.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bench.results import write_json
from fabric.shapes import SD15_UNET, SDXL_UNET

if TYPE_CHECKING:
    from bench.flops import ComponentFlops

__all__ = [
    "BenchConfig",
    "MODELS",
    "backends",
    "build_pipeline",
    "entry_bytes",
    "headroom",
    "main",
    "measure",
    "options",
    "rounds",
    "syncs",
    "throughput",
]

logger = logging.getLogger(__name__)

PROMPT = "a photo of a red fox in the snow, highly detailed"


# ---- models ------------------------------------------------------------------------------------
def _clip_text(hidden: int, layers: int, heads: int, intermediate: int, act: str, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _sd_vae(scaling_factor: float, sample_size: int, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _sd15(device, dtype, seed: int):
    """SD 1.5 shapes with random weights (built on ``device``, then cast)."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from fabric.tokenizer import offline_clip_tokenizer

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = _sd_vae(0.18215, 512, force_upcast=False)
        text = _clip_text(768, 12, 12, 3072, "quick_gelu")
    parts = dict(unet=unet, vae=vae, text_encoder=text)
    for m in parts.values():
        m.to(dtype=dtype).eval()
    return StableDiffusionPipeline(
        **parts,
        tokenizer=offline_clip_tokenizer(),
        scheduler=EulerAncestralDiscreteScheduler(**_BETAS, steps_offset=1, timestep_spacing="leading"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(device, dtype, seed: int):
    """SDXL base shapes with random weights (built on ``device``, then cast)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from fabric.tokenizer import offline_clip_tokenizer

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = _sd_vae(0.13025, 1024, force_upcast=True)
        text = _clip_text(768, 12, 12, 3072, "quick_gelu")
        text_2 = _clip_text(1280, 32, 20, 5120, "gelu", projection=1280)
    parts = dict(unet=unet, vae=vae, text_encoder=text, text_encoder_2=text_2)
    for m in parts.values():
        m.to(dtype=dtype).eval()
    return StableDiffusionXLPipeline(
        **parts,
        tokenizer=offline_clip_tokenizer(),
        tokenizer_2=offline_clip_tokenizer(pad_token="!"),
        scheduler=EulerDiscreteScheduler(**_BETAS, steps_offset=1, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _tiny(device, dtype, seed: int):
    from fabric.tiny import build_tiny_pipeline

    return build_tiny_pipeline(device=device, dtype=dtype, seed=seed)


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build it and its native image size."""

    build: Callable  # (device, dtype, seed) -> diffusers pipeline
    size: int


#: model name -> spec; ``NAME:SIZE`` on the command line overrides the size
MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(_tiny, 64),
    "sd15": ModelSpec(_sd15, 512),
    "sdxl": ModelSpec(_sdxl, 1024),
}


def build_pipeline(name: str, device: str, dtype, seed: int = 0):
    """The pipeline of benchmark model ``name`` on ``device`` in ``dtype``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name].build(device, dtype, seed)


# ---- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    """What one model's benchmark runs.

    Attributes:
        model: a key of :data:`MODELS`.
        size: image side in pixels.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        batch: images per call.
        steps: denoising steps.
        refs: reference counts per polarity (0 = FABRIC with no references).
        repeats: interleaved repeats of the plain/FABRIC pairs (medians are reported).
        bias_mode: how the reference weight reaches SDPA (``"mask"`` or ``"fold"``).
        fuse: ``fuse_reference_pass`` of the generator: ``False`` (its default, the exact path:
            each reference recorded alone) or ``True`` (the opt-in fused pass).
        cache_gb: bound of the reference-token cache in the throughput part (the generator's
            default; its memory is part of FABRIC's overhead).
        rounds: rounds of the iterative-session part.
        max_weight: FABRIC's feedback strength (the A1111 default 0.8; the timing does not depend on it).
        seed: seed of the weights, the latents and the reference images.
    """

    model: str = "tiny"
    size: int = 64
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 4
    steps: int = 20
    refs: tuple[int, ...] = (0, 1, 2, 4)
    repeats: int = 5
    bias_mode: Literal["mask", "fold"] = "mask"
    fuse: bool = False
    cache_gb: float = 1.0
    rounds: int = 3
    max_weight: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.size % 8 or self.size < 8:
            raise ValueError(f"size must be a positive multiple of 8, got {self.size}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if self.batch < 1 or self.steps < 1 or self.repeats < 1 or self.rounds < 1:
            raise ValueError("batch, steps, repeats and rounds must be positive")
        if any(r < 0 for r in self.refs):
            raise ValueError(f"reference counts must be >= 0, got {self.refs}")
        if self.bias_mode not in ("mask", "fold"):
            raise ValueError(f"bias_mode must be 'mask' or 'fold', got {self.bias_mode!r}")

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def params(self):
        from fabric.params import FabricParams

        # the paper's schedule (feedback on steps 0..16 of 20) at the A1111 strength
        return FabricParams(steps=self.steps, max_weight=self.max_weight)


# ---- measuring --------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One timed call: wall seconds, process CPU seconds, peak bytes above the level before it."""

    wall: float
    cpu: float
    peak: int


def _rss() -> tuple[int, int]:
    """``(current, peak)`` resident set of this process in bytes (Linux ``/proc``)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount, _unit = line.split()
                values[key] = int(amount) * 1024
    return values["VmRSS:"], values["VmHWM:"]


def _reset_peak_rss() -> bool:
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], object], device: str) -> Measurement:
    """Time ``fn()`` and its peak memory above the memory held before the call."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak_rss()
        before = _rss()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN pixels of random VAEs in fp16
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _rss()[1] - before if reset else _rss()[0] - before  # without a reset: the RSS delta
    return Measurement(wall, cpu, max(int(peak), 0))


def _images(seed: int, n: int, size: int) -> list:
    """``n`` distinct random RGB images (fresh content: every cache misses)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    # smooth random fields, upsampled: closer to photos than per-pixel noise
    return [
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        for _ in range(n)
    ]


class _Runner:
    """Calls of one model: the plain pipeline, and FABRIC with fresh (cold) references."""

    def __init__(self, gen, cfg: BenchConfig) -> None:
        self.gen, self.cfg = gen, cfg
        self.params = cfg.params()
        self._image_seed = cfg.seed * 1_000_003

    def plain(self):
        import torch

        p = self.params
        return self.gen.pipeline(
            prompt=PROMPT,
            negative_prompt="",
            num_images_per_prompt=self.cfg.batch,
            num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(self.cfg.seed),
            height=self.cfg.size,
            width=self.cfg.size,
        ).images

    def fresh(self, n: int) -> list:
        self._image_seed += 1
        return _images(self._image_seed, n, self.cfg.size)

    def fabric(self, liked: Sequence, disliked: Sequence, *, cold: bool = True):
        if cold:
            self.gen.state_cache.clear()
        return self.gen.generate(
            PROMPT,
            liked=liked,
            disliked=disliked,
            params=self.params,
            n_images=self.cfg.batch,
            seed=self.cfg.seed,
            height=self.cfg.size,
            width=self.cfg.size,
        )

    def fabric_cold(self, k: int) -> Callable[[], object]:
        """A FABRIC call on ``k + k`` new images; the token cache is emptied now, so that its
        memory is not counted as held before the call."""
        liked, disliked = self.fresh(k), self.fresh(k)
        self.gen.state_cache.clear()
        return lambda: self.fabric(liked, disliked, cold=False)


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _summary(runs: list[Measurement]) -> dict:
    return {
        "wall_s": _median([m.wall for m in runs]),
        "cpu_s": _median([m.cpu for m in runs]),
        "peak_mb": max(m.peak for m in runs) / 2**20,
        "wall_all": [round(m.wall, 4) for m in runs],
    }


_COMPONENTS: dict[tuple[str, int], ComponentFlops] = {}  # (model, size) -> per-component FLOPs


def _estimate(gen, cfg: BenchConfig, k: int):
    """The FLOP estimate of one cold FABRIC call with ``k + k`` references."""
    from bench.flops import attn1_layers, component_flops, estimate_flops

    pipe = gen.pipeline
    key = (cfg.model, cfg.size)
    if key not in _COMPONENTS:
        _COMPONENTS[key] = component_flops(pipe, cfg.size, cfg.size)
    factor = pipe.vae_scale_factor
    return estimate_flops(
        _COMPONENTS[key],
        attn1_layers(pipe.unet.config, (cfg.size // factor, cfg.size // factor)),
        cfg.params(),
        images=cfg.batch,
        liked=k,
        disliked=k,
        num_down_blocks=len(pipe.unet.down_blocks),
    )


# ---- parts ------------------------------------------------------------------------------------
def throughput(gen, cfg: BenchConfig) -> dict:
    """Plain vs FABRIC with ``cfg.refs`` references, interleaved; ratios of neighbouring calls."""
    run = _Runner(gen, cfg)
    dev = cfg.device
    run.plain()  # warm-up: allocator, kernels, oneDNN primitives
    run.fabric_cold(max(cfg.refs))()
    plain_runs: list[Measurement] = []
    fabric_runs: dict[int, list[Measurement]] = {k: [] for k in cfg.refs}
    ratios: dict[int, list[tuple[float, float]]] = {k: [] for k in cfg.refs}
    cache_bytes = {k: 0 for k in cfg.refs}  # the token cache's share of the peak
    for r in range(cfg.repeats):
        before = measure(run.plain, dev)
        plain_runs.append(before)
        order = list(cfg.refs) if r % 2 == 0 else list(cfg.refs)[::-1]  # spread drift over variants
        for k in order:
            m = measure(run.fabric_cold(k), dev)
            cache_bytes[k] = max(cache_bytes[k], gen.state_cache.nbytes)
            gen.state_cache.clear()
            after = measure(run.plain, dev)
            plain_runs.append(after)
            fabric_runs[k].append(m)
            ratios[k].append((2 * m.wall / (before.wall + after.wall), 2 * m.cpu / (before.cpu + after.cpu)))
            before = after
        logger.info("%s repeat %d/%d done", cfg.model, r + 1, cfg.repeats)

    plain = _summary(plain_runs)
    out = {"plain": {**plain, "images_per_s": cfg.batch / plain["wall_s"]}, "fabric": {}}
    for k in cfg.refs:
        s = _summary(fabric_runs[k])
        est = _estimate(gen, cfg, k)
        ratio_wall = _median([a for a, _ in ratios[k]])
        ratio_cpu = _median([c for _, c in ratios[k]])
        out["fabric"][f"{k}+{k}"] = {
            **s,
            "images_per_s": cfg.batch / s["wall_s"],
            "ratio_wall": ratio_wall,
            "ratio_cpu": ratio_cpu,
            "ratios_wall_all": [round(a, 3) for a, _ in ratios[k]],
            "flop_ratio": est.ratio,
            "flops": {
                "plain": est.plain,
                "reference_passes": est.reference_passes,
                "attention": est.attention,
                "once": est.once,
            },
            "active_steps": est.active_steps,
            "time_over_bound_wall": ratio_wall / est.ratio,
            "time_over_bound_cpu": ratio_cpu / est.ratio,
            "memory_overhead_mb": s["peak_mb"] - plain["peak_mb"],
            "token_cache_mb": cache_bytes[k] / 2**20,
        }
    return out


def entry_bytes(unet_config, latent_hw: tuple[int, int], element_size: int) -> int:
    """Bytes of one reference-token cache entry (one image at one step, every ``attn1`` layer)."""
    from bench.flops import attn1_layers

    return element_size * sum(layer.tokens * layer.channels for layer in attn1_layers(unet_config, latent_hw))


#: entries the generator's default 1 GiB token cache holds for SD 1.5 at 512x512 in fp16 (46)
SD15_DEFAULT_CACHE_ENTRIES = (1 << 30) // entry_bytes(SD15_UNET, (64, 64), 2)


def rounds(gen, cfg: BenchConfig, budgets: dict[str, int] | None = None) -> dict:
    """An iterative session of ``cfg.rounds`` rounds (round ``r`` with ``r + r`` references, the
    token cache kept between rounds) against (a) the same rounds run cold and (b) ``rounds x``
    the final round cold.

    Args:
        budgets: label -> token-cache bound in bytes; one session per budget and repeat.
            Default: the generator's current cache.
    """
    from fabric.caches import ReferenceStateCache

    run = _Runner(gen, cfg)
    dev = cfg.device
    n = cfg.rounds
    budgets = budgets or {"current": gen.state_cache.max_bytes}
    session_t: dict[str, list[Measurement]] = {b: [] for b in budgets}
    hits: dict[str, list[int]] = {b: [] for b in budgets}
    cold_same_t, cold_final_t = [], []
    steps_active = _estimate(gen, cfg, 1).active_steps
    possible = 2 * steps_active * sum(i - 1 for i in range(1, n + 1))  # every earlier reference, every active step
    kept = gen.state_cache
    try:
        for r in range(cfg.repeats):
            for label, budget in budgets.items():
                liked, disliked = run.fresh(n), run.fresh(n)
                gen.state_cache = ReferenceStateCache(budget)

                def session():
                    for i in range(1, n + 1):
                        run.fabric(liked[:i], disliked[:i], cold=False)

                session_t[label].append(measure(session, dev))
                hits[label].append(gen.state_cache.hits)
            gen.state_cache = kept
            same = [(run.fresh(i), run.fresh(i)) for i in range(1, n + 1)]
            cold_same_t.append(measure(lambda: [run.fabric(a, b) for a, b in same], dev))
            finals = [(run.fresh(n), run.fresh(n)) for _ in range(n)]
            cold_final_t.append(measure(lambda: [run.fabric(a, b) for a, b in finals], dev))
            logger.info("%s rounds repeat %d/%d done", cfg.model, r + 1, cfg.repeats)
    finally:
        gen.state_cache = kept
    # FLOPs: each session round attends to all its references but runs (and encodes) only the
    # one new liked and disliked image; the cold runs pay every reference every round
    new = _estimate(gen, cfg, 1)
    flops_session = sum(
        e.plain + e.attention + new.reference_passes + new.once
        for e in (_estimate(gen, cfg, i) for i in range(1, n + 1))
    )
    flops_final = n * _estimate(gen, cfg, n).fabric
    out = {
        "rounds": n,
        "cold_same_rounds": _summary(cold_same_t),
        "cold_final_round_x_rounds": _summary(cold_final_t),
        "flop_ratio_session_over_final_x_rounds": flops_session / flops_final,
        "possible_hits": possible,
        "sessions": {},
    }
    for label, budget in budgets.items():
        t = session_t[label]
        out["sessions"][label] = {
            "cache_bytes": budget,
            **_summary(t),
            "over_cold_same": _median([a.wall / b.wall for a, b in zip(t, cold_same_t)]),
            "over_final_x_rounds": _median([a.wall / b.wall for a, b in zip(t, cold_final_t)]),
            "over_final_x_rounds_cpu": _median([a.cpu / b.cpu for a, b in zip(t, cold_final_t)]),
            "cache_hits": _median(hits[label]),
        }
    return out


_ATTENTION_KERNEL_WORDS = ("attention", "fmha", "flash", "sdpa", "cudnn")


def backends(gen, cfg: BenchConfig, refs: int = 2) -> dict:
    """The SDPA kernel each bias variant gets at the model's largest ``attn1`` layer, and its time."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from bench.flops import attn1_layers
    from fabric.attention import log_weight_bias, weighted_attention

    pipe = gen.pipeline
    factor = pipe.vae_scale_factor
    layer = max(
        attn1_layers(pipe.unet.config, (cfg.size // factor, cfg.size // factor)), key=lambda layer: layer.tokens
    )
    dev, dt = torch.device(cfg.device), cfg.torch_dtype
    g = torch.Generator("cpu").manual_seed(cfg.seed)
    d = layer.channels // layer.heads
    n, L = layer.tokens, layer.tokens * (1 + refs)
    q = torch.randn(cfg.batch, layer.heads, n, d, generator=g).to(dev, dt)
    k = torch.randn(cfg.batch, layer.heads, L, d, generator=g).to(dev, dt)
    v = torch.randn(cfg.batch, layer.heads, L, d, generator=g).to(dev, dt)
    bias = torch.zeros(L, device=dev, dtype=dt)
    bias[n:] = log_weight_bias(0.5, dt)
    variants = {
        "no bias (plain SDPA over all keys)": lambda: F.scaled_dot_product_attention(q, k, v),
        "mask": lambda: weighted_attention(q, k, v, bias, mode="mask"),
        "fold": lambda: weighted_attention(q, k, v, bias, mode="fold"),
    }
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg.device == "cuda" else [])
    variants_out: dict[str, dict] = {}
    out = {"layer": asdict(layer), "batch": cfg.batch, "refs": refs, "dtype": cfg.dtype, "variants": variants_out}
    for name, fn in variants.items():
        fn()
        with profile(activities=activities) as prof:
            fn()
        ops = sorted({e.key for e in prof.key_averages() if any(w in e.key.lower() for w in _ATTENTION_KERNEL_WORDS)})
        times = []
        for _ in range(max(3, cfg.repeats)):
            times.append(measure(fn, cfg.device).wall)
        variants_out[name] = {"kernels": ops, "ms": 1e3 * _median(times)}
    return out


class _Switch:
    """Turns one speed option of a generator on for the duration of a ``with`` block."""

    def __init__(self, gen) -> None:
        self.gen = gen
        self._compiled: Callable | None = None  # compiled once, reused by every "on" block

    @contextmanager
    def on(self, name: str) -> Iterator[None]:
        import torch

        gen, unet = self.gen, self.gen.pipeline.unet
        if name == "fold":
            previous, gen.bias_mode = gen.bias_mode, "fold"
            try:
                yield
            finally:
                gen.bias_mode = previous
        elif name == "fuse":  # off: the separate reference pass, whatever the device's default
            gen.fuse_reference_pass = True
            try:
                yield
            finally:
                gen.fuse_reference_pass = False
        elif name == "channels_last":
            unet.to(memory_format=torch.channels_last)
            try:
                yield
            finally:
                unet.to(memory_format=torch.contiguous_format)
        elif name == "compile":
            if self._compiled is None:
                # forward only: FABRIC's pre-hook runs in Module.__call__, eager, outside the graph
                self._compiled = torch.compile(unet.forward)
            unet.forward = self._compiled
            try:
                yield
            finally:
                del unet.forward  # the instance attribute; the class's forward shows again
        else:
            raise ValueError(f"unknown option {name!r}; use fold, fuse, channels_last or compile")


def headroom(gen, cfg: BenchConfig, refs: int = 2) -> dict:
    """What running the reference pass inside the main U-Net call could save.

    Times the U-Net on the guided batch (``2 * batch`` rows) and on ``2 * refs`` reference rows
    separately, as FABRIC runs them today, against one call on all rows together. Their
    difference is the fixed cost of a second U-Net call per step, the part of FABRIC's time
    that no FLOP count sees.
    """
    import torch

    unet = gen.pipeline.unet
    dev, dt = torch.device(cfg.device), cfg.torch_dtype
    factor = gen.pipeline.vae_scale_factor
    hw = (cfg.size // factor, cfg.size // factor)
    g = torch.Generator("cpu").manual_seed(cfg.seed)
    ucfg = unet.config

    def inputs(n: int):
        x = torch.randn(n, ucfg.in_channels, *hw, generator=g).to(dev, dt)
        ctx = torch.randn(n, 77, ucfg.cross_attention_dim, generator=g).to(dev, dt)
        added = None
        if ucfg.addition_embed_type == "text_time":
            pooled = ucfg.projection_class_embeddings_input_dim - 6 * ucfg.addition_time_embed_dim
            added = {
                "text_embeds": torch.randn(n, pooled, generator=g).to(dev, dt),
                "time_ids": torch.zeros(n, 6, device=dev, dtype=dt),
            }
        return lambda: unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added, return_dict=False)

    main_rows, ref_rows = 2 * cfg.batch, 2 * refs
    calls = {"main": inputs(main_rows), "references": inputs(ref_rows), "together": inputs(main_rows + ref_rows)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for fn in calls.values():
            fn()
        for _ in range(max(3, cfg.repeats)):
            for name, fn in calls.items():
                times[name].append(measure(fn, cfg.device).wall)
    t = {k: _median(v) for k, v in times.items()}
    separate = t["main"] + t["references"]
    return {
        "rows": {"main": main_rows, "references": ref_rows},
        "seconds_per_call": t,
        "together_over_separate": t["together"] / separate,
        "saving_per_active_step_s": separate - t["together"],
    }


def syncs(gen, cfg: BenchConfig, refs: int = 2) -> dict:
    """Host-device synchronisations of one plain call and one FABRIC call (CUDA only)."""
    import torch

    run = _Runner(gen, cfg)
    liked, disliked = run.fresh(refs), run.fresh(refs)
    out = {}
    for label, fn in (("plain", run.plain), (f"fabric {refs}+{refs}", lambda: run.fabric(liked, disliked))):
        fn()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out[label] = sum("synchroniz" in str(w.message) for w in caught)
    return out


def options(gen, cfg: BenchConfig, names: Sequence[str], refs: int = 2) -> dict:
    """Each option off/on, interleaved, for the plain call and FABRIC ``refs + refs``."""
    run = _Runner(gen, cfg)
    switch = _Switch(gen)
    out = {}
    default_fuse, gen.fuse_reference_pass = gen.fuse_reference_pass, False  # each option against the separate pass
    try:
        for name in names:
            out[name] = _option(run, switch, cfg, name, refs)
    finally:
        gen.fuse_reference_pass = default_fuse
    return out


def _option(run: _Runner, switch: _Switch, cfg: BenchConfig, name: str, refs: int) -> dict:
    """One option off/on, interleaved, for the plain call and FABRIC ``refs + refs``."""
    calls = {"plain": run.plain}
    if refs:
        liked, disliked = run.fresh(refs), run.fresh(refs)
        calls[f"fabric {refs}+{refs}"] = lambda: run.fabric(liked, disliked)
    res = {}
    for label, fn in calls.items():
        if name in ("fold", "fuse") and label == "plain":
            continue  # these do not touch the plain call
        t0 = time.perf_counter()
        with switch.on(name):
            fn()  # warm-up (for compile: compilation)
        first = time.perf_counter() - t0
        off, on = [], []
        for _ in range(cfg.repeats):
            off.append(measure(fn, cfg.device))
            with switch.on(name):
                on.append(measure(fn, cfg.device))
        res[label] = {
            "off_wall_s": _median([m.wall for m in off]),
            "on_wall_s": _median([m.wall for m in on]),
            "on_over_off_wall": _median([b.wall / a.wall for a, b in zip(off, on)]),
            "on_over_off_cpu": _median([b.cpu / a.cpu for a, b in zip(off, on)]),
            "first_call_s": first,
        }
    logger.info("option %s: %s", name, res)
    return res


# ---- report -----------------------------------------------------------------------------------
def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info["cpu"] = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), ""
        )
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _log_table(name: str, res: dict) -> None:
    t = res["throughput"]
    p = t["plain"]
    logger.info("== %s ==", name)
    logger.info(
        "%-8s %9s %8s %8s %8s %8s %9s %9s %9s",
        "variant",
        "images/s",
        "wall s",
        "ratio",
        "ratioCPU",
        "FLOPx",
        "t/bound",
        "tCPU/bnd",
        "peak MB",
    )
    logger.info(
        "%-8s %9.3f %8.3f %8s %8s %8s %9s %9s %9.0f",
        "plain",
        p["images_per_s"],
        p["wall_s"],
        "1",
        "1",
        "1",
        "",
        "",
        p["peak_mb"],
    )
    for k, f in t["fabric"].items():
        logger.info(
            "%-8s %9.3f %8.3f %8.3f %8.3f %8.3f %9.3f %9.3f %9.0f",
            k,
            f["images_per_s"],
            f["wall_s"],
            f["ratio_wall"],
            f["ratio_cpu"],
            f["flop_ratio"],
            f["time_over_bound_wall"],
            f["time_over_bound_cpu"],
            f["peak_mb"],
        )


def _parse_model(text: str) -> tuple[str, int]:
    name, _, size = text.partition(":")
    if name not in MODELS:
        raise SystemExit(f"error: unknown model {name!r}; choose from {', '.join(MODELS)}")
    return name, int(size) if size else MODELS[name].size


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.generator", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--models", default=None, help="comma list of NAME[:SIZE] (default: tiny on CPU, sd15,sdxl on CUDA)"
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="default: float32 on CPU, float16 on CUDA",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--refs", default="0,1,2,4", help="reference counts per polarity, comma list")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bias-mode", choices=("mask", "fold"), default="mask")
    parser.add_argument(
        "--fuse",
        choices=("on", "off"),
        default="off",
        help="new references inside the main U-Net call (off: the generator's default, the exact path)",
    )
    parser.add_argument("--cache-gb", type=float, default=1.0, help="token-cache bound in the throughput part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-scaled-budget",
        dest="scaled_budget",
        action="store_false",
        help="rounds part: skip the session with the default cache budget scaled to the model",
    )
    parser.add_argument(
        "--parts",
        default="backends,headroom,syncs,throughput,rounds,options",
        help="comma list of backends, headroom, syncs (CUDA), throughput, rounds, options",
    )
    parser.add_argument(
        "--options",
        default="fold,fuse,channels_last",
        help="options part: comma list of fold, fuse, channels_last, compile",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Busy-waiting OpenMP workers make 2-thread runs 10-20x slower on a CPU shared with other
    # jobs; passive waiting keeps them near the 1-thread time. It must be set before torch loads.
    if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        logger.warning(
            "torch is already loaded: set OMP_WAIT_POLICY=PASSIVE in the environment for 2-thread CPU timings"
        )
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "cast with to()" notes from building random-weight models
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights can drift into denormals, which are slow on CPUs
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    models = args.models or ("tiny" if args.device == "cpu" else "sd15,sdxl")
    dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "models": {},
    }
    logger.info("machine: %s", results["machine"])

    def save() -> None:
        """After every part: a run stopped by a time limit keeps what it measured."""
        if args.json is not None:
            write_json(args.json, results)

    for text in models.split(","):
        name, size = _parse_model(text.strip())
        cfg = BenchConfig(
            model=name,
            size=size,
            device=args.device,
            dtype=dtype,
            batch=args.batch,
            steps=args.steps,
            refs=tuple(int(x) for x in args.refs.split(",")),
            repeats=args.repeats,
            bias_mode=args.bias_mode,
            fuse=args.fuse == "on",
            cache_gb=args.cache_gb,
            rounds=args.rounds,
        )
        from fabric.fabric_generator import FabricGenerator

        t0 = time.perf_counter()
        pipe = build_pipeline(name, args.device, cfg.torch_dtype, cfg.seed)
        gen = FabricGenerator(
            pipe, cache_bytes=int(cfg.cache_gb * 2**30), bias_mode=cfg.bias_mode, fuse_reference_pass=cfg.fuse
        )
        logger.info("%s built in %.1f s", name, time.perf_counter() - t0)
        res: dict = {"config": asdict(cfg)}
        results["models"][f"{name}:{size}"] = res
        if "backends" in parts:
            res["backends"] = backends(gen, cfg)
            logger.info("backends: %s", res["backends"])
            save()
        if "headroom" in parts:
            res["headroom"] = headroom(gen, cfg)
            logger.info("headroom: %s", res["headroom"])
            save()
        if "syncs" in parts and cfg.device == "cuda":
            res["syncs"] = syncs(gen, cfg)
            logger.info("host-device syncs per call: %s", res["syncs"])
            save()
        if "throughput" in parts:
            res["throughput"] = throughput(gen, cfg)
            _log_table(f"{name} {size}x{size} {dtype} batch {cfg.batch}, {cfg.steps} steps", res)
            save()
        if "rounds" in parts:
            factor = pipe.vae_scale_factor
            per_entry = entry_bytes(pipe.unet.config, (size // factor, size // factor), cfg.torch_dtype.itemsize)
            budgets = {
                "unbounded": 1 << 50,
                # the generator's default budget, scaled to this model: what an SD 1.5 512x512 user gets
                "default 1 GiB at SD 1.5 512x512 scale": SD15_DEFAULT_CACHE_ENTRIES * per_entry,
            }
            if not args.scaled_budget:
                del budgets["default 1 GiB at SD 1.5 512x512 scale"]
            res["rounds"] = rounds(gen, cfg, budgets)
            logger.info("rounds: %s", res["rounds"])
            save()
        if "options" in parts:
            res["options"] = options(gen, cfg, [o.strip() for o in args.options.split(",") if o.strip()])
            save()
        del gen, pipe
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()
