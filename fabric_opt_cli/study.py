"""``fabric-opt study``: run (or resume) a study.

Thin: flags become overrides of the study file, everything the user typed is validated, then
:func:`optimize.study.run_study` runs it. Every check that can fail on user input runs before
the Optuna study, the MLflow run or any file is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fabric_opt_cli import options
from fabric_opt_cli.console import run_with_progress

__all__ = ["study"]


def study(
    objective: Optional[str] = typer.Option(
        None,
        "--objective",
        "-o",
        help=(
            "Objective spec: pickscore, hpsv2, target, 'pickscore,diversity', 'pickscore+0.5*aesthetic'. Alone it "
            "picks the matching built-in study."
        ),
    ),
    study_name: Optional[str] = typer.Option(
        None,
        "--study",
        "-s",
        help="Built-in study (pickscore, hps, target, pickscore-diversity, tiny) or a study YAML file.",
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Override the study's model: 'tiny', a hub id, a diffusers folder or a .safetensors/.ckpt file.",
    ),
    sampler: Optional[str] = typer.Option(
        None, "--sampler", help="Override the sampler: botorch, gp, tpe, random, qmc, nsga2, cmaes."
    ),
    trials: Optional[int] = typer.Option(
        None,
        "--trials",
        "-n",
        help="Total trial budget of the study; a resumed study runs until it has this many finished trials.",
    ),
    storage: Optional[str] = options.STORAGE,
    name: Optional[str] = typer.Option(
        None, "--name", help="Study name in the storage and MLflow (default: the study's name). The same name resumes."
    ),
    tracking_uri: Optional[str] = options.TRACKING_URI,
    objective_weights: list[str] = typer.Option(
        [],
        "--objective-weights",
        "-w",
        metavar="NAME=PATH",
        help="NAME=PATH (repeatable): reward-model weights (a file, folder, hub id, or 'tiny').",
    ),
    prompts: Optional[str] = typer.Option(
        None, "--prompts", help="Train prompts: a built-in list, .txt, .csv (prompt[,image] columns) or .json file."
    ),
    validation_prompts: Optional[str] = typer.Option(
        None, "--validation-prompts", help="Held-out prompts for the report's comparison (same forms as --prompts)."
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Override the study seed (images, simulated user, sampler)."
    ),
    prompt_batch: Optional[int] = typer.Option(
        None,
        "--prompt-batch",
        help=(
            "Prompts generated together per pipeline call (protocol.prompt_batch); more is faster where memory allows."
        ),
    ),
    frontend: Optional[str] = typer.Option(
        None,
        "--frontend",
        help=(
            "Tune only what this frontend can carry (search_space.frontend): a1111 or comfyui. The exported preset is "
            "then exactly the tuned one. A new setting: give the study a new --name."
        ),
    ),
    scheduler: Optional[str] = options.SCHEDULER,
    runs_dir: Path = options.RUNS_DIR,
    device: Optional[str] = options.DEVICE,
    dtype: Optional[str] = options.DTYPE,
    token_cache_gb: Optional[float] = options.TOKEN_CACHE_GB,
) -> None:
    """Run (or resume) a study: tune FABRIC's parameters against an objective, track every trial in
    MLflow, and write the recommended preset."""
    from optimize.config import resolve_study
    from optimize.study import StorageSpec
    from optimize.tracking import make_tracker

    # 1. Everything the user typed, validated before anything is loaded or written
    overrides: dict[str, Any] = {}
    for key, value in (("model", model), ("trials", trials), ("seed", seed), ("scheduler", scheduler)):
        if value is not None:
            overrides[key] = value
    if sampler is not None:
        overrides["sampler"] = {"name": sampler}
    if prompt_batch is not None:
        overrides["protocol"] = {"prompt_batch": prompt_batch}
    if frontend is not None:
        overrides["search_space"] = {"frontend": frontend}
    if objective_weights:
        overrides["objective_weights"] = options.weights_table(objective_weights)
    split_overrides = {k: v for k, v in (("train", prompts), ("validation", validation_prompts)) if v is not None}
    if split_overrides:
        overrides["prompts"] = split_overrides
    if name is not None:
        overrides["name"] = name
    config = resolve_study(study_name, objective, overrides)
    tracker = make_tracker(options.tracking_uri(tracking_uri, runs_dir))
    spec = StorageSpec.parse(storage, runs_dir)
    dev, dt = options.resolve_device_dtype(device, dtype)
    cache_bytes = options.token_cache_bytes(token_cache_gb)

    # 2. Run, with progress bars on stderr and the summary on stdout
    run_with_progress(
        config, storage=spec, tracker=tracker, runs_dir=runs_dir, device=dev, dtype=dt, cache_bytes=cache_bytes
    )
