"""FABRIC's self-attention: reference recording, weighted extended attention, the processor.

FABRIC conditions a generation on reference images by letting every U-Net self-attention
layer (``attn1``) attend over its own tokens *and* the tokens that the same layer saw when the
U-Net ran on the (noised) reference images. Reference tokens are reweighted: their attention
probabilities are multiplied by ``w`` and renormalised. Because

    softmax(s)_j * w_j / sum_k softmax(s)_k * w_k  ==  softmax(s + log w)_j,

the reweighting is a per-key additive bias ``log w`` (0 for the image's own tokens), so it runs
inside fused ``scaled_dot_product_attention``. :func:`weighted_attention_reference` is the
explicit formula; tests check that the fused paths equal it.

The processor is a small callable swapped in with ``unet.set_attn_processor`` on ``attn1``
layers only. All per-call state lives in a :class:`FabricState` keyed by layer name, never in
module order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "FabricState",
    "FabricAttnProcessor",
    "LayerReferences",
    "log_weight_bias",
    "weighted_attention",
    "weighted_attention_reference",
]

BiasMode = Literal["mask", "fold"]


def log_weight_bias(weight: float, dtype: torch.dtype) -> float:
    """The logit bias equivalent to multiplying attention probabilities by ``weight``.

    ``weight == 0`` gives a large negative finite bias rather than ``-inf``, so a row can never
    become all ``-inf`` (NaN) and fp16 stays finite.
    """
    if weight > 0:
        return math.log(weight)
    return torch.finfo(dtype).min / 4


def weighted_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_weights: torch.Tensor
) -> torch.Tensor:
    """Explicit FABRIC attention: softmax probabilities times weights, renormalised.

    Args:
        q: ``(B, h, N, d)`` queries.
        k: ``(B, h, L, d)`` keys (own tokens then reference tokens).
        v: ``(B, h, L, d)`` values.
        key_weights: ``(L,)`` non-negative weight per key.

    Returns:
        ``(B, h, N, d)`` attention output.
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, N, L)
    probs = scores.softmax(dim=-1) * key_weights
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs @ v


def weighted_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor,
    mode: BiasMode = "mask",
) -> torch.Tensor:
    """Fused FABRIC attention with a per-key additive logit bias.

    ``mode="mask"`` passes the bias as a float mask broadcast from ``(1, 1, 1, L)``: no
    ``N x L`` mask is materialised. ``mode="fold"`` folds the bias into extra head dimensions
    (the query gets a 1, the key gets ``bias * sqrt(d)``, values get zeros, the scale stays
    ``1/sqrt(d)``), so SDPA runs mask-free and can pick the flash kernel on CUDA. Head dims are
    padded to a multiple of 8 for that kernel.

    Args:
        q: ``(B, h, N, d)`` queries.
        k: ``(B, h, L, d)`` keys.
        v: ``(B, h, L, d)`` values.
        key_bias: ``(L,)`` additive logit bias per key (``log w``).
        mode: ``"mask"`` or ``"fold"``.

    Returns:
        ``(B, h, N, d)`` attention output.
    """
    d = q.shape[-1]
    if mode == "mask":
        mask = key_bias.to(q.dtype).view(1, 1, 1, -1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if mode != "fold":
        raise ValueError(f"unknown bias mode {mode!r}; use 'mask' or 'fold'")
    pad = 8 - (d % 8) if d % 8 else 8  # at least one extra dim carries the bias
    B, h, N, _ = q.shape
    L = k.shape[-2]
    q_extra = q.new_zeros(B, h, N, pad)
    q_extra[..., 0] = 1.0
    k_extra = k.new_zeros(B, h, L, pad)
    k_extra[..., 0] = (key_bias * math.sqrt(d)).to(k.dtype)
    out = F.scaled_dot_product_attention(
        torch.cat([q, q_extra], dim=-1),
        torch.cat([k, k_extra], dim=-1),
        torch.cat([v, v.new_zeros(B, h, L, pad)], dim=-1),
        scale=1.0 / math.sqrt(d),
    )
    return out[..., :d]


@dataclass
class LayerReferences:
    """Recorded reference tokens of one layer for one denoising step.

    Attributes:
        pos: ``(P*M, C)`` liked-reference tokens (M tokens per reference), or ``None``.
        neg: ``(Q*M, C)`` disliked-reference tokens, or ``None``.
        pos_weight: weight of the liked tokens at this layer.
        neg_weight: weight of the disliked tokens at this layer.
    """

    pos: torch.Tensor | None
    neg: torch.Tensor | None
    pos_weight: float
    neg_weight: float


@dataclass
class FabricState:
    """What the processors of one U-Net share during one call, keyed by layer name.

    Attributes:
        mode: ``"off"`` (plain attention), ``"record"`` (store each layer's input, then plain
            attention) or ``"inject"`` (attend over the references in ``layers``).
        recorded: layer name -> ``(R, M, C)`` inputs seen during a ``"record"`` pass.
        layers: layer name -> the references to inject during an ``"inject"`` pass, one entry
            per group (``None``: that group gets plain attention).
        groups: images per group, in batch order: several prompts, each with its own feedback,
            share one U-Net call. Empty means one group, the whole batch.
        fresh: trailing batch rows that are references recorded in this very call (the fused
            reference pass): they run plain attention, their layer inputs go to ``recorded``,
            and ``resolve(name, tokens)`` turns those ``(fresh, M, C)`` tokens into the layer's
            per-group references (instead of ``layers``).
        resolve: see ``fresh``.
        guidance: whether the main batch is ``[uncond; cond]`` (classifier-free guidance); the
            unconditional half attends to disliked references, the conditional half to liked ones.
        bias_mode: how the log-weight bias reaches SDPA (see :func:`weighted_attention`).
    """

    mode: Literal["off", "record", "inject"] = "off"
    recorded: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, tuple[LayerReferences | None, ...]] = field(default_factory=dict)
    groups: tuple[int, ...] = ()
    fresh: int = 0
    resolve: Callable[[str, torch.Tensor], tuple[LayerReferences | None, ...]] | None = None
    guidance: bool = True
    bias_mode: BiasMode = "mask"


def _any_references(groups: tuple[LayerReferences | None, ...]) -> bool:
    return any(r is not None and (r.pos is not None or r.neg is not None) for r in groups)


class FabricAttnProcessor:
    """Attention processor for one ``attn1`` layer; delegates to the layer's previous processor
    whenever FABRIC has nothing to add, so "no feedback" is the plain model bit for bit."""

    def __init__(self, name: str, state: FabricState, base_processor) -> None:
        self.name = name
        self.state = state
        self.base = base_processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        state = self.state
        if state.mode == "record":
            state.recorded[self.name] = hidden_states
        if state.mode == "inject" and state.fresh and encoder_hidden_states is None:
            return self._fused(attn, hidden_states, attention_mask, temb, **kwargs)
        groups = state.layers.get(self.name) if state.mode == "inject" else None
        if not groups or encoder_hidden_states is not None or not _any_references(groups):
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        self._check_layer(attn, hidden_states)
        return self._extended_attention(attn, hidden_states, attention_mask, groups)

    def _check_layer(self, attn, hidden_states: torch.Tensor) -> None:
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise NotImplementedError(f"FABRIC supports transformer self-attention layers only ({self.name})")

    def _fused(self, attn, hidden_states: torch.Tensor, attention_mask, temb, **kwargs) -> torch.Tensor:
        """The main rows attend over their references; the trailing ``fresh`` reference rows run
        plain attention and supply their own tokens, as a separate reference pass would."""
        self._check_layer(attn, hidden_states)
        state = self.state
        main, fresh = hidden_states[: -state.fresh], hidden_states[-state.fresh :]
        tokens = fresh.clone()  # kept by the token cache: must not hold the whole batch alive
        state.recorded[self.name] = tokens
        assert state.resolve is not None  # set with ``fresh`` by the reference pass
        groups = state.resolve(self.name, tokens)
        ref_out = self.base(attn, fresh, None, attention_mask, temb, **kwargs)
        if not _any_references(groups):
            main_out = self.base(attn, main, None, attention_mask, temb, **kwargs)
        else:
            main_out = self._extended_attention(attn, main, attention_mask, groups)
        return torch.cat([main_out, ref_out])

    def _segments(
        self, batch: int, groups: tuple[LayerReferences | None, ...]
    ) -> list[tuple[slice, torch.Tensor | None, float]]:
        """``(rows, reference tokens, weight)`` per run of batch rows that share references.

        With guidance the batch is ``[uncond (B); cond (B)]`` and group ``g`` owns the same rows in
        both halves: its unconditional rows attend to its disliked references, its conditional
        rows to its liked ones. Adjacent rows without references merge into one plain segment.
        """
        half = batch // 2 if self.state.guidance else batch
        sizes = self.state.groups or (half,)
        if len(sizes) != len(groups) or sum(sizes) != half:
            raise RuntimeError(f"FABRIC state of {self.name}: groups {sizes} do not cover a batch of {batch}")
        halves = ["neg", "pos"] if self.state.guidance else ["pos"]  # [uncond; cond] or cond only
        segments: list[tuple[slice, torch.Tensor | None, float]] = []
        start = 0
        for polarity in halves:
            for size, refs in zip(sizes, groups):
                tokens = None if refs is None else getattr(refs, polarity)
                weight = 0.0 if refs is None else getattr(refs, f"{polarity}_weight")
                rows = slice(start, start + size)
                start += size
                if tokens is None and segments and segments[-1][1] is None:  # rows are contiguous
                    segments[-1] = (slice(segments[-1][0].start, rows.stop), None, 0.0)
                else:
                    segments.append((rows, tokens, weight))
        return segments

    def _extended_attention(
        self, attn, x: torch.Tensor, attention_mask, groups: tuple[LayerReferences | None, ...]
    ) -> torch.Tensor:
        # x: (batch, N, C); with guidance the batch is [uncond (B); cond (B)]
        if attention_mask is not None:
            raise NotImplementedError("FABRIC does not support self-attention masks")
        heads = attn.heads
        q = attn.to_q(x)
        k = attn.to_k(x)
        v = attn.to_v(x)
        inner = k.shape[-1]
        d = inner // heads
        batch, n_tokens, _ = x.shape

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # (b, L, inner) -> (b, h, L, d)
            return t.view(t.shape[0], -1, heads, d).transpose(1, 2)

        h = q.new_empty(batch, n_tokens, inner)
        for rows, ref_tokens, weight in self._segments(batch, groups):
            qh, kh, vh = heads_first(q[rows]), heads_first(k[rows]), heads_first(v[rows])
            if attn.norm_q is not None:
                qh = attn.norm_q(qh)
            if attn.norm_k is not None:
                kh = attn.norm_k(kh)
            if ref_tokens is None:
                out = F.scaled_dot_product_attention(qh, kh, vh)
            else:
                b = qh.shape[0]
                ref = ref_tokens.to(x.dtype).unsqueeze(0)  # (1, R*M, C): shared by the segment's images
                kr = heads_first(attn.to_k(ref))  # (1, h, R*M, d)
                vr = heads_first(attn.to_v(ref))
                if attn.norm_k is not None:
                    kr = attn.norm_k(kr)
                k_all = torch.cat([kh, kr.expand(b, -1, -1, -1)], dim=2)  # (b, h, N + R*M, d)
                v_all = torch.cat([vh, vr.expand(b, -1, -1, -1)], dim=2)
                bias = torch.zeros(k_all.shape[2], device=x.device, dtype=x.dtype)
                bias[n_tokens:] = log_weight_bias(weight, x.dtype)
                out = weighted_attention(qh, k_all, v_all, bias, mode=self.state.bias_mode)
            h[rows] = out.transpose(1, 2).reshape(out.shape[0], -1, inner)

        h = attn.to_out[0](h)
        h = attn.to_out[1](h)
        if attn.residual_connection:
            h = h + x
        return h / attn.rescale_output_factor
