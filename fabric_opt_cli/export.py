"""``fabric-opt export``: a study's recommended (or any trial's) parameters as a preset.

Fast by design (no torch, no MLflow): the recommendation the study stored when it finished is
used while no trial has completed since; only then is the GP fitted again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from fabric.errors import ConfigError
from fabric_opt_cli import options
from fabric_opt_cli.console import get_console

if TYPE_CHECKING:
    import optuna

    from optimize.config import StudyConfig

__all__ = ["export"]


def export(
    name: str = typer.Argument(..., help="Study name."),
    format: str = typer.Option(
        "json", "--format", "-f", help="json (fabric-opt preset), a1111, comfyui or diffusers (Python script)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output file (default <runs-dir>/<name>/presets/<name>.<ext>)."
    ),
    trial: Optional[int] = typer.Option(
        None,
        "--trial",
        help="Export this trial's parameters instead of the recommendation (e.g. another Pareto point).",
    ),
    prompt: Optional[str] = typer.Option(
        None, "--prompt", help="Prompt written into the preset (default: the study's first train prompt)."
    ),
    liked: list[Path] = typer.Option(
        [], "--liked", help="Liked reference image (repeatable); copied where the frontend finds it."
    ),
    disliked: list[Path] = typer.Option([], "--disliked", help="Disliked reference image (repeatable)."),
    storage: Optional[str] = options.STORAGE,
    runs_dir: Path = options.RUNS_DIR,
) -> None:
    """Export a study's recommended (or any trial's) parameters as a preset for fabric-opt, the A1111
    extension, ComfyUI or a Python script; prints what the target cannot represent and where the
    files go."""
    from optimize.export import DEFAULT_EXTENSIONS, available_formats, export_params
    from optimize.study import StorageSpec, export_context, open_study

    if format not in available_formats():
        raise ConfigError(f"unknown export format {format!r}; known: {', '.join(available_formats())}")
    for path in (*liked, *disliked):
        options.existing_file(path, "reference image")
    spec = StorageSpec.parse(storage, runs_dir)
    opt_study, config = open_study(name, spec)
    params, number, estimate = _chosen_params(opt_study, config, trial)
    context = export_context(
        config, trial=number, estimate=estimate, prompt=prompt, study_name=name,
        liked=[str(p.expanduser().resolve()) for p in liked],
        disliked=[str(p.expanduser().resolve()) for p in disliked],
    )  # fmt: skip
    exported = export_params(params, format, context)
    target = out or Path(runs_dir) / name / "presets" / f"{name}{DEFAULT_EXTENSIONS.get(format, '.' + format)}"
    files = exported.write(target)
    console = get_console()
    console.print(f"exported trial {number} of study {name} as {format}:", markup=False)
    for path in files:
        console.print(f"  {path}", markup=False)
    for note in exported.notes:
        console.print(f"note: {note}", markup=False)
    for step in exported.usage_for(target):
        console.print(f"to use: {step}", markup=False)
    if format in ("a1111", "comfyui") and not liked and not disliked:
        hint = f"give reference images: fabric-opt export {name} --format {format} --liked IMG --disliked IMG"
        console.print(hint, markup=False)


def _chosen_params(opt_study: optuna.Study, config: StudyConfig, trial: int | None):
    from optuna.trial import TrialState

    from optimize.study import stored_recommendation

    space = config.space
    if trial is not None:
        trials = {t.number: t for t in opt_study.get_trials(deepcopy=False)}
        if trial not in trials:
            raise ConfigError(
                f"study {opt_study.study_name!r} has no trial {trial} (trials 0..{max(trials, default=-1)})"
            )
        chosen = trials[trial]
        if chosen.state != TrialState.COMPLETE:
            raise ConfigError(f"trial {trial} is {chosen.state.name.lower()}, not complete; pick a complete trial")
        return space.to_params({n: chosen.params[n] for n in space.names}), trial, chosen.values[0]
    stored = stored_recommendation(opt_study)
    if stored is not None:
        return stored
    from optimize.recommend import recommend  # fits the GP: torch and botorch

    rec = recommend(opt_study, space, references=None, seed=config.seed)
    return rec.params, rec.best.trial_number, rec.best.estimate
