"""FLOP model of FABRIC's extra work, for the "FLOP bound" of ``python -m bench.generator``.

A FABRIC call does the plain pipeline's work plus, on every step with a non-zero weight,

* a **reference pass**: the U-Net on the ``P + Q`` noised references with the empty prompt,
  i.e. ``(P + Q) / (2 * images)`` of a guided main pass;
* **extended self-attention**: every weighted ``attn1`` layer of the main pass attends over
  ``N + R*N`` keys instead of ``N`` (``R`` references of ``N`` tokens each; liked ones in the
  conditional half, disliked ones in the unconditional half), and projects the reference tokens
  to keys and values once per half;

and, once per call, the empty prompt's text encoding and (cold cache) the VAE encoding of the
references. The per-layer token counts and widths come from the U-Net config
(:func:`attn1_layers`); the per-image cost of each network is counted once with
:class:`torch.utils.flop_counter.FlopCounterMode` on a ``meta``-device copy (no compute, no
memory). The bound on FABRIC's time is then ``plain time * fabric FLOPs / plain FLOPs``.

FLOPs count a multiply-add as 2, as ``FlopCounterMode`` does. Element-wise work (norms,
activations, softmax) is not counted, on either side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Attn1Layer",
    "ComponentFlops",
    "FlopEstimate",
    "attn1_layers",
    "component_flops",
    "extended_attention_flops",
    "estimate_flops",
]


@dataclass(frozen=True)
class Attn1Layer:
    """One U-Net self-attention layer at a given latent size.

    Attributes:
        name: module name, e.g. ``"down_blocks.0.attentions.1.transformer_blocks.0.attn1"``.
        tokens: ``N``, spatial tokens (``h * w`` of the layer's feature map).
        channels: ``C``, the layer's width (``heads * head_dim``).
        heads: number of attention heads.
    """

    name: str
    tokens: int
    channels: int
    heads: int


def _per_block(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def attn1_layers(config: Mapping, latent_hw: tuple[int, int]) -> list[Attn1Layer]:
    """The ``attn1`` layers of a ``UNet2DConditionModel`` config at latent size ``latent_hw``.

    Follows diffusers' construction: down block ``i`` runs at the resolution halved ``i`` times
    (stride-2 convs round up), cross-attention blocks hold ``layers_per_block`` (up: ``+ 1``)
    transformers of ``transformer_layers_per_block`` layers each, the mid block one transformer
    at the bottom resolution, and up block ``j`` mirrors down block ``D - 1 - j``. The width of
    a transformer is its block's channel count; diffusers' ``attention_head_dim`` is the number
    of heads in this U-Net (a historical naming quirk).

    Args:
        config: the U-Net config (``unet.config``).
        latent_hw: latent height and width.

    Returns:
        The layers in forward order (down, mid, up).
    """
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    n = len(down_types)
    channels = list(config["block_out_channels"])
    layers_per_block = _per_block(config["layers_per_block"], n)
    heads = _per_block(config.get("num_attention_heads") or config["attention_head_dim"], n)
    depth = _per_block(config.get("transformer_layers_per_block", 1), n)
    up_depth = list(config.get("reverse_transformer_layers_per_block") or depth[::-1])

    sizes = [tuple(latent_hw)]
    for _ in range(n - 1):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))

    def block(prefix: str, n_transformers: int, n_layers, size, width, n_heads) -> list[Attn1Layer]:
        out = []
        for a in range(n_transformers):
            per = n_layers[a] if isinstance(n_layers, (list, tuple)) else n_layers
            for t in range(per):
                name = f"{prefix}.attentions.{a}.transformer_blocks.{t}.attn1"
                out.append(Attn1Layer(name, size[0] * size[1], width, n_heads))
        return out

    layers: list[Attn1Layer] = []
    for i, kind in enumerate(down_types):
        if "CrossAttn" in kind:
            layers += block(f"down_blocks.{i}", layers_per_block[i], depth[i], sizes[i], channels[i], heads[i])
    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type is not None and "CrossAttn" in mid_type:
        layers += block("mid_block", 1, depth[-1], sizes[-1], channels[-1], heads[-1])
    rev_layers, rev_heads, rev_channels = layers_per_block[::-1], heads[::-1], channels[::-1]
    for j, kind in enumerate(up_types):
        if "CrossAttn" in kind:
            layers += block(
                f"up_blocks.{j}", rev_layers[j] + 1, up_depth[j], sizes[n - 1 - j], rev_channels[j], rev_heads[j]
            )
    return layers


def extended_attention_flops(layer: Attn1Layer, images: int, refs: int) -> int:
    """Extra FLOPs of one ``attn1`` call of ``images`` images attending to ``refs`` references.

    ``4 * images * N * (refs * N) * C`` for scores and values over the extra keys, plus
    ``4 * (refs * N) * C**2`` for the reference keys and values (projected once, shared by
    every image of the half).
    """
    if refs <= 0 or images <= 0:
        return 0
    n, c = layer.tokens, layer.channels
    extra_keys = refs * n
    return 4 * images * n * extra_keys * c + 4 * extra_keys * c * c


@dataclass(frozen=True)
class ComponentFlops:
    """Counted FLOPs of one call of each network, per image.

    Attributes:
        unet: one U-Net call on one latent (with a 77-token text context).
        text: one prompt through the text encoder(s).
        vae_decode: decoding one latent.
        vae_encode: encoding one image.
    """

    unet: float
    text: float
    vae_decode: float
    vae_encode: float


def _count(fn, custom=None) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=custom or {}) as counter:
        fn()
    return int(counter.get_total_flops())


def component_flops(pipeline, height: int, width: int) -> ComponentFlops:
    """Count the per-image FLOPs of ``pipeline``'s networks at ``height x width`` pixels.

    The networks are rebuilt from their configs on the ``meta`` device, so counting costs no
    compute or memory even for SDXL.
    """
    import torch

    factor = pipeline.vae_scale_factor
    hw = (height // factor, width // factor)
    meta = torch.device("meta")
    with meta:
        unet = type(pipeline.unet).from_config(pipeline.unet.config)
        vae = type(pipeline.vae).from_config(pipeline.vae.config)
    encoders = []
    for name in ("text_encoder", "text_encoder_2"):
        enc = getattr(pipeline, name, None)
        if enc is not None:
            with meta:
                encoders.append(type(enc)(enc.config))

    ucfg = unet.config
    latent = torch.empty(1, ucfg.in_channels, *hw, device=meta)
    context = torch.empty(1, 77, ucfg.cross_attention_dim, device=meta)
    added = None
    if ucfg.addition_embed_type == "text_time":
        pooled = ucfg.projection_class_embeddings_input_dim - 6 * ucfg.addition_time_embed_dim
        added = {"text_embeds": torch.empty(1, pooled, device=meta), "time_ids": torch.empty(1, 6, device=meta)}
    timestep = torch.tensor(500.0, device=meta)
    tokens = torch.zeros(1, 77, dtype=torch.long, device=meta)
    with torch.no_grad():
        unet_f = _count(lambda: unet(latent, timestep, encoder_hidden_states=context, added_cond_kwargs=added))
        text_f = sum(_count(lambda e=e: e(tokens)) for e in encoders)
        z = torch.empty(1, vae.config.latent_channels, *hw, device=meta)
        decode_f = _count(lambda: vae.decode(z))
        pixels = torch.empty(1, vae.config.in_channels, height, width, device=meta)
        encode_f = _count(lambda: vae.encode(pixels))
    return ComponentFlops(float(unet_f), float(text_f), float(decode_f), float(encode_f))


@dataclass(frozen=True)
class FlopEstimate:
    """FLOPs of one plain call and one FABRIC call with the same images, steps and guidance.

    Attributes:
        plain: the plain pipeline (main passes, prompt encoding, decoding).
        reference_passes: FABRIC's reference U-Net passes.
        attention: FABRIC's extra extended-attention work in the main passes.
        once: per-call extras (empty-prompt encoding, reference VAE encoding when cold).
        active_steps: steps with a reference pass.
    """

    plain: float
    reference_passes: float
    attention: float
    once: float
    active_steps: int

    @property
    def fabric(self) -> float:
        return self.plain + self.reference_passes + self.attention + self.once

    @property
    def ratio(self) -> float:
        """FABRIC FLOPs / plain FLOPs: the bound on FABRIC's time relative to the plain call."""
        return self.fabric / self.plain


def estimate_flops(
    components: ComponentFlops,
    layers: Sequence[Attn1Layer],
    params,
    *,
    images: int,
    liked: int,
    disliked: int,
    num_down_blocks: int,
    guidance: bool = True,
    cold: bool = True,
    prompts: int = 2,
) -> FlopEstimate:
    """FLOPs of the plain call and of FABRIC's extra work, step by step.

    Mirrors the generator: on each step, references of a polarity run only when that
    polarity's weight is positive (disliked ones only with guidance), and a layer attends to a
    polarity only where its depth-profile weight is positive.

    Args:
        components: per-image network FLOPs (:func:`component_flops`).
        layers: the ``attn1`` layers (:func:`attn1_layers`).
        params: the :class:`~fabric.params.FabricParams` of the call.
        images: images per call.
        liked, disliked: reference counts.
        num_down_blocks: ``len(unet.down_blocks)`` (for the depth profile).
        guidance: classifier-free guidance on (a ``[uncond; cond]`` batch).
        cold: count the VAE encoding of the references (first use of an image).
        prompts: text-encoder calls of the plain pipeline (prompt and negative prompt).
    """
    from fabric.schedule import layer_weights, step_weights

    rows = 2 * images if guidance else images
    plain = params.steps * rows * components.unet + prompts * components.text + images * components.vae_decode
    names = [layer.name for layer in layers]
    ref_f = att_f = 0.0
    active = 0
    for step in range(params.steps):
        w = step_weights(step, params.steps, params)
        n_pos = liked if w.pos > 0 else 0
        n_neg = disliked if (w.neg > 0 and guidance) else 0
        if n_pos + n_neg == 0:
            continue
        active += 1
        ref_f += (n_pos + n_neg) * components.unet
        pos_w = layer_weights(names, w.pos, params.pos_bottleneck_scale, num_down_blocks)
        neg_w = layer_weights(names, w.neg, params.neg_bottleneck_scale, num_down_blocks)
        for layer in layers:
            if n_pos and pos_w[layer.name] > 0:
                att_f += extended_attention_flops(layer, images, n_pos)
            if n_neg and neg_w[layer.name] > 0:
                att_f += extended_attention_flops(layer, images, n_neg)
    once = 0.0
    if active:
        once = components.text + (liked + disliked) * components.vae_encode * cold
    return FlopEstimate(plain, ref_f, att_f, once, active)
