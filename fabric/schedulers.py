"""Scheduler names -> diffusers schedulers, all from the ``alphas_cumprod`` family FABRIC needs
(the reference latents are noised as ``sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``)."""

from __future__ import annotations

from fabric.errors import InvalidParameterError

__all__ = ["SCHEDULERS", "set_scheduler"]

# name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++-sde": ("DPMSolverSDEScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def set_scheduler(pipeline, name: str) -> None:
    """Replace ``pipeline.scheduler`` by the named one, keeping the model's noise schedule."""
    import diffusers

    if name not in SCHEDULERS:
        raise InvalidParameterError(f"unknown scheduler {name!r}; supported: {', '.join(SCHEDULERS)}")
    cls_name, overrides = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    pipeline.scheduler = cls.from_config(pipeline.scheduler.config, **overrides)
