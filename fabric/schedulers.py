"""Scheduler names -> diffusers schedulers of the ``alphas_cumprod`` family FABRIC needs.

FABRIC noises each reference to the noise level of the step's U-Net input,
``sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``, from the timestep ``t`` alone. That holds for every
diffusers scheduler defined by a discrete ``alphas_cumprod`` schedule (the DDPM/Euler/DPM-Solver
families, Euler's scaled input included) with epsilon or v prediction alike; flow-matching and
EDM schedulers have no such schedule and are refused with a one-line error.

Every name keeps the model's own noise schedule and prediction type (``from_config`` of the
pipeline's scheduler) and sets only what defines the sampler, so a name means the same sampler
whatever scheduler the model shipped with.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from fabric.errors import InvalidParameterError

__all__ = ["SCHEDULERS", "SchedulerSpec", "set_scheduler", "make_scheduler", "check_scheduler"]


@dataclass(frozen=True)
class SchedulerSpec:
    """A named sampler: a diffusers scheduler class plus the config entries that define it.

    Attributes:
        cls_name: the class in ``diffusers``.
        overrides: config entries set on top of the model's scheduler config.
        requires: an extra Python package the class needs, if any.
    """

    cls_name: str
    overrides: dict = field(default_factory=dict)
    requires: str | None = None


# Latent-space models never clip the predicted x0 (diffusers' DDIM/DDPM default clips to [-1, 1],
# which is meant for pixel-space models) and, like SD's own configs, do not force abar_prev = 1.
SCHEDULERS: dict[str, SchedulerSpec] = {
    "euler-a": SchedulerSpec("EulerAncestralDiscreteScheduler"),
    "euler": SchedulerSpec("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler-karras": SchedulerSpec("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "heun": SchedulerSpec("HeunDiscreteScheduler", {"use_karras_sigmas": False}),
    "dpm2": SchedulerSpec("KDPM2DiscreteScheduler"),
    "dpm2-a": SchedulerSpec("KDPM2AncestralDiscreteScheduler"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", {"use_karras_sigmas": False}),
    "ddim": SchedulerSpec("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "ddpm": SchedulerSpec("DDPMScheduler", {"clip_sample": False}),
    "pndm": SchedulerSpec("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False}),
    "dpm++": SchedulerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}
    ),
    "dpm++-karras": SchedulerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}
    ),
    "dpm++-2m-sde": SchedulerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++-2s": SchedulerSpec("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++-sde": SchedulerSpec("DPMSolverSDEScheduler", requires="torchsde"),
    "deis": SchedulerSpec("DEISMultistepScheduler"),
    "unipc": SchedulerSpec("UniPCMultistepScheduler"),
    "lcm": SchedulerSpec("LCMScheduler"),  # for LCM-distilled models / LCM LoRAs
}


def _supported() -> str:
    return ", ".join(SCHEDULERS)


def check_scheduler(scheduler) -> None:
    """Raise unless FABRIC can noise references consistently with ``scheduler``.

    Raises:
        InvalidParameterError: the scheduler has no ``alphas_cumprod`` schedule.
    """
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise InvalidParameterError(
            f"scheduler {type(scheduler).__name__} has no alphas_cumprod schedule, which FABRIC needs to noise "
            f"its references; use one of: {_supported()}"
        )


def make_scheduler(name: str, config):
    """A new scheduler for ``name`` built from ``config`` (the model's scheduler config).

    Args:
        name: a key of :data:`SCHEDULERS`, or the class name of any diffusers scheduler of the
            ``alphas_cumprod`` family (e.g. ``"DPMSolverMultistepScheduler"``).
        config: the pipeline scheduler's ``config``, whose noise schedule and prediction type
            are kept.

    Raises:
        InvalidParameterError: unknown name, a scheduler FABRIC cannot drive, or a missing
            optional package.
    """
    import diffusers

    spec = SCHEDULERS.get(name)
    if spec is None:
        cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
        if not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
            raise InvalidParameterError(f"unknown scheduler {name!r}; supported: {_supported()}")
        spec = SchedulerSpec(name)
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        raise InvalidParameterError(
            f"scheduler {name!r} needs the {spec.requires} package: pip install {spec.requires}"
        )
    try:
        scheduler = getattr(diffusers, spec.cls_name).from_config(config, **spec.overrides)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise InvalidParameterError(f"scheduler {name!r} does not fit this model: {exc}") from None
    check_scheduler(scheduler)
    return scheduler


def set_scheduler(pipeline, name: str) -> None:
    """Replace ``pipeline.scheduler`` by the named one, keeping the model's noise schedule."""
    pipeline.scheduler = make_scheduler(name, pipeline.scheduler.config)
