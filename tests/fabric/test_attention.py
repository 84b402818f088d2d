import math

import pytest
import torch

from fabric.attention import (
    FabricAttnProcessor,
    FabricState,
    LayerReferences,
    log_weight_bias,
    weighted_attention,
    weighted_attention_reference,
)


def _qkv(B=2, h=3, N=5, R=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, h, N, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, h, N + R, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, h, N + R, d, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("mode", ["mask", "fold"])
@pytest.mark.parametrize("w", [0.0, 0.3, 1.0, 2.5, 10.0])
def test_fused_equals_explicit_reweighting(mode, w):
    N, R = 5, 7
    q, k, v = _qkv(N=N, R=R)
    weights = torch.ones(N + R, dtype=torch.float64)
    weights[N:] = w
    bias = torch.zeros(N + R, dtype=torch.float64)
    bias[N:] = log_weight_bias(w, torch.float64)
    fused = weighted_attention(q, k, v, bias, mode=mode)
    explicit = weighted_attention_reference(q, k, v, weights)
    torch.testing.assert_close(fused, explicit, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", [4, 8, 40])
def test_fold_handles_any_head_dim(d):
    q, k, v = _qkv(d=d)
    bias = torch.zeros(k.shape[2], dtype=torch.float64)
    bias[5:] = math.log(0.4)
    torch.testing.assert_close(weighted_attention(q, k, v, bias, "fold"), weighted_attention(q, k, v, bias, "mask"))


def test_weight_one_is_plain_attention_over_all_tokens_and_zero_ignores_references():
    q, k, v = _qkv()
    plain_all = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weighted_attention(q, k, v, torch.zeros(k.shape[2], dtype=torch.float64)), plain_all)
    bias = torch.zeros(k.shape[2], dtype=torch.float64)
    bias[5:] = log_weight_bias(0.0, torch.float64)
    own_only = torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :5], v[:, :, :5])
    torch.testing.assert_close(weighted_attention(q, k, v, bias), own_only)


def test_zero_weight_is_finite_in_half_precision():
    q, k, v = (t.half() for t in _qkv())
    bias = torch.zeros(k.shape[2])
    bias[5:] = log_weight_bias(0.0, torch.float16)
    out = weighted_attention(q.float(), k.float(), v.float(), bias).half()
    assert torch.isfinite(out).all()


def _attention_layer(dim=16, heads=2, seed=0):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads)
    attn.set_processor(AttnProcessor2_0())
    return attn.double().eval()


def test_processor_sends_negatives_to_the_unconditional_half_only():
    attn = _attention_layer()
    base = attn.processor
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 16, generator=g, dtype=torch.float64)  # [uncond(2); cond(2)]
    neg = torch.randn(9, 16, generator=g, dtype=torch.float64)
    state = FabricState(mode="inject", guidance=True)
    state.layers["layer"] = (LayerReferences(pos=None, neg=neg, pos_weight=0.0, neg_weight=0.7),)
    out = FabricAttnProcessor("layer", state, base)(attn, x)
    plain = base(attn, x)
    torch.testing.assert_close(out[2:], plain[2:])  # conditional half untouched
    assert not torch.allclose(out[:2], plain[:2])  # unconditional half sees the references


def test_processor_matches_the_explicit_formula_on_the_conditional_half():
    attn = _attention_layer()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 16, generator=g, dtype=torch.float64)  # no guidance: all conditional
    pos = torch.randn(12, 16, generator=g, dtype=torch.float64)
    state = FabricState(mode="inject", guidance=False)
    state.layers["layer"] = (LayerReferences(pos=pos, neg=None, pos_weight=2.0, neg_weight=0.0),)
    out = FabricAttnProcessor("layer", state, attn.processor)(attn, x)

    def split(t):  # (b, L, 16) -> (b, 2, L, 8)
        return t.view(t.shape[0], -1, 2, 8).transpose(1, 2)

    ctx = torch.cat([x, pos.expand(2, -1, -1)], dim=1)
    weights = torch.ones(ctx.shape[1], dtype=torch.float64)
    weights[6:] = 2.0
    h = weighted_attention_reference(split(attn.to_q(x)), split(attn.to_k(ctx)), split(attn.to_v(ctx)), weights)
    expected = attn.to_out[0](h.transpose(1, 2).reshape(2, 6, 16))
    torch.testing.assert_close(out, expected)


def test_high_weight_pulls_layer_output_towards_reference_attention():
    attn = _attention_layer()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 6, 16, generator=g, dtype=torch.float64)
    ref = torch.randn(1, 6, 16, generator=g, dtype=torch.float64) + 2.0
    target = attn.to_out[0](
        torch.nn.functional.scaled_dot_product_attention(
            *(t.view(1, -1, 2, 8).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(ref), attn.to_v(ref)))
        )
        .transpose(1, 2)
        .reshape(1, 6, 16)
    )
    distances = []
    for w in (0.0, 1.0, 10.0, 1000.0):
        state = FabricState(mode="inject", guidance=False)
        state.layers["l"] = (LayerReferences(pos=ref[0], neg=None, pos_weight=w, neg_weight=0.0),)
        distances.append((FabricAttnProcessor("l", state, attn.processor)(attn, x) - target).norm().item())
    assert distances == sorted(distances, reverse=True) and distances[-1] < 1e-2 * distances[0]


def test_record_mode_stores_inputs_by_layer_name():
    attn = _attention_layer()
    state = FabricState(mode="record")
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    FabricAttnProcessor("down_blocks.0.attentions.0.transformer_blocks.0.attn1", state, attn.processor)(attn, x)
    assert list(state.recorded) == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
    assert state.recorded["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] is x


def test_groups_in_one_batch_equal_each_group_alone():
    """Three prompts with their own feedback in one call: each group's rows (in both guidance
    halves) see only its own references, exactly as if it ran alone; a group without
    references gets plain attention."""
    attn = _attention_layer()
    g = torch.Generator().manual_seed(4)
    sizes = (2, 1, 3)
    refs = (
        LayerReferences(
            pos=torch.randn(6, 16, generator=g, dtype=torch.float64),
            neg=torch.randn(12, 16, generator=g, dtype=torch.float64),
            pos_weight=1.5,
            neg_weight=0.4,
        ),
        None,
        LayerReferences(
            pos=torch.randn(12, 16, generator=g, dtype=torch.float64), neg=None, pos_weight=0.8, neg_weight=0.0
        ),
    )
    xs = [torch.randn(2 * n, 6, 16, generator=g, dtype=torch.float64) for n in sizes]  # [uncond(n); cond(n)] each
    batch = torch.cat([x[:n] for x, n in zip(xs, sizes)] + [x[n:] for x, n in zip(xs, sizes)])

    state = FabricState(mode="inject", guidance=True, groups=sizes)
    state.layers["layer"] = refs
    together = FabricAttnProcessor("layer", state, attn.processor)(attn, batch)

    half = sum(sizes)
    offset = 0
    for x, n, r in zip(xs, sizes, refs):
        alone_state = FabricState(mode="inject", guidance=True)
        alone_state.layers["layer"] = (r,)
        alone = FabricAttnProcessor("layer", alone_state, attn.processor)(attn, x)
        torch.testing.assert_close(together[offset : offset + n], alone[:n])
        torch.testing.assert_close(together[half + offset : half + offset + n], alone[n:])
        offset += n
    plain = attn.processor(attn, xs[1])
    torch.testing.assert_close(together[2:3], plain[:1])


def test_groups_that_do_not_cover_the_batch_are_an_error():
    attn = _attention_layer()
    state = FabricState(mode="inject", guidance=True, groups=(1, 2))
    ref = LayerReferences(pos=torch.randn(6, 16, dtype=torch.float64), neg=None, pos_weight=1.0, neg_weight=0.0)
    state.layers["layer"] = (ref, ref)
    with pytest.raises(RuntimeError, match="do not cover"):
        FabricAttnProcessor("layer", state, attn.processor)(attn, torch.randn(4, 6, 16, dtype=torch.float64))


def test_with_no_references_the_processor_is_diffusers_own():
    """Delegation is bit for bit, and FABRIC's own attention over zero reference tokens computes
    what diffusers' AttnProcessor2_0 computes (the extended path without anything to extend)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _attention_layer()
    x = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = AttnProcessor2_0()(attn, x)
    off = FabricState(mode="off")
    assert torch.equal(FabricAttnProcessor("layer", off, attn.processor)(attn, x), expected)
    nothing = FabricState(mode="inject", guidance=True)
    nothing.layers["layer"] = (LayerReferences(pos=None, neg=None, pos_weight=0.0, neg_weight=0.0),)
    assert torch.equal(FabricAttnProcessor("layer", nothing, attn.processor)(attn, x), expected)
    empty = torch.empty(0, 16, dtype=torch.float64)  # references present, with no tokens
    zero = FabricState(mode="inject", guidance=True)
    zero.layers["layer"] = (LayerReferences(pos=empty, neg=empty, pos_weight=1.0, neg_weight=1.0),)
    torch.testing.assert_close(
        FabricAttnProcessor("layer", zero, attn.processor)(attn, x), expected, rtol=0, atol=1e-12
    )


def test_the_whole_unet_with_fabric_processors_and_nothing_to_inject_is_unchanged(tiny_generator):
    unet = tiny_generator.pipeline.unet
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=g)
    text = torch.randn(2, 4, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = unet(sample, 10, encoder_hidden_states=text).sample
        previous = dict(unet.attn_processors)
        state = FabricState(mode="off")
        unet.set_attn_processor(
            {k: FabricAttnProcessor(k[: -len(".processor")], state, p) if k.endswith("attn1.processor") else p
             for k, p in previous.items()}
        )  # fmt: skip
        try:
            got = unet(sample, 10, encoder_hidden_states=text).sample
        finally:
            unet.set_attn_processor(previous)
    assert torch.equal(got, expected)
