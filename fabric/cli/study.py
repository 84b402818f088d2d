"""``fabric-opt study | report | export``: run a study, report on it, export its preset.

Commands stay thin: parse flags into overrides of the study file, validate everything, then call
:mod:`optimize.study`, :mod:`optimize.report` and :mod:`optimize.export`. Every check that can
fail on user input runs before the Optuna study, the MLflow run or any file is created.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from fabric.cli import options
from fabric.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from optimize.recommend import Recommendation
    from optimize.study import StudyOutcome
    from studies import StudyConfig

__all__ = ["study", "report", "export"]

logger = logging.getLogger(__name__)

STORAGE = typer.Option(
    None, "--storage", envvar="FABRIC_OPT_STORAGE",
    help="Optuna storage: a journal file (default <runs-dir>/optuna.journal) or an RDB URL (sqlite:///x.db, postgresql://...).",
)  # fmt: skip
RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", envvar="FABRIC_OPT_RUNS_DIR", help="Folder for the default storage, baseline cache, plots and presets.")
TRACKING_URI = typer.Option(
    "sqlite:///mlflow.db", "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI: sqlite:///file.db, http://host:port, a database URL, or 'none' to disable.",
)  # fmt: skip


def _weights_table(items: list[str]) -> dict[str, str]:
    table: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"--objective-weights takes NAME=PATH (e.g. pickscore=/models/pickscore or pickscore=tiny), got {item!r}")
        table[name.strip()] = value.strip()
    return table


def _quiet_libraries() -> None:
    # Optuna logs every trial and MLflow its database migrations at INFO; the progress bars and
    # the summary say the same for a command-line user.
    import os

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a URL per trial run; the summary has one
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


# ---- study ----------------------------------------------------------------------------------


def study(
    objective: Optional[str] = typer.Option(None, "--objective", "-o", help="Objective spec: pickscore, hpsv2, target, 'pickscore,diversity', 'pickscore+0.5*aesthetic'. Alone it picks the matching built-in study."),
    study_name: Optional[str] = typer.Option(None, "--study", "-s", help="Built-in study (pickscore, hps, target, pickscore-diversity, tiny) or a study YAML file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Override the study's model: 'tiny', a hub id, a diffusers folder or a .safetensors/.ckpt file."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Override the sampler: botorch, gp, tpe, random, qmc, nsga2, cmaes."),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", help="Total trial budget of the study; a resumed study runs until it has this many finished trials."),
    storage: Optional[str] = STORAGE,
    name: Optional[str] = typer.Option(None, "--name", help="Study name in the storage and MLflow (default: the study's name). The same name resumes."),
    tracking_uri: str = TRACKING_URI,
    objective_weights: list[str] = typer.Option([], "--objective-weights", "-w", metavar="NAME=PATH", help="NAME=PATH (repeatable): reward-model weights (a file, folder, hub id, or 'tiny')."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Train prompts: a built-in list, .txt, .csv (prompt[,image] columns) or .json file."),
    validation_prompts: Optional[str] = typer.Option(None, "--validation-prompts", help="Held-out prompts for the report's comparison (same forms as --prompts)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the study seed (images, simulated user, sampler)."),
    prompt_batch: Optional[int] = typer.Option(None, "--prompt-batch", help="Prompts generated together per pipeline call (protocol.prompt_batch); more is faster where memory allows."),
    scheduler: Optional[str] = options.SCHEDULER,
    runs_dir: Path = RUNS_DIR,
    device: Optional[str] = options.DEVICE,
    dtype: Optional[str] = options.DTYPE,
    token_cache_gb: Optional[float] = options.TOKEN_CACHE_GB,
) -> None:
    """Run (or resume) a study: tune FABRIC's parameters against an objective, track every trial in
    MLflow, and write the recommended preset."""
    from optimize.study import StorageSpec, run_study
    from optimize.tracking import make_tracker
    from studies import resolve_study

    # 1. Everything the user typed, validated before anything is loaded or written
    overrides: dict[str, Any] = {}
    for key, value in (("model", model), ("trials", trials), ("seed", seed), ("scheduler", scheduler)):
        if value is not None:
            overrides[key] = value
    if sampler is not None:
        overrides["sampler"] = {"name": sampler}
    if prompt_batch is not None:
        overrides["protocol"] = {"prompt_batch": prompt_batch}
    if objective_weights:
        overrides["objective_weights"] = _weights_table(objective_weights)
    split_overrides = {k: v for k, v in (("train", prompts), ("validation", validation_prompts)) if v is not None}
    if split_overrides:
        overrides["prompts"] = split_overrides
    if name is not None:
        overrides["name"] = name
    config = resolve_study(study_name, objective, overrides)
    tracker = make_tracker(tracking_uri)
    spec = StorageSpec.parse(storage, runs_dir)
    dev, dt = options.resolve_device_dtype(device, dtype)
    cache_bytes = options.token_cache_bytes(token_cache_gb)

    # 2. Run, with progress bars on stderr and the summary on stdout
    _quiet_libraries()
    with _RichProgress(_console(stderr=True)) as progress:
        outcome = run_study(
            config, storage=spec, tracker=tracker, runs_dir=runs_dir, device=dev, dtype=dt, cache_bytes=cache_bytes, progress=progress
        )
    _print_summary(outcome)


class _RichProgress:
    """rich progress bars for :func:`optimize.study.run_study` (an ``optimize.study.StudyProgress``)."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )  # fmt: skip
        self.status = self.bar.add_task("loading models", total=None)
        self.trials: Any = None
        self.rounds: Any = None

    def __enter__(self) -> "_RichProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def begin(self, name: str, budget: int, finished: int, to_run: int) -> None:
        self.bar.update(self.status, visible=False)
        self.trials = self.bar.add_task(f"study {name}: trials", total=budget, completed=finished)

    def baseline(self, n_prompts: int) -> None:
        self.bar.update(self.status, description=f"no-feedback baseline on {n_prompts} prompt(s)")

    def trial_start(self, number: int, total_rounds: int) -> None:
        if self.rounds is not None:
            self.bar.remove_task(self.rounds)
        self.rounds = self.bar.add_task(f"  trial {number}: rounds", total=total_rounds)

    def round_done(self, number: int, prompt_index: int, round_index: int) -> None:
        if self.rounds is not None:
            self.bar.advance(self.rounds)

    def trial_end(self, trial: "optuna.trial.FrozenTrial") -> None:
        if self.trials is not None:
            self.bar.advance(self.trials)
        values = ", ".join(f"{v:.4g}" for v in trial.values) if trial.values else ""
        self.bar.console.print(f"trial {trial.number} {trial.state.name.lower()}" + (f": {values}" if values else ""))

    def finishing(self) -> None:
        if self.rounds is not None:
            self.bar.remove_task(self.rounds)
            self.rounds = None
        self.bar.update(self.status, visible=True, description="recommendation, plots, presets")

    def end(self) -> None:
        self.bar.update(self.status, visible=False)

    # report's held-out evaluation reuses the same bars
    def evaluating(self, description: str) -> None:
        self.bar.update(self.status, visible=True, description=description)


def _params_table(title: str, columns: dict[str, Any]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("parameter")
    for header in columns:
        table.add_column(header, justify="right")
    names = list(next(iter(columns.values())).to_dict()) if columns else []
    for key in names:
        table.add_row(key, *(_fmt(getattr(p, key)) for p in columns.values()))
    return table


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_summary(outcome: "StudyOutcome") -> None:
    from optuna.trial import TrialState

    from optimize.tracking import ui_command

    console = _console()
    study, config = outcome.study, outcome.config
    counts = {s: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state in counts:
            counts[t.state] += 1
    finished = sum(counts.values())
    verb = "resumed" if outcome.resumed else "created"
    console.print(f"[bold]Study {study.study_name}[/bold] ({verb}; storage {outcome.storage})")
    console.print(
        f"trials: {finished} of {config.trials} finished ({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed); {len(outcome.new_trials)} run now"
    )
    if finished >= config.trials and not outcome.new_trials:
        console.print(f"the budget of {config.trials} trials is spent; pass --trials N (> {config.trials}) to run more")
    rec = outcome.recommendation
    if rec is not None:
        _print_recommendation(console, rec, len(study.directions))
    if outcome.presets:
        console.print(f"recommended preset: {outcome.presets[0]}  (fabric-opt generate --preset {outcome.presets[0]})")
        others = ", ".join(str(p) for p in outcome.presets[1:] if not p.name.endswith(".preset.json"))
        console.print(f"exports: {others}")
    if outcome.plots:
        console.print(f"plots: {', '.join(str(p) for p in outcome.plots)}")
    if outcome.tracking_uri:
        console.print(f"MLflow: {outcome.tracking_uri} (experiment {study.study_name}, parent run {outcome.parent_run_id})")
        if outcome.tracking_url and outcome.tracking_url.startswith("http"):
            console.print(f"  {outcome.tracking_url}")
        else:
            console.print(f"  {ui_command(outcome.tracking_uri)}")
    elif outcome.tracking_failure:
        console.print(f"MLflow: tracking failed ({outcome.tracking_failure}); the trials are in {outcome.storage}")
    else:
        console.print("MLflow: tracking disabled")


def _print_recommendation(console: Any, rec: "Recommendation", n_objectives: int) -> None:
    what = "posterior mean" if rec.method == "posterior_mean" else rec.method.replace("_", " ")
    objective = " (first objective)" if n_objectives > 1 else ""
    console.print(
        f"recommended: trial {rec.best.trial_number} by {what}{objective}, estimate {rec.best.estimate:.4g}; "
        f"noisy best: trial {rec.noisy_best.trial_number}, observed {rec.noisy_best.observed:.4g}"
    )
    columns = {"recommended": rec.params}
    if rec.noisy_best.trial_number != rec.best.trial_number:
        columns["noisy best"] = rec.noisy_best.params
    console.print(_params_table("Parameters", columns))


# ---- report -------------------------------------------------------------------------------


def report(
    name: str = typer.Argument(..., help="Study name."),
    storage: Optional[str] = STORAGE,
    runs_dir: Path = RUNS_DIR,
    tracking_uri: str = TRACKING_URI,
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Score the recommendation against the defaults on the held-out prompts (generates images)."),
    extra_seeds: int = typer.Option(0, "--extra-seeds", help="Re-evaluate the top candidates on this many fresh seed sets before recommending."),
    top_k: int = typer.Option(3, "--top-k", help="Candidates to re-evaluate with --extra-seeds."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default <runs-dir>/<name>/report)."),
    showcase: int = typer.Option(1, "--showcase", help="Held-out prompts in showcase.png (first and final rounds, no feedback vs the defaults vs tuned); 0 for none."),
    device: Optional[str] = options.DEVICE,
    dtype: Optional[str] = options.DTYPE,
    token_cache_gb: Optional[float] = options.TOKEN_CACHE_GB,
) -> None:
    """Report on a study: best and recommended parameters, held-out comparison with the paper's and
    the A1111 defaults (paired difference, bootstrap CI), parameter importances, plots."""
    from optimize.report import build_report, write_report
    from optimize.study import StorageSpec, check_objectives, load_components, make_evaluator, open_study
    from optimize.tracking import make_tracker

    if extra_seeds < 0 or top_k < 1 or showcase < 0:
        raise ConfigError("--extra-seeds and --showcase must be >= 0 and --top-k >= 1")
    spec = StorageSpec.parse(storage, runs_dir)
    tracker = make_tracker(tracking_uri)
    dev, dt = options.resolve_device_dtype(device, dtype)
    cache_bytes = options.token_cache_bytes(token_cache_gb)
    opt_study, config = open_study(name, spec)
    _quiet_libraries()
    needs_models = (compare and config.protocol.validation_prompts and config.compare_with) or extra_seeds > 0
    evaluator = None
    with _RichProgress(_console(stderr=True)) as progress:
        if needs_models:
            check_objectives(config)
            components = load_components(config, dev, dt, cache_bytes=cache_bytes)
            evaluator = make_evaluator(config, components, Path(runs_dir) / name / "baseline-cache.json")
            progress.evaluating("held-out comparison: generating")
            evaluator.on_round = lambda p, r, images, scores: progress.bar.advance(progress.status)
        else:
            progress.evaluating("fitting the recommendation")
        result = build_report(opt_study, config, evaluator=evaluator, references=config.compare_with if compare else (), extra_seeds=extra_seeds, top_k=top_k)
        out_dir = out or Path(runs_dir) / name / "report"
        files = write_report(result, opt_study, out_dir)
        n_showcase = min(showcase, len(config.protocol.validation_prompts))
        if evaluator is not None and result.recommendation is not None and compare and n_showcase:
            from optimize.showcase import feedback_showcase, showcase_candidates

            progress.evaluating("showcase: generating")
            rows = showcase_candidates(result.recommendation, config.space, config.compare_with)
            image = feedback_showcase(evaluator, rows, prompts=range(n_showcase))
            image.save(out_dir / "showcase.png")
            files.append(out_dir / "showcase.png")
    if tracker.attach(opt_study):
        tracker.log_artifacts(files, "report")
    _print_report(result, files)


def _print_report(result: Any, files: list[Path]) -> None:
    from rich.table import Table

    from optimize.report import small_sample_caution

    console = _console()
    states = ", ".join(f"{n} {s.lower()}" for s, n in result.states.items() if n)
    console.print(f"[bold]Study {result.study_name}[/bold]: {states}")
    for number, reason in result.failures:
        console.print(f"  trial {number} failed: {reason}", markup=False)
    rec = result.recommendation
    if rec is None:
        console.print("no complete trial yet: nothing to recommend")
    else:
        _print_recommendation(console, rec, len(result.directions))
        if rec.comparisons:
            table = Table(title="Held-out comparison (recommended - reference, paired per prompt)", title_justify="left")
            for col in ("reference", "mean difference", "CI", "better"):
                table.add_column(col, justify="right" if col != "reference" else "left")
            for c in rec.comparisons:
                table.add_row(c.reference, f"{c.mean_difference:+.4g}", f"[{c.ci_low:+.4g}, {c.ci_high:+.4g}] ({c.confidence:.0%})", "yes" if c.better else "not shown")
            console.print(table)
            caution = small_sample_caution(rec.comparisons)
            if caution:
                console.print(f"caution: {caution}")
    if len(result.best) > 1:
        console.print(f"Pareto front: trials {', '.join(str(b['number']) for b in result.best)}")
    if result.importances:
        table = Table(title="Parameter importances (fANOVA)", title_justify="left")
        table.add_column("parameter")
        table.add_column("importance", justify="right")
        for key, value in result.importances.items():
            table.add_row(key, f"{value:.3f}")
        console.print(table)
    console.print(f"report: {', '.join(str(p) for p in files)}")


# ---- export -------------------------------------------------------------------------------


def export(
    name: str = typer.Argument(..., help="Study name."),
    format: str = typer.Option("json", "--format", "-f", help="json (fabric-opt preset), a1111, comfyui or diffusers (Python script)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default <runs-dir>/<name>/presets/<name>.<ext>)."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Export this trial's parameters instead of the recommendation (e.g. another Pareto point)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt written into the preset (default: the study's first train prompt)."),
    liked: list[Path] = typer.Option([], "--liked", help="Liked reference image path (repeatable)."),
    disliked: list[Path] = typer.Option([], "--disliked", help="Disliked reference image path (repeatable)."),
    storage: Optional[str] = STORAGE,
    runs_dir: Path = RUNS_DIR,
    tracking_uri: str = TRACKING_URI,
) -> None:
    """Export a study's recommended (or any trial's) parameters as a preset for fabric-opt, the A1111
    extension, ComfyUI or a Python script; prints what the target cannot represent."""
    from optimize.export import DEFAULT_EXTENSIONS, available_formats, export_params
    from optimize.study import StorageSpec, export_context, open_study
    from optimize.tracking import make_tracker

    if format not in available_formats():
        raise ConfigError(f"unknown export format {format!r}; known: {', '.join(available_formats())}")
    for path in (*liked, *disliked):
        options.existing_file(path, "reference image")
    spec = StorageSpec.parse(storage, runs_dir)
    tracker = make_tracker(tracking_uri)
    opt_study, config = open_study(name, spec)
    params, number, estimate = _chosen_params(opt_study, config, trial)
    context = export_context(
        config, trial=number, estimate=estimate, prompt=prompt, study_name=name,
        liked=[str(p.resolve()) for p in liked], disliked=[str(p.resolve()) for p in disliked],
    )  # fmt: skip
    exported = export_params(params, format, context)
    target = out or Path(runs_dir) / name / "presets" / f"{name}{DEFAULT_EXTENSIONS.get(format, '.' + format)}"
    files = exported.write(target)
    if tracker.attach(opt_study):
        tracker.log_artifacts(files, "presets")
    console = _console()
    console.print(f"exported trial {number} of study {name} as {format}: {', '.join(str(f) for f in files)}")
    for note in exported.notes:
        console.print(f"note: {note}")


def _chosen_params(opt_study: "optuna.Study", config: "StudyConfig", trial: int | None):
    from optuna.trial import TrialState

    from optimize.recommend import recommend

    space = config.space
    if trial is not None:
        trials = {t.number: t for t in opt_study.get_trials(deepcopy=False)}
        if trial not in trials:
            raise ConfigError(f"study {opt_study.study_name!r} has no trial {trial} (trials 0..{max(trials, default=-1)})")
        chosen = trials[trial]
        if chosen.state != TrialState.COMPLETE:
            raise ConfigError(f"trial {trial} is {chosen.state.name.lower()}, not complete; pick a complete trial")
        return space.to_params({n: chosen.params[n] for n in space.names}), trial, chosen.values[0]
    rec = recommend(opt_study, space, references=None, seed=config.seed)
    return rec.params, rec.best.trial_number, rec.best.estimate
