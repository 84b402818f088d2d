"""FABRIC's reference pass: what runs around each U-Net call of a pipeline call with feedback.

:class:`ReferencePass` is attached to a pipeline for one call (:meth:`ReferencePass.attached`).
It installs :class:`~fabric.attention.FabricAttnProcessor` on every ``attn1`` layer and two
hooks on the U-Net, all undone in ``finally``:

* before each U-Net call, it finds the step (and its weights), takes each reference's tokens at
  this timestep from the token cache, and records the missing ones: by default each in a U-Net
  call of its own on the reference noised to the step's level (empty prompt, ``"record"``
  mode), so the main call and every reference see the same batch shapes whatever the cache
  holds and the images are exactly reproducible; or, with ``fuse`` (an opt-in speed option,
  equal up to float rounding), as extra rows appended to the main call, whose tokens the
  processors take in the same layer (:meth:`ReferencePass.resolve`);
* after each U-Net call, it stores the fused rows' tokens in the cache and removes their rows
  from the output.

The processors then attend, per group of batch rows (one prompt each), over that group's liked
(conditional half) or disliked (unconditional half) reference tokens with the step's per-layer
weights. Everything the processors read lives in one :class:`~fabric.attention.FabricState`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from fabric.attention import BiasMode, FabricAttnProcessor, FabricState, LayerReferences
from fabric.caches import ReferenceStateCache
from fabric.params import FabricParams
from fabric.schedule import layer_weights, step_weights
from fabric.seeds import stable_seed

__all__ = ["Reference", "Group", "ReferencePass", "empty_prompt", "alpha_bar", "can_fuse"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """One liked or disliked image, encoded.

    Attributes:
        key: content hash of the image (:func:`fabric.images.image_key`).
        noise_key: what seeds the reference's noise: the image's identity in its session
            (:class:`fabric.images.ReferenceImage`), else its content hash.
        latent: ``(C, h, w)`` clean latent, scaled by the VAE's scaling factor.
    """

    key: str
    noise_key: str
    latent: torch.Tensor


# (images in the group, liked references, disliked references): one prompt's rows of a batch
Group = tuple[int, list[Reference], list[Reference]]

# U-Net inputs the fused reference pass cannot extend with reference rows
_UNFUSABLE = (
    "timestep_cond", "class_labels", "attention_mask", "encoder_attention_mask", "cross_attention_kwargs",
    "down_block_additional_residuals", "mid_block_additional_residual", "down_intrablock_additional_residuals",
)  # fmt: skip


def empty_prompt(pipeline) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(1, 77, D)`` embedding of the empty prompt, and its pooled embedding for SDXL."""
    out = pipeline.encode_prompt(
        "", device=pipeline.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    if len(out) == 4:  # SDXL: (embeds, negative, pooled, negative pooled)
        return out[0], out[2]
    return out[0], None


def alpha_bar(scheduler, t: torch.Tensor | float, index: int | None = None) -> float:
    """``abar`` of the model input at timestep ``t``.

    Schedulers with a ``sigmas`` table (Euler, DPM++, Heun, ... also with Karras sigmas) are
    read at the step's ``index``, exactly; the others interpolate sigma linearly in ``t``,
    which is exact at the integer timesteps they use.
    """
    table = getattr(scheduler, "sigmas", None)
    if index is not None and isinstance(table, torch.Tensor) and index < len(table) - 1:
        sigma = float(table[index])
        return 1.0 / (sigma**2 + 1.0)
    ac = scheduler.alphas_cumprod.double()
    sigmas = ((1 - ac) / ac).sqrt()
    t = float(t)
    lo = min(max(int(t), 0), len(ac) - 1)
    hi = min(lo + 1, len(ac) - 1)
    frac = t - lo
    sigma = (1 - frac) * sigmas[lo] + frac * sigmas[hi]
    return float(1.0 / (sigma**2 + 1.0))


def can_fuse(args: tuple, kwargs: dict, *, sdxl: bool) -> bool:
    """Whether a U-Net call with these inputs can take reference rows (the fused pass): the
    plain ``(sample, t)`` call with text embeddings and, for SDXL, the text-time conditioning;
    ControlNet residuals, masks, ``timestep_cond`` and the like fall back to the separate pass."""
    if len(args) != 2 or kwargs.get("encoder_hidden_states") is None:
        return False
    for name in _UNFUSABLE:
        value = kwargs.get(name)
        if value is not None and not (isinstance(value, (dict, list, tuple)) and len(value) == 0):
            return False
    added = kwargs.get("added_cond_kwargs") or {}
    return set(added) == ({"text_embeds", "time_ids"} if sdxl else set())


@dataclass
class _Step:
    """What one U-Net call of the main pass uses: per group, the references active at this step,
    the per-layer weights, and (fused pass) where each reference's tokens come from."""

    use: list[tuple[list[Reference], list[Reference]]]  # per group: (liked, disliked) in use
    pos_w: Mapping[str, float]
    neg_w: Mapping[str, float]
    cached: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # image key -> layer tokens
    fresh: dict[str, int] = field(default_factory=dict)  # image key -> row among the fused rows
    fresh_keys: list[tuple] = field(default_factory=list)  # token-cache keys of the fused rows


class ReferencePass:
    """FABRIC around one pipeline call (see the module docstring).

    Args:
        pipeline: the diffusers pipeline about to run.
        groups: ``(images, liked, disliked)`` per prompt, in batch order.
        params: the FABRIC parameters of the call.
        cache: the generator's reference-token cache (``max_bytes == 0``: disabled).
        bias_mode: how the log-weight bias reaches SDPA (see :func:`fabric.attention.weighted_attention`).
        fuse: run references missing from the cache as extra rows of the main U-Net call.
    """

    def __init__(
        self,
        pipeline,
        groups: list[Group],
        params: FabricParams,
        *,
        cache: ReferenceStateCache,
        bias_mode: BiasMode = "mask",
        fuse: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.unet = pipeline.unet
        self.groups = groups
        self.params = params
        self.cache = cache
        self.fuse = fuse
        guidance = params.guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        self.state = FabricState(groups=tuple(n for n, _, _ in groups), guidance=guidance, bias_mode=bias_mode)
        self.layer_names = [
            name[: -len(".processor")] for name in self.unet.attn_processors if name.endswith("attn1.processor")
        ]
        self.empty, self.pooled = empty_prompt(pipeline)
        self.rejected = 0  # token-cache entries this call could not store
        self._step: _Step | None = None

    # ---- attaching -----------------------------------------------------------------------
    @contextlib.contextmanager
    def attached(self) -> Iterator[FabricState]:
        """Install the processors and hooks for the duration of the ``with`` block."""
        unet = self.unet
        previous = dict(unet.attn_processors)
        processors = {
            name: FabricAttnProcessor(name[: -len(".processor")], self.state, proc)
            if name.endswith("attn1.processor")
            else proc
            for name, proc in previous.items()
        }
        unet.set_attn_processor(processors)
        pre = unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        post = unet.register_forward_hook(self._after_unet, with_kwargs=True)
        rejected = self.cache.rejected
        try:
            with self.cache.hold(r.key for _, pos, neg in self.groups for r in pos + neg):
                yield self.state
        finally:
            pre.remove()
            post.remove()
            unet.set_attn_processor(previous)
            state = self.state
            state.fresh, state.resolve, state.layers, state.recorded, state.mode = 0, None, {}, {}, "off"
            self._step = None
            self.rejected = self.cache.rejected - rejected

    # ---- hooks ---------------------------------------------------------------------------
    def _before_unet(self, module, args: tuple, kwargs: dict):
        state = self.state
        if state.mode == "record":  # the separate reference pass itself
            return None
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        index, step = self._step_index(t)
        w = step_weights(step, self.params.steps, self.params)
        use = [(pos if w.pos > 0 else [], neg if (w.neg > 0 and state.guidance) else []) for _, pos, neg in self.groups]
        needed = list({r.key: r for pos, neg in use for r in pos + neg}.values())  # each image once
        state.fresh, state.resolve = 0, None
        if not needed:
            state.mode, state.layers = "off", {}
            return None
        n_down = len(self.unet.down_blocks)
        self._step = step_state = _Step(
            use,
            layer_weights(self.layer_names, w.pos, self.params.pos_bottleneck_scale, n_down),
            layer_weights(self.layer_names, w.neg, self.params.neg_bottleneck_scale, n_down),
        )
        time_ids = None
        if self.pooled is not None:
            added = kwargs.get("added_cond_kwargs") or {}
            time_ids = added["time_ids"][-1:]  # the conditional half's (size, crop, target) ids

        keys, found = self._cached(needed, t)
        missing = [i for i, f in enumerate(found) if f is None]
        if missing and self.fuse and can_fuse(args, kwargs, sdxl=self.pooled is not None):
            # the new references ride along as extra rows of this very U-Net call
            step_state.fresh = {needed[i].key: j for j, i in enumerate(missing)}
            step_state.cached = {r.key: f for r, f in zip(needed, found) if f is not None}
            step_state.fresh_keys = [keys[i] for i in missing]
            state.mode, state.layers, state.recorded = "inject", {}, {}
            state.fresh, state.resolve = len(missing), self.resolve
            z_t = self._noised([needed[i] for i in missing], t, index)
            return self._with_reference_rows(args, kwargs, z_t, time_ids)
        recorded = dict(zip((r.key for r in needed), self._record(needed, keys, found, t, index, time_ids)))

        def tokens_at(name: str) -> Callable[[Reference], torch.Tensor]:
            return lambda r: recorded[r.key][name]

        state.layers = {name: self._layer_references(name, tokens_at(name)) for name in self.layer_names}
        state.mode = "inject"
        return None

    def _after_unet(self, module, args: tuple, kwargs: dict, output):
        state = self.state
        if state.mode != "inject" or not state.fresh:
            return None
        n = state.fresh
        assert self._step is not None
        self._store(self._step.fresh_keys, state.recorded)
        state.fresh, state.resolve, state.recorded = 0, None, {}
        if isinstance(output, tuple):
            return (output[0][:-n], *output[1:])
        output.sample = output.sample[:-n]
        return output

    def resolve(self, name: str, new_tokens: torch.Tensor) -> tuple[LayerReferences, ...]:
        """Layer ``name``'s per-group references during a fused call, given the ``(fresh, M, C)``
        tokens the fused rows just produced at that layer (the processor calls this mid-forward)."""
        step = self._step
        assert step is not None

        def tokens_of(r: Reference) -> torch.Tensor:
            return step.cached[r.key][name] if r.key in step.cached else new_tokens[step.fresh[r.key]]

        return self._layer_references(name, tokens_of)

    # ---- per-step bookkeeping -------------------------------------------------------------
    def _step_index(self, t) -> tuple[int, int]:
        """``(index into scheduler.timesteps, FABRIC step in 0..steps-1)`` of timestep ``t``."""
        timesteps = self.pipeline.scheduler.timesteps.to(torch.float64).cpu()
        index = int((timesteps - float(t)).abs().argmin())
        # higher-order schedulers (Heun, PNDM, DPM++ SDE) repeat timesteps: number the distinct ones
        distinct = list(dict.fromkeys(round(float(x), 4) for x in timesteps))
        step = distinct.index(round(float(timesteps[index]), 4)) * self.params.steps // max(len(distinct), 1)
        return index, step

    def _layer_references(
        self, name: str, tokens_of: Callable[[Reference], torch.Tensor]
    ) -> tuple[LayerReferences, ...]:
        step = self._step
        assert step is not None
        pos_w, neg_w = step.pos_w[name], step.neg_w[name]

        def tokens(refs: list[Reference], weight: float) -> torch.Tensor | None:
            return torch.cat([tokens_of(r) for r in refs]) if refs and weight > 0 else None  # (R*M, C)

        return tuple(LayerReferences(tokens(pos, pos_w), tokens(neg, neg_w), pos_w, neg_w) for pos, neg in step.use)

    def _cached(self, refs: list[Reference], t) -> tuple[list[tuple], list[dict[str, torch.Tensor] | None]]:
        """Token-cache keys of ``refs`` at timestep ``t``, and the cached tokens (``None``: missing).

        The key holds everything the tokens depend on besides the model: the image, its noise,
        the step, the latent size, and how they were computed (one reference per U-Net call, or
        fused rows, which agree only up to float rounding).
        """
        t_key = round(float(t), 4)
        how = "fused" if self.fuse else "alone"
        keys = [(r.key, r.noise_key, t_key, *r.latent.shape[-2:], how) for r in refs]
        return keys, [self.cache.get(k) if self.cache.max_bytes else None for k in keys]

    def _noised(self, refs: list[Reference], t, index: int) -> torch.Tensor:
        """``(R, C, h, w)`` reference latents noised to timestep ``t``; the noise is seeded per
        (reference identity, timestep), so a reference gets the same noise in every round."""
        t_key = round(float(t), 4)
        a = alpha_bar(self.pipeline.scheduler, t, index)
        z0 = torch.stack([r.latent for r in refs])
        generators = [torch.Generator("cpu").manual_seed(stable_seed("ref-noise", r.noise_key, t_key)) for r in refs]
        eps = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in generators]).to(z0.device, z0.dtype)
        return a**0.5 * z0 + (1 - a) ** 0.5 * eps

    def _store(self, keys: list[tuple], recorded: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Split a reference pass's ``(R, M, C)`` tokens per reference, and cache them."""
        found = []
        for j, key in enumerate(keys):
            tokens = {name: batch[j] for name, batch in recorded.items()}  # (M, C) per layer
            if self.cache.max_bytes:
                self.cache.put(key, tokens)
            found.append(tokens)
        return found

    def _record(
        self, refs: list[Reference], keys: list[tuple], found: list, t, index: int, time_ids
    ) -> list[dict[str, torch.Tensor]]:
        """Tokens of each reference at every ``attn1`` layer, at timestep ``t``.

        ``found`` holds the cached ones (:meth:`_cached`); each of the others runs through the
        U-Net alone, a batch of one: a reference's tokens are then computed the same way whichever
        other references are new in this call, so they equal the cached tokens of an earlier call
        exactly (BLAS kernels round differently for different batch sizes).
        """
        found = list(found)
        added = None
        if self.pooled is not None:
            added = {"text_embeds": self.pooled, "time_ids": time_ids}
        state = self.state
        for i in [i for i, f in enumerate(found) if f is None]:
            z_t = self._noised([refs[i]], t, index)  # (1, C, h, w)
            state.mode, state.recorded = "record", {}
            try:
                self.unet(z_t, t, encoder_hidden_states=self.empty, added_cond_kwargs=added, return_dict=False)
            finally:
                state.mode = "off"
            recorded, state.recorded = state.recorded, {}
            found[i] = self._store([keys[i]], recorded)[0]
        return found

    # ---- the fused pass ------------------------------------------------------------------
    def _with_reference_rows(self, args: tuple, kwargs: dict, z_t: torch.Tensor, time_ids) -> tuple[tuple, dict]:
        """The U-Net inputs with ``z_t``'s references appended as rows (empty prompt, same timestep)."""
        sample, t = args
        n = z_t.shape[0]
        if isinstance(t, torch.Tensor) and t.ndim == 1 and t.numel() == sample.shape[0] > 1:
            t = torch.cat([t, t[:1].expand(n)])
        kwargs = dict(kwargs)
        hidden = kwargs["encoder_hidden_states"]
        kwargs["encoder_hidden_states"] = torch.cat([hidden, self.empty.to(hidden.dtype).expand(n, -1, -1)])
        if self.pooled is not None:
            added = kwargs["added_cond_kwargs"]
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.cat(
                    [added["text_embeds"], self.pooled.to(added["text_embeds"].dtype).expand(n, -1)]
                ),
                "time_ids": torch.cat([added["time_ids"], time_ids.expand(n, -1)]),
            }
        return (torch.cat([sample, z_t.to(sample.dtype)]), t), kwargs
