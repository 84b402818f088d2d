"""Equivalence checks for the speed paths: the benchmark's FLOP model and the held token cache.

Timing is never tested here; ``python -m bench.generator`` measures it.
"""

import logging

import pytest
import torch

from bench.flops import attn1_layers, component_flops, estimate_flops
from fabric import FabricParams
from fabric.attention import FabricAttnProcessor, FabricState
from fabric.caches import ReferenceStateCache
from fabric.errors import InvalidParameterError
from fabric.fabric_generator import FabricGenerator


def _recorded_shapes(unet, latent_hw):
    """``[(layer, N, C)]`` that FABRIC's processors record in one U-Net call."""
    state = FabricState(mode="record")
    previous = dict(unet.attn_processors)
    unet.set_attn_processor(
        {
            k: FabricAttnProcessor(k[: -len(".processor")], state, p) if k.endswith("attn1.processor") else p
            for k, p in previous.items()
        }
    )
    try:
        added = None
        if unet.config.addition_embed_type == "text_time":
            pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            added = {"text_embeds": torch.zeros(1, pooled), "time_ids": torch.zeros(1, 6)}
        with torch.no_grad():
            unet(
                torch.zeros(1, 4, *latent_hw),
                10,
                encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim),
                added_cond_kwargs=added,
            )
    finally:
        unet.set_attn_processor(previous)
    return [(name, t.shape[1], t.shape[2]) for name, t in state.recorded.items()]


@pytest.fixture(scope="module")
def tiny_xl_unet():
    """SDXL's layout: a plain top level, several transformer layers per block, text-time embeddings."""
    from fabric.tiny import tiny_xl_components

    return tiny_xl_components()["unet"]


@pytest.mark.parametrize("model", ["tiny", "tiny-xl"])
@pytest.mark.parametrize("latent_hw", [(8, 8), (5, 7)])
def test_flop_model_layers_are_the_layers_fabric_records(model, latent_hw, tiny_generator, tiny_xl_unet):
    unet = tiny_generator.pipeline.unet if model == "tiny" else tiny_xl_unet
    expected = [(layer.name, layer.tokens, layer.channels) for layer in attn1_layers(unet.config, latent_hw)]
    assert _recorded_shapes(unet, latent_hw) == expected


def _counted_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    # the CPU flash kernel has no formula in torch's table; its work is that of any SDPA
    custom = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: (
            sdpa_flop_count(q, k, v)
        )
    }
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "params, liked, disliked",
    [
        (FabricParams(steps=2, max_weight=0.8), 2, 1),
        # a window and a zero bottleneck scale: fewer reference passes, layers without liked refs
        (FabricParams(steps=4, feedback_start=0.5, feedback_end=0.6, max_weight=0.8, pos_bottleneck_scale=0.0), 1, 2),
    ],
)
def test_flop_estimate_equals_the_counted_flops_of_a_fabric_call(tiny_generator, solid_images, params, liked, disliked):
    gen = FabricGenerator(tiny_generator.pipeline, cache_bytes=0)  # cold: every reference runs every step
    images = list(solid_images.values())
    kw = dict(params=params, n_images=1, seed=0, output_type="pil")
    plain = _counted_flops(lambda: gen.generate("a red circle", **kw))
    fabric = _counted_flops(
        lambda: gen.generate("a red circle", liked=images[:liked], disliked=images[-disliked:], **kw)
    )
    est = estimate_flops(
        component_flops(gen.pipeline, 64, 64),
        attn1_layers(gen.pipeline.unet.config, (8, 8)),
        params,
        images=1,
        liked=liked,
        disliked=disliked,
        num_down_blocks=len(gen.pipeline.unet.down_blocks),
    )
    assert est.attention > 0 and est.reference_passes > 0
    assert plain == est.plain
    assert fabric == est.fabric


def _entry(n: int = 4) -> dict[str, torch.Tensor]:
    return {"layer": torch.zeros(n)}  # 4 * n bytes


def test_held_entries_are_never_evicted_and_the_rest_goes_least_recent_first():
    cache = ReferenceStateCache(max_bytes=3 * 16)
    cache.put(("old", 1, 8, 8), _entry())
    with cache.hold(["a", "b", "c"]):
        cache.put(("a", 1, 8, 8), _entry())
        cache.put(("b", 1, 8, 8), _entry())
        cache.put(("c", 1, 8, 8), _entry())  # evicts "old", the only entry not held
        assert cache.get(("old", 1, 8, 8)) is None
        cache.put(("a", 2, 8, 8), _entry())  # no room without evicting a held image: not stored
        assert cache.rejected == 1 and cache.get(("a", 2, 8, 8)) is None
        assert cache.get(("a", 1, 8, 8)) is not None and cache.get(("b", 1, 8, 8)) is not None
    cache.put(("a", 2, 8, 8), _entry())  # released: "c" is now the least recently used
    assert cache.get(("c", 1, 8, 8)) is None and cache.get(("a", 2, 8, 8)) is not None
    assert len(cache) == 3 and cache.nbytes == 48


def _cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "reference-token cache" in r.getMessage()]


def test_a_small_cache_still_serves_the_next_round_and_changes_nothing(tiny_generator, solid_images, caplog):
    pipe = tiny_generator.pipeline
    params = FabricParams(steps=4, max_weight=0.8, feedback_end=1.0)
    red, green, blue, yellow = (solid_images[c] for c in ("red", "green", "blue", "yellow"))
    uncached = FabricGenerator(pipe, cache_bytes=0)
    probe = FabricGenerator(pipe)
    probe.generate("x", liked=[red], params=params, n_images=1, seed=0, output_type="latent")
    per_image = probe.state_cache.nbytes  # one reference over the whole schedule
    gen = FabricGenerator(pipe, cache_bytes=int(2.5 * per_image))  # room for 2.5 of the 4 references
    kw = dict(params=params, n_images=1, seed=4, output_type="latent")
    caplog.set_level(logging.WARNING, logger="fabric.fabric_generator")
    gen.generate("x", liked=[red], disliked=[blue], **kw)
    assert gen.state_cache.rejected == 0 and not _cache_warnings(caplog)
    hits = gen.state_cache.hits
    second = gen.generate("x", liked=[red, green], disliked=[blue, yellow], **kw)
    # round 2 finds both references of round 1 at every step, although it cannot store all of its own
    assert gen.state_cache.hits - hits == 2 * params.steps
    assert gen.state_cache.rejected > 0 and gen.state_cache.nbytes <= gen.state_cache.max_bytes
    hits = gen.state_cache.hits
    third = gen.generate("x", liked=[red, green], disliked=[blue, yellow], **kw)
    assert gen.state_cache.hits - hits >= 2 * params.steps
    # said once, with the fix: the third call's rejections are not logged again
    (warning,) = _cache_warnings(caplog)
    assert "cache_bytes" in warning and "--" not in warning  # the library names its own argument
    (record,) = [r for r in caplog.records if r.getMessage() == warning]
    assert record.option == "cache_bytes"  # the command line turns it into --token-cache-gb
    expected = uncached.generate("x", liked=[red, green], disliked=[blue, yellow], **kw)
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(third, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_cache_bytes_must_be_a_non_negative_integer(bad, tiny_generator):
    with pytest.raises(InvalidParameterError, match="cache_bytes"):
        FabricGenerator(tiny_generator.pipeline, cache_bytes=bad)


def test_fabric_on_a_channels_last_unet_gives_the_same_images(tiny_generator, solid_images):
    # bench.generator's channels-last option: the convolutions change layout, FABRIC's token paths must not care
    gen = FabricGenerator(tiny_generator.pipeline, cache_bytes=0)
    kw = dict(
        liked=[solid_images["red"]],
        disliked=[solid_images["blue"]],
        params=FabricParams(steps=2, max_weight=0.8),
        n_images=1,
        seed=3,
        output_type="latent",
    )
    contiguous = gen.generate("x", **kw)
    unet = gen.pipeline.unet
    unet.to(memory_format=torch.channels_last)
    try:
        channels_last = gen.generate("x", **kw)
    finally:
        unet.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(channels_last, contiguous, rtol=1e-4, atol=1e-4)


def test_the_generator_benchmark_runs_and_saves_what_it_measured(tmp_path):
    """``python -m bench.generator`` end to end on the tiny model (bench/gpu_session.sh runs it on CUDA)."""
    import json

    from bench.generator import main

    out = tmp_path / "bench.json"
    args = ["--models", "tiny", "--batch", "1", "--steps", "2", "--refs", "0,1", "--repeats", "1", "--threads", "1"]
    try:
        main([*args, "--parts", "throughput", "--json", str(out)])
    finally:
        torch.set_flush_denormal(False)  # main() turns it on for the process
    saved = json.loads(out.read_text())
    run = saved["models"]["tiny:64"]["throughput"]
    assert run["plain"]["images_per_s"] > 0
    assert set(run["fabric"]) == {"0+0", "1+1"}
    one = run["fabric"]["1+1"]
    assert one["flop_ratio"] > 1 and one["active_steps"] > 0
    assert one["time_over_bound_wall"] == pytest.approx(one["ratio_wall"] / one["flop_ratio"])
