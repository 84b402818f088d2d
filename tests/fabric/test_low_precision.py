"""FABRIC in fp16 and bf16: the dtypes CUDA runs, checked on the CPU (and on CUDA when present)."""

import logging

import pytest
import torch

from fabric import FabricParams
from fabric.fabric_generator import FabricGenerator

P = FabricParams(steps=4, max_weight=0.8, feedback_start=0.0, feedback_end=0.6)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def float32_latents(tiny_generator, solid_images):
    return _generate(FabricGenerator(tiny_generator.pipeline, fuse_reference_pass=False), solid_images)


def _generate(gen, images, **kw):
    return gen.generate(
        "a circle",
        liked=[images["red"], images["green"]],
        disliked=[images["blue"], images["yellow"]],
        params=P,
        n_images=2,
        seed=[3, 4],
        output_type="latent",
        **kw,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_feedback_matches_float32_and_every_path_agrees(device, dtype, float32_latents, solid_images):
    pipeline = FabricGenerator.from_pretrained("tiny", device=device, dtype=dtype).pipeline
    runs = {
        (fuse, bias): _generate(FabricGenerator(pipeline, fuse_reference_pass=fuse, bias_mode=bias), solid_images)
        for fuse in (False, True)
        for bias in ("mask", "fold")
    }
    separate = runs[False, "mask"]
    assert separate.dtype == dtype and separate.device.type == device
    assert torch.isfinite(separate).all()
    # the latents' std is about 5; bf16 keeps 8 bits of mantissa, fp16 11 (measured: 0.30, 0.05)
    tolerance = {torch.bfloat16: 0.6, torch.float16: 0.15}[dtype]
    assert (separate.float().cpu() - float32_latents).abs().max() < tolerance
    # fused rows and the folded bias only reorder the same arithmetic: a few units in the last
    # place of the largest latent (on MKL's AVX-512 paths a batch of another shape rounds
    # differently; one bf16 ulp at |x| in [8, 16) is already 0.0625)
    ulps = 4 * torch.finfo(dtype).eps * separate.float().abs().max().item()
    torch.testing.assert_close(runs[True, "mask"], separate, rtol=0, atol=ulps)
    torch.testing.assert_close(runs[False, "fold"], runs[True, "fold"], rtol=0, atol=ulps)
    assert (runs[False, "fold"].float() - separate.float()).abs().max() < tolerance


@pytest.mark.parametrize("device", DEVICES)
def test_recorded_tokens_stay_on_the_device_in_the_model_dtype(device, solid_images):
    gen = FabricGenerator.from_pretrained("tiny", device=device, dtype=torch.float16)
    _generate(gen, solid_images)
    entries = list(gen.state_cache._entries.values())
    assert entries
    for states in entries:
        for tokens in states.values():
            assert tokens.dtype == torch.float16 and tokens.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_sdxl_call_logs_no_vacuous_cast_warning(device, solid_images):
    """The VAE is upcast to float32 to encode references and (in diffusers) to decode; diffusers
    logged "modules ... should be kept in float32: []" at every such cast."""
    gen = FabricGenerator.from_pretrained("tiny-xl", device=device, dtype=torch.float16)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    diffusers_logger.addHandler(handler)
    try:
        images = gen.generate("a circle", liked=[solid_images["red"]], params=P, n_images=1, seed=1)
    finally:
        diffusers_logger.removeHandler(handler)
    assert gen.pipeline.vae.dtype == torch.float16  # upcasts are undone
    assert len(images) == 1
    assert not [r for r in records if "kept in float32" in r.getMessage()]
