"""``fabric-opt prefer NAME``: preferential tuning answered by a simulated person.

The engine is the Tune tab's (:class:`optimize.preference.PreferenceTuner`, stored in the Optuna
storage, so running the command again resumes it); a reward model stands in for the person
(:class:`optimize.simulated_person.SimulatedPerson`: Bradley-Terry answers with noise). Scripts
that have their own person call :func:`optimize.preference.run_queries` with a function instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fabric.errors import ConfigError
from fabric_opt_cli import options

__all__ = ["prefer"]


def prefer(
    name: str = typer.Argument(..., help="Tuner name in the storage; the same name resumes it."),
    queries: int = typer.Option(
        20, "--queries", "-n", help="Total answered queries wanted (a resumed tuner adds the rest)."
    ),
    objective: str = typer.Option(
        "toy-taste", "--objective", "-o", help="The simulated person's taste (one objective)."
    ),
    objective_option: list[str] = typer.Option(
        [], "--objective-option", help="KEY=VALUE option of the objective (repeatable), e.g. taste=warm."
    ),
    objective_weights: Optional[str] = typer.Option(None, "--objective-weights", help="Weights of the objective."),
    temperature: float = typer.Option(
        0.05, "--temperature", help="Bradley-Terry temperature of the person, in the objective's units (0: noiseless)."
    ),
    prompts: str = typer.Option(
        "toy", "--prompts", help="Prompts the queries cycle through: a built-in list or a file."
    ),
    model: str = options.MODEL,
    options_per_query: int = typer.Option(2, "--options", help="Presets per query (2: pairs; more: best of k)."),
    acquisition: str = typer.Option(
        "eubo", "--acquisition", help="eubo (expected utility of the best option) or random."
    ),
    initial_queries: int = typer.Option(2, "--initial-queries", help="Space-filling queries before the model chooses."),
    n_images: int = typer.Option(4, "--n-images", help="Images per round."),
    steps: int = typer.Option(20, "--steps", help="Denoising steps of every round (fixed, not searched)."),
    guidance_scale: float = typer.Option(6.0, "--guidance-scale", help="Guidance scale (fixed, not searched)."),
    negative_prompt: str = typer.Option("", "--negative-prompt"),
    space: Optional[Path] = typer.Option(
        None, "--space", help="Search-space YAML (the studies' layout; default: all of FABRIC)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the queries, the person's draws and the acquisition."),
    export: list[str] = typer.Option(
        [], "--export", help="Export the recommendation: json, a1111, comfyui, diffusers (repeatable)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for exports (default <runs-dir>/<name>/presets)."),
    storage: Optional[str] = options.STORAGE,
    runs_dir: Path = options.RUNS_DIR,
    device: Optional[str] = options.DEVICE,
    dtype: Optional[str] = options.DTYPE,
) -> None:
    """Tune a FABRIC preset from pairwise choices (PairwiseGP + EUBO), answered by a simulated person;
    prints the recommendation and exports it."""
    import yaml

    from fabric.params import FabricParams
    from optimize.export import DEFAULT_EXTENSIONS, ExportContext, available_formats
    from optimize.preference import PreferenceConfig, PreferenceTuner
    from optimize.prompts import load_prompts
    from optimize.space import SearchSpace
    from optimize.study import StorageSpec

    # 1. Everything the user typed, checked before a model is loaded or the tuner created
    for fmt_name in export:
        if fmt_name not in available_formats():
            raise ConfigError(f"unknown export format {fmt_name!r}; known: {', '.join(available_formats())}")
    objective_options: dict[str, Any] = {}
    for item in objective_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--objective-option takes KEY=VALUE (e.g. taste=warm), got {item!r}")
        objective_options[key.strip()] = yaml.safe_load(value)
    base = FabricParams.paper().replace(steps=steps, guidance_scale=guidance_scale)
    search = SearchSpace.from_yaml(space) if space is not None else SearchSpace.default()
    search = SearchSpace(
        search.params, search.fixed, base=search.base.replace(steps=steps, guidance_scale=guidance_scale)
    )
    config = PreferenceConfig(
        space=search, options=options_per_query, acquisition=acquisition,  # type: ignore[arg-type]
        initial_queries=initial_queries, seed=seed,
    )  # fmt: skip
    prompt_list = list(load_prompts(prompts, what="--prompts").prompts)
    spec = StorageSpec.parse(storage, runs_dir)
    dev, dt = options.resolve_device_dtype(device, dtype)

    # 2. The tuner (created or resumed), the model and the simulated person
    from fabric.fabric_generator import FabricGenerator
    from fabric_opt_cli.console import get_console, params_table, quiet_libraries
    from objectives.registry import load_objective
    from optimize.preference import run_queries
    from optimize.simulated_person import SimulatedPerson

    quiet_libraries()
    tuner = PreferenceTuner.open(name, spec, config)
    console = get_console()
    already = len(tuner.answered)
    person = SimulatedPerson(
        FabricGenerator.from_pretrained(model, device=dev, dtype=dt, plain_cache_size=64),
        load_objective(objective, weights=objective_weights, device=dev, **objective_options),
        prompt_list, base=base, n_images=n_images, negative_prompt=negative_prompt, temperature=temperature, seed=seed,
    )  # fmt: skip

    # 3. Queries until the budget is answered
    from rich.progress import Progress

    with Progress(console=get_console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"tuner {name}: queries", total=max(queries, already), completed=already)

        def answered(query: Any) -> None:
            bar.advance(task)
            bar.console.print(f"query {query.index + 1} ({query.source}): option {'ABCDEFGH'[query.winner]} preferred")

        rec = run_queries(tuner, person, queries, context=person.context, on_answer=answered)

    # 4. Report and export
    console.print(
        f"[bold]Tuner {name}[/bold] ({'resumed' if already else 'created'}; storage {spec}): {rec.answers} answers; "
        f"recommended by {rec.method.replace('_', ' ')} among {len(rec.ranked)} presets shown"
        + (f", utility {rec.best.utility:.3f} ± {rec.best.utility_std:.3f}" if rec.method == "posterior_mean" else "")
    )
    console.print(params_table("Parameters", {"recommended": rec.params, "paper": base}))
    folder = out or Path(runs_dir) / name / "presets"
    context = ExportContext(
        prompt=prompt_list[0], negative_prompt=negative_prompt, model=model, n_images=n_images, seed=seed
    )
    for fmt_name in export:
        files = tuner.export(fmt_name, context).write(
            folder / f"{name}{DEFAULT_EXTENSIONS.get(fmt_name, '.' + fmt_name)}"
        )
        console.print(f"exported {fmt_name}: {', '.join(str(f) for f in files)}")
