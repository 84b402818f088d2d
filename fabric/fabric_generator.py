"""FABRIC on a stock diffusers pipeline.

:class:`FabricGenerator` drives the unmodified ``StableDiffusionPipeline`` /
``StableDiffusionXLPipeline`` and adds FABRIC through two seams:

* :class:`~fabric.attention.FabricAttnProcessor` on every ``attn1`` layer (restored in
  ``finally``), sharing one :class:`~fabric.attention.FabricState` keyed by layer name;
* a forward pre-hook on the U-Net (:class:`~fabric.reference.ReferencePass`) that, at each step
  that needs it, noises each reference latent to the step's noise level, runs the U-Net on it
  with the empty prompt in ``"record"`` mode, and hands the recorded tokens and the step's
  weights to the processors.

Every scheduler, callback and pipeline option keeps working, and with no references (or all
weights 0) the pipeline runs untouched, so the output equals the plain pipeline bit for bit.

Reproducibility contract: the images of a call are a function of its inputs only (prompts,
seeds, parameters, reference images, model, device and dtype), not of what the caches hold,
what ran before, or how many calls came earlier. This holds by construction: every reference is
encoded and recorded in a batch of its own, and the main U-Net call has the same rows whether
its references are new or cached, so every kernel sees the same shapes. Two speed options give
the same images only up to float rounding and are opt-in: ``fuse_reference_pass`` (new
references ride as extra rows of the main call) and :meth:`FabricGenerator.generate_many` with
several requests (prompts share the U-Net calls).

Reference latents are cached per image, and recorded reference tokens per (image, noise
identity, timestep), on the device (:mod:`fabric.caches`), so a reference seen in an earlier
round of an iterative session is never run through the U-Net again.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import NamedTuple

import torch
from PIL import Image

from fabric.attention import BiasMode
from fabric.caches import PlainCallCache, ReferenceStateCache, copy_images
from fabric.checks import check_int
from fabric.errors import InvalidParameterError
from fabric.images import ImageLike, image_key, load_reference
from fabric.models import load_pipeline  # also quiets diffusers' vacuous cast warning
from fabric.params import FabricParams
from fabric.reference import Group, Reference, ReferencePass
from fabric.seeds import cpu_generators, stable_seed

__all__ = ["FabricGenerator", "GenerationRequest", "drop_words", "prompts_after_dropout"]

logger = logging.getLogger(__name__)


def drop_words(prompt: str, p: float, seed: int) -> str:
    """Drop each word of ``prompt`` independently with probability ``p`` (seeded)."""
    if p <= 0:
        return prompt
    rng = random.Random(seed)
    return " ".join(w for w in prompt.split() if rng.random() >= p)


def prompts_after_dropout(prompts: Sequence[str], seeds: Sequence[int], dropout: float) -> list[str]:
    """Each image's prompt after prompt dropout, as :meth:`FabricGenerator.generate` draws it:
    image ``i`` of a call (seed ``seeds[i]``) drops each word of ``prompts[i]`` with probability
    ``dropout``, seeded by its seed and position (for showing what a round was generated from)."""
    if dropout <= 0:
        return list(prompts)
    return [drop_words(p, dropout, stable_seed("dropout", s, i)) for i, (p, s) in enumerate(zip(prompts, seeds))]


def _split_groups(groups: list[Group], at: int) -> tuple[list[Group], list[Group]]:
    """The groups of batch rows ``[0, at)`` and ``[at, n)``; a group across ``at`` is cut in two."""
    first: list[Group] = []
    second: list[Group] = []
    start = 0
    for n, pos, neg in groups:
        if start + n <= at:
            first.append((n, pos, neg))
        elif start >= at:
            second.append((n, pos, neg))
        else:
            first.append((at - start, pos, neg))
            second.append((start + n - at, pos, neg))
        start += n
    return first, second


class _Loaded(NamedTuple):
    """A feedback image as the generator reads it: RGB pixels and its identity key (if given)."""

    image: Image.Image
    noise_key: str | None


class _Pending(NamedTuple):
    """A request of :meth:`FabricGenerator.generate_many`, read and checked."""

    prompts: list[str]  # per image, after dropout
    negatives: list[str]
    seeds: list[int]
    liked: list[_Loaded]
    disliked: list[_Loaded]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's images in :meth:`FabricGenerator.generate_many`. Validated on construction.

    Attributes:
        prompt: the prompt.
        seeds: one seed per image (the number of images).
        negative_prompt: the negative prompt.
        liked: images (PIL or paths) to pull towards.
        disliked: images to push away from.
    """

    prompt: str
    seeds: tuple[int, ...]
    negative_prompt: str = ""
    liked: tuple[ImageLike, ...] = ()
    disliked: tuple[ImageLike, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise InvalidParameterError("a request's prompt and negative prompt must be strings")
        for name in ("seeds", "liked", "disliked"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes, int, PathLike, Image.Image)):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise InvalidParameterError(f"a request needs one integer seed per image, got {self.seeds!r}")


class FabricGenerator:
    """Text-to-image generation with FABRIC feedback on a diffusers pipeline.

    Args:
        pipeline: a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` whose
            scheduler has ``alphas_cumprod``.
        cache_bytes: bound of the reference-token cache (see :class:`ReferenceStateCache`);
            0 disables it.
        bias_mode: ``"mask"`` or ``"fold"``, how the log-weight bias reaches fused attention.
        negative_prefix: text put before every negative prompt (e.g. ``"Weird image. "``, which
            the HPS LoRA requires; :meth:`from_pretrained` sets it from the loaded LoRAs).
        plain_cache_size: how many calls without feedback to keep (see :class:`PlainCallCache`);
            0 (the default) disables it. Studies turn it on, so the first round of a trial is
            not generated again when an earlier trial or the baseline already made it.
        fuse_reference_pass: opt-in speed option: run the references not yet in the token cache
            as extra rows of the main U-Net call (empty prompt, the step's timestep; their rows
            attend only to themselves) instead of one reference pass each. One U-Net call per
            step, at the cost of a larger batch, and the same images only up to float rounding:
            the main call's batch then depends on the cache's contents (docs/BENCHMARKS.md).
            Falls back to the separate pass for U-Net inputs it cannot extend (ControlNet
            residuals, ``timestep_cond``, attention masks, ``cross_attention_kwargs``).

    Example:
        >>> gen = FabricGenerator.from_pretrained("tiny")
        >>> first = gen.generate("a red circle", n_images=4, seed=0)
        >>> better = gen.generate("a red circle", liked=first[:1], disliked=first[3:], seed=1)
    """

    def __init__(
        self,
        pipeline,
        *,
        cache_bytes: int = 1 << 30,
        bias_mode: BiasMode = "mask",
        negative_prefix: str = "",
        plain_cache_size: int = 0,
        fuse_reference_pass: bool = False,
    ) -> None:
        from fabric.schedulers import check_scheduler

        check_scheduler(pipeline.scheduler)  # FABRIC noises references from alphas_cumprod
        self.negative_prefix = negative_prefix
        self.pipeline = pipeline
        self.pipeline.set_progress_bar_config(disable=True)
        self.bias_mode: BiasMode = bias_mode
        self.state_cache = ReferenceStateCache(check_int("cache_bytes", cache_bytes, minimum=0))
        self._warned_cache_full = False
        self._latent_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._latent_cache_size = 64
        self.plain_cache = PlainCallCache(check_int("plain_cache_size", plain_cache_size, minimum=0))
        if not isinstance(fuse_reference_pass, bool):
            raise InvalidParameterError(f"fuse_reference_pass must be True or False, got {fuse_reference_pass!r}")
        self.fuse_reference_pass = fuse_reference_pass
        self.last_seeds: list[int] = []

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str = "tiny",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        scheduler: str | None = None,
        model_type: str | None = None,
        config: str | None = None,
        lora: Sequence[str | tuple[str, float]] = (),
        **kwargs,
    ) -> FabricGenerator:
        """Load ``model`` (``"tiny"``, ``"toy"``, a hub id, a diffusers folder, or a single
        ``.safetensors``/``.ckpt`` file) onto ``device`` in ``dtype``.

        Args:
            scheduler: optional scheduler name (see :mod:`fabric.schedulers`).
            model_type: ``"sd"`` or ``"xl"`` for single-file checkpoints (detected if omitted).
            config: local diffusers folder with the configs of a single-file checkpoint.
            lora: LoRAs to load, each ``(path, scale)`` or ``"PATH[:scale]"`` (see
                :mod:`fabric.lora`); their negative-prompt prefix (HPS) becomes ``negative_prefix``.
            **kwargs: passed to :class:`FabricGenerator`.
        """
        pipe = load_pipeline(model, device=device, dtype=dtype, model_type=model_type, config=config)
        if scheduler is not None:
            from fabric.schedulers import set_scheduler

            set_scheduler(pipe, scheduler)
        if lora:
            from fabric.lora import load_loras, negative_prefix_of

            kwargs.setdefault("negative_prefix", negative_prefix_of(load_loras(pipe, lora)))
        return cls(pipe, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.pipeline.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.unet.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> FabricGenerator:
        for module in self._modules():
            module.to(device=device, dtype=dtype)
        self.clear_caches()
        return self

    def clear_caches(self) -> None:
        """Forget cached reference latents, reference tokens and plain-call outputs; needed after
        changing the pipeline's weights or scheduler in place."""
        self._latent_cache.clear()
        self.state_cache.clear()
        self.plain_cache.clear()

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in self.pipeline.components.values() if isinstance(m, torch.nn.Module)]

    @property
    def default_size(self) -> tuple[int, int]:
        side = self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor
        return side, side

    # ---- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        liked: Sequence[ImageLike] = (),
        disliked: Sequence[ImageLike] = (),
        params: FabricParams | None = None,
        n_images: int = 4,
        seed: int | Sequence[int] = 0,
        height: int | None = None,
        width: int | None = None,
        *,
        output_type: str = "pil",
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """Generate ``n_images`` images for ``prompt`` with liked/disliked feedback.

        Args:
            prompt: one prompt, or one per image.
            negative_prompt: one negative prompt, or one per image.
            liked: images (PIL or paths) to pull towards; the most recent
                ``params.max_references`` are used.
            disliked: images to push away from (through the unconditional half of guidance).
            params: the FABRIC parameters; defaults to :meth:`FabricParams.paper`.
            n_images: number of images.
            seed: one seed for the whole batch (the same latents as the plain pipeline given
                ``torch.Generator().manual_seed(seed)``), or one seed per image.
            height, width: image size, multiples of 8; the model's default when omitted.
            output_type: ``"pil"`` or ``"latent"`` (a ``(n, 4, h/8, w/8)`` tensor).
            progress: called as ``progress(step, total)`` after every denoising step.

        Returns:
            ``n_images`` PIL images (or latents for ``output_type="latent"``).
        """
        # 1. Check inputs
        params = self._check_params(params)
        check_int("n_images", n_images, minimum=1)
        prompts = self._per_image("prompt", prompt, n_images)
        negatives = self._with_prefix(self._per_image("negative_prompt", negative_prompt, n_images))
        seeds = self._seeds(seed, n_images)
        height, width = self._size(height, width)

        # 2. Feedback images: the most recent max_references of each polarity
        liked_images, disliked_images = self._feedback_images(liked, disliked, params)

        # 3. Prompt dropout, seeded per image
        prompts = self._dropout(prompts, seeds, params)

        # 4. Seeds -> generators (CPU generators: the same images on every device)
        generator = cpu_generators(seed if isinstance(seed, int) else seeds)
        self.last_seeds = seeds

        call = self._call(params, generator, height, width, output_type)
        if len(set(prompts)) == 1 and len(set(negatives)) == 1:
            call.update(prompt=prompts[0], negative_prompt=negatives[0], num_images_per_prompt=n_images)
        else:
            call.update(prompt=prompts, negative_prompt=negatives)
        if progress is not None:
            total = params.steps

            def on_step_end(pipe, i, t, kwargs):
                progress(i + 1, total)
                return kwargs

            call["callback_on_step_end"] = on_step_end

        # 5. Denoise: plain pipeline when there is nothing to feed back
        has_feedback = self._has_feedback(liked_images, disliked_images, params)
        if not has_feedback and progress is None and self.plain_cache.max_entries:
            key = self._plain_key(call, prompts, negatives, seed)
            cached = self.plain_cache.get(key)
            if cached is None:
                cached = self._denoise(call, [(n_images, [], [])], params, prompts, negatives, seed)
                self.plain_cache.put(key, cached)
            return copy_images(cached)
        pos = self._references(liked_images, height, width) if has_feedback else []
        neg = self._references(disliked_images, height, width) if has_feedback else []
        return self._denoise(call, [(n_images, pos, neg)], params, prompts, negatives, seed)

    @torch.no_grad()
    def generate_many(
        self,
        requests: Sequence[GenerationRequest],
        params: FabricParams | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        output_type: str = "pil",
    ) -> list[list[Image.Image] | torch.Tensor]:
        """Several prompts, each with its own liked/disliked images, in one pipeline call.

        An opt-in speed option: the prompts share every U-Net call, and each prompt's rows attend
        only to its own references. Each request's images are those of ``generate(r.prompt,
        r.negative_prompt, r.liked, r.disliked, params, len(r.seeds), list(r.seeds), height,
        width)`` up to the float rounding of the larger batch (exactly, for one request). The
        result of a call depends on its requests only: the plain-call cache serves a call whose
        requests all lack feedback only when it holds all of them from the same call, and
        otherwise the whole call runs. On out-of-memory the batch is split in two and retried.

        Args:
            requests: what to generate, one :class:`GenerationRequest` per prompt.
            params: the FABRIC parameters shared by every request (default: the paper's).
            height, width: image size, multiples of 8; the model's default when omitted.
            output_type: ``"pil"`` or ``"latent"``.

        Returns:
            per request, its images (or a ``(n, 4, h/8, w/8)`` latent tensor).
        """
        params = self._check_params(params)
        requests = list(requests)
        if not requests or not all(isinstance(r, GenerationRequest) for r in requests):
            raise InvalidParameterError("requests must be a non-empty sequence of GenerationRequest")
        if len(requests) == 1:
            (r,) = requests
            images = self.generate(
                r.prompt, r.negative_prompt, r.liked, r.disliked, params, len(r.seeds), list(r.seeds), height, width,
                output_type=output_type,
            )  # fmt: skip
            return [images]
        height, width = self._size(height, width)
        call = self._call(params, None, height, width, output_type)

        pending: list[_Pending] = []
        for r in requests:
            seeds = list(r.seeds)
            prompts = self._dropout([r.prompt] * len(seeds), seeds, params)
            negatives = self._with_prefix([r.negative_prompt] * len(seeds))
            liked, disliked = self._feedback_images(r.liked, r.disliked, params)
            if not self._has_feedback(liked, disliked, params):
                liked, disliked = [], []
            pending.append(_Pending(prompts, negatives, seeds, liked, disliked))
        self.last_seeds = [s for t in pending for s in t.seeds]

        # a call without any feedback may come whole from the plain-call cache
        plain = not any(t.liked or t.disliked for t in pending) and self.plain_cache.max_entries > 0
        key = ("many", *(self._plain_key(call, t.prompts, t.negatives, t.seeds) for t in pending)) if plain else None
        cached = self.plain_cache.get(key) if key is not None else None
        if cached is not None:
            return [copy_images(images) for images in cached]

        prompts = [p for t in pending for p in t.prompts]
        negatives = [n for t in pending for n in t.negatives]
        seeds = [s for t in pending for s in t.seeds]
        groups = [
            (len(t.seeds), self._references(t.liked, height, width), self._references(t.disliked, height, width))
            for t in pending
        ]
        call.update(prompt=prompts, negative_prompt=negatives, generator=cpu_generators(seeds))
        images = self._denoise(call, groups, params, prompts, negatives, seeds)
        outputs, start = [], 0
        for t in pending:
            outputs.append(images[start : start + len(t.seeds)])
            start += len(t.seeds)
        if key is not None:
            self.plain_cache.put(key, outputs)
        return outputs

    # ---- input handling --------------------------------------------------------------------
    @staticmethod
    def _check_params(params: FabricParams | None) -> FabricParams:
        params = FabricParams() if params is None else params
        if not isinstance(params, FabricParams):
            raise InvalidParameterError(f"params must be FabricParams, got {type(params).__name__}")
        return params

    def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
        default_h, default_w = self.default_size
        height, width = height or default_h, width or default_w
        factor = self.pipeline.vae_scale_factor
        if height % factor or width % factor:
            raise InvalidParameterError(f"height and width must be multiples of {factor}, got {height}x{width}")
        return height, width

    def _with_prefix(self, negatives: list[str]) -> list[str]:
        if not self.negative_prefix:
            return negatives
        return [n if n.startswith(self.negative_prefix) else self.negative_prefix + n for n in negatives]

    @staticmethod
    def _dropout(prompts: list[str], seeds: list[int], params: FabricParams) -> list[str]:
        return prompts_after_dropout(prompts, seeds, params.prompt_dropout)

    @staticmethod
    def _feedback_images(liked, disliked, params: FabricParams) -> tuple[list[_Loaded], list[_Loaded]]:
        liked_images = [_Loaded(*load_reference(item)) for item in liked]
        disliked_images = [_Loaded(*load_reference(item)) for item in disliked]
        if params.max_references is not None:
            liked_images = liked_images[-params.max_references :]
            disliked_images = disliked_images[-params.max_references :]
        return liked_images, disliked_images

    @staticmethod
    def _has_feedback(liked: list, disliked: list, params: FabricParams) -> bool:
        return bool(liked or disliked) and params.max_weight > 0

    @staticmethod
    def _call(params: FabricParams, generator, height: int, width: int, output_type: str) -> dict:
        return dict(
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            generator=generator,
            height=height,
            width=width,
            output_type=output_type,
        )

    def _plain_key(self, call: dict, prompts: list[str], negatives: list[str], seed) -> tuple:
        """Everything a call without feedback depends on, given fixed weights: the prompts after
        dropout (so trials whose dropout dropped nothing share it), seeds, steps, guidance,
        size, output type and the scheduler's class and config."""
        scheduler = self.pipeline.scheduler
        return (
            tuple(prompts),
            tuple(negatives),
            seed if isinstance(seed, int) else tuple(seed),
            call["num_inference_steps"],
            call["guidance_scale"],
            call["height"],
            call["width"],
            call["output_type"],
            type(scheduler).__name__,
            repr(sorted(dict(scheduler.config).items())),
        )

    def _denoise(
        self,
        call: dict,
        groups: list[Group],
        params: FabricParams,
        prompts,
        negatives,
        seed,
        *,
        may_drop_cache: bool = True,
    ):
        """Run the pipeline; on out-of-memory, free the token cache and retry, then retry in halves.

        ``groups`` are ``(images, liked references, disliked references)`` in batch order. Cached
        reference tokens are only a speed-up, so their memory goes to the call first (once); the
        images are exactly those of a call with enough memory. Then, with per-image seeds, the
        batch is split in two halves, which draw the same initial latents as the full batch and
        so give its images up to the float rounding of the smaller batch (logged); with one seed
        for the whole batch the latents depend on the batch size, so the error is raised.
        """
        n = len(prompts)
        try:
            if not any(pos or neg for _, pos, neg in groups):
                return self.pipeline(**call).images
            reference_pass = ReferencePass(
                self.pipeline,
                groups,
                params,
                cache=self.state_cache,
                bias_mode=self.bias_mode,
                fuse=self.fuse_reference_pass,
            )
            with reference_pass.attached():
                images = self.pipeline(**call).images
            self._warn_if_cache_full(reference_pass.rejected)
            return images
        except torch.OutOfMemoryError:
            cached = self.state_cache.nbytes if may_drop_cache else 0
            if not cached and (isinstance(seed, int) or n == 1):
                raise
        self.state_cache.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if cached:
            logger.warning(
                "out of memory with %d images per batch; retrying without the %.0f MB of cached reference tokens",
                n,
                cached / 2**20,
            )
            # fresh generators: the failed attempt already drew the initial latents from the old ones
            retry = dict(call, generator=cpu_generators(seed))
            return self._denoise(retry, groups, params, prompts, negatives, seed, may_drop_cache=False)
        half = (n + 1) // 2
        logger.warning("out of memory with %d images per batch; retrying in batches of %d", n, half)
        outputs = []
        for rows, part in zip((slice(0, half), slice(half, n)), _split_groups(groups, half)):
            sub = {k: v for k, v in call.items() if k not in ("prompt", "negative_prompt", "num_images_per_prompt")}
            sub.update(
                prompt=prompts[rows], negative_prompt=negatives[rows], generator=cpu_generators(list(seed)[rows])
            )
            outputs.append(self._denoise(sub, part, params, prompts[rows], negatives[rows], list(seed)[rows]))
        if isinstance(outputs[0], torch.Tensor):
            return torch.cat(outputs)
        return outputs[0] + outputs[1]

    @staticmethod
    def _per_image(name: str, value: str | Sequence[str], n: int) -> list[str]:
        if isinstance(value, str):
            return [value] * n
        values = list(value)
        if len(values) != n or not all(isinstance(v, str) for v in values):
            raise InvalidParameterError(f"{name} must be a string or a list of {n} strings")
        return values

    @staticmethod
    def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
        if isinstance(seed, bool):
            raise InvalidParameterError(f"seed must be an integer, got {seed!r}")
        if isinstance(seed, int):
            return [seed] * n
        seeds = list(seed)
        if len(seeds) != n or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise InvalidParameterError(f"seed must be an integer or a list of {n} integers")
        return seeds

    # ---- references ------------------------------------------------------------------------
    def _references(self, images: list[_Loaded], height: int, width: int) -> list[Reference]:
        """Encode images to clean latents with the VAE, cached per (image, size).

        Each image is encoded alone, so its latent does not depend on which other images are
        new in this call (BLAS rounding depends on the batch size).
        """
        refs = []
        for image, noise_key in images:
            key = image_key(image)
            cache_key = (key, height, width)
            latent = self._latent_cache.get(cache_key)
            if latent is None:
                latent = self._latent_cache[cache_key] = self._encode(image, height, width)
                if len(self._latent_cache) > self._latent_cache_size:
                    self._latent_cache.popitem(last=False)
            self._latent_cache.move_to_end(cache_key)
            refs.append(Reference(key, noise_key or key, latent))
        return refs

    def _encode(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """``(C, h, w)`` latent of one image: the VAE posterior mean times its scaling factor."""
        vae = self.pipeline.vae
        pixels = self.pipeline.image_processor.preprocess([image], height=height, width=width)
        # SDXL's VAE overflows in fp16 (force_upcast): encode in float32 as the pipeline decodes
        vae_dtype = vae.dtype
        upcast = vae_dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            pixels = pixels.to(device=vae.device, dtype=vae.dtype)
            # the posterior mean, not a sample: a reference must encode the same way every round
            latent = vae.encode(pixels).latent_dist.mean[0] * vae.config.scaling_factor
        finally:
            if upcast:
                vae.to(dtype=vae_dtype)
        return latent.to(self.dtype)

    def _warn_if_cache_full(self, rejected: int) -> None:
        """Once per generator: this call's references did not fit the token cache, so a later
        round (or trial) with the same references runs them through the U-Net again."""
        cache = self.state_cache
        if rejected == 0 or self._warned_cache_full:
            return
        self._warned_cache_full = True
        logger.warning(
            "the reference-token cache (%.2f GiB) could not keep %d of this call's reference states (%.3g MB per "
            "reference and step); later rounds will recompute them. Raise FabricGenerator(cache_bytes=...) if the "
            "device has memory to spare.",
            cache.max_bytes / 2**30,
            rejected,
            cache.last_entry_bytes / 2**20,
            extra={"option": "cache_bytes"},
        )
