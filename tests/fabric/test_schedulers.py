"""Schedulers: every supported one drives FABRIC, references are noised to the level of the
scheduler's own U-Net input (epsilon and v prediction alike), unsupported ones are refused."""

from __future__ import annotations

import importlib.util
import inspect
from collections import Counter

import pytest
import torch

from fabric import FabricParams
from fabric.errors import InvalidParameterError
from fabric.schedulers import SCHEDULERS, make_scheduler, set_scheduler

P = FabricParams(steps=2, max_weight=0.8, feedback_end=1.0)
STOCHASTIC = {"euler-a", "dpm2-a", "ddpm", "lcm", "dpm++-2m-sde", "dpm++-sde"}  # they draw fresh noise each step
# Samplers whose later inputs are not "z0 plus noise" even with a perfect model, so only their
# first input (add_noise at the first timestep) is compared: PNDM's warm-up step converts v to eps
# with another timestep's abar than the input it was given (diffusers' own behaviour, plain
# pipeline included); LCM's consistency boundary condition mixes the noisy sample into its x0.
FIRST_INPUT_ONLY = {("pndm", "v_prediction"), ("lcm", "epsilon"), ("lcm", "v_prediction")}


def _available(name: str) -> bool:
    needs = SCHEDULERS[name].requires
    return needs is None or importlib.util.find_spec(needs) is not None


@pytest.fixture(scope="module")
def pipelines():
    from fabric.tiny import build_tiny_pipeline, build_tiny_v_pipeline

    return {"epsilon": build_tiny_pipeline(), "v_prediction": build_tiny_v_pipeline()}


@pytest.mark.parametrize(
    "name",
    [
        n if _available(n) else pytest.param(n, marks=pytest.mark.skip(f"needs {SCHEDULERS[n].requires}"))
        for n in SCHEDULERS
    ],
)
def test_every_supported_scheduler_runs_fabric_with_two_liked_and_two_disliked(pipelines, solid_images, name):
    from fabric.fabric_generator import FabricGenerator

    pipe = pipelines["epsilon"]
    original = pipe.scheduler
    refs = dict(
        liked=[solid_images["red"], solid_images["green"]], disliked=[solid_images["blue"], solid_images["yellow"]]
    )
    runs = {}
    try:
        set_scheduler(pipe, name)
        for fuse in (False, True):
            gen = FabricGenerator(pipe, fuse_reference_pass=fuse)
            calls = []  # (rows, timestep) of every U-Net call as the U-Net ran it (before FABRIC's hook trims it)
            handle = pipe.unet.register_forward_hook(
                lambda m, args, out: calls.append((out[0].shape[0], round(float(args[1]), 4)))
            )
            try:
                runs[fuse] = gen.generate("a circle", **refs, params=P, n_images=1, seed=0, output_type="latent"), calls
            finally:
                handle.remove()
    finally:
        pipe.scheduler = original
    (separate, calls), (fused, fused_calls) = runs[False], runs[True]
    assert torch.isfinite(separate).all()
    # one main pass (guidance batch of 2) per evaluation, at least one per step (second-order
    # samplers evaluate twice); each of the 2 + 2 references alone (batch 1) once per distinct
    # timestep, since a repeated timestep reuses the cached reference tokens
    main = [t for b, t in calls if b == 2]
    reference = [t for b, t in calls if b == 1]
    assert len(main) >= P.steps and len(main) + len(reference) == len(calls)
    assert sorted(reference) == sorted(4 * sorted(set(main)))
    # fused: the references ride in the first main pass at each distinct timestep; a repeated
    # timestep's pass finds their tokens in the cache
    assert [t for b, t in fused_calls if b == 6] == list(dict.fromkeys(main))
    assert Counter(t for b, t in fused_calls if b == 2) == Counter(main) - Counter(set(main))
    torch.testing.assert_close(fused, separate, rtol=1e-3, atol=1e-3)


def _oracle_inputs(scheduler, prediction: str, steps: int = 6):
    """Run ``scheduler`` with an oracle model that knows the clean latent ``z0``.

    Each model input is split into signal and noise, ``c0 z0 + c1 n`` (least squares on
    ``(z0, eps)`` for deterministic samplers, whose trajectory stays on ``z0 + sigma_t eps``;
    projection on ``z0`` plus the residual for samplers that add fresh noise), and the oracle
    predicts ``n`` (epsilon) or ``c0 n - c1 z0`` (v). So the sampler lands on ``z0`` and every
    input shows the noise level the scheduler really uses at its timestep.

    Returns:
        ``(z0, eps, [(t, model input, c0, c1)])``.
    """
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, 4, 64, 64, generator=g, dtype=torch.float64)
    eps = torch.randn(1, 4, 64, 64, generator=g, dtype=torch.float64)
    scheduler.set_timesteps(steps)
    x = scheduler.add_noise(z0, eps, scheduler.timesteps[:1])
    step_kwargs = (
        {"generator": torch.Generator().manual_seed(1)}
        if "generator" in inspect.signature(scheduler.step).parameters
        else {}
    )
    basis = torch.stack([z0.flatten(), eps.flatten()], dim=1)
    seen = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        c0, c1 = torch.linalg.lstsq(basis, model_input.flatten()[:, None]).solution[:, 0].tolist()
        noise = eps
        residual = model_input - c0 * z0 - c1 * eps
        if residual.abs().max() > 1e-4:  # fresh noise was added: not in the span of (z0, eps)
            c0 = float((model_input * z0).sum() / (z0 * z0).sum())
            noise = model_input - c0 * z0
            c1 = float(noise.std())
            noise = noise / c1
        seen.append((t, model_input, c0, c1))
        out = noise if prediction == "epsilon" else c0 * noise - c1 * z0
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return z0, eps, seen


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", [n for n in SCHEDULERS if _available(n)])
def test_references_are_noised_to_the_noise_level_of_the_scheduler_input(pipelines, name, prediction):
    from fabric.reference import alpha_bar

    pipe = pipelines[prediction]
    scheduler = make_scheduler(name, pipe.scheduler.config)
    assert scheduler.config.prediction_type == prediction
    original, pipe.scheduler = pipe.scheduler, scheduler
    try:
        z0, eps, seen = _oracle_inputs(scheduler, prediction)
        if (name, prediction) in FIRST_INPUT_ONLY:
            seen = seen[:1]
        for t, model_input, c0, c1 in seen:
            a = alpha_bar(scheduler, t)  # what FABRIC noises the references with at this timestep
            if name in STOCHASTIC:  # same signal level, same total noise variance
                assert c0 == pytest.approx(a**0.5, abs=0.02) and c1 == pytest.approx((1 - a) ** 0.5, abs=0.02)
            else:
                reference = a**0.5 * z0 + (1 - a) ** 0.5 * eps
                # Karras sigmas sit between integer timesteps; FABRIC interpolates sigma linearly in t
                tol = 2e-3 if scheduler.config.get("use_karras_sigmas") or name == "dpm2" else 1e-5
                torch.testing.assert_close(model_input, reference, rtol=0, atol=tol * 4)
    finally:
        pipe.scheduler = original


def test_a_name_keeps_the_model_noise_schedule_and_prediction_type(pipelines):
    v = pipelines["v_prediction"]
    for name in ("euler", "dpm++", "ddim", "unipc"):
        s = make_scheduler(name, v.scheduler.config)
        assert s.config.prediction_type == "v_prediction"
        assert torch.equal(s.alphas_cumprod, v.scheduler.alphas_cumprod)
    assert (
        make_scheduler("ddim", pipelines["epsilon"].scheduler.config).config.clip_sample is False
    )  # latents are unbounded
    assert make_scheduler("euler-karras", v.scheduler.config).config.use_karras_sigmas
    assert not make_scheduler(
        "euler", make_scheduler("euler-karras", v.scheduler.config).config
    ).config.use_karras_sigmas
    # any diffusers scheduler class of the family is accepted by its class name
    assert type(make_scheduler("DEISMultistepScheduler", v.scheduler.config)).__name__ == "DEISMultistepScheduler"


@pytest.mark.parametrize(
    "name", ["flow-match-euler", "FlowMatchEulerDiscreteScheduler", "EDMEulerScheduler", "NotAScheduler"]
)
def test_unsupported_schedulers_fail_with_one_line_naming_the_supported_set(pipelines, name):
    with pytest.raises(InvalidParameterError) as info:
        make_scheduler(name, pipelines["epsilon"].scheduler.config)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in SCHEDULERS)


def test_a_pipeline_with_a_flow_matching_scheduler_is_refused(pipelines):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fabric.fabric_generator import FabricGenerator

    pipe = pipelines["epsilon"]
    original, pipe.scheduler = pipe.scheduler, FlowMatchEulerDiscreteScheduler()
    try:
        with pytest.raises(InvalidParameterError, match="alphas_cumprod.*euler-a, euler,"):
            FabricGenerator(pipe)
    finally:
        pipe.scheduler = original


@pytest.mark.skipif(importlib.util.find_spec("torchsde") is not None, reason="torchsde is installed")
def test_a_missing_optional_package_is_named():
    from fabric.tiny import build_tiny_pipeline

    with pytest.raises(InvalidParameterError, match="pip install torchsde"):
        set_scheduler(build_tiny_pipeline(), "dpm++-sde")
