"""What every command prints: rich consoles, progress bars, parameter tables and summaries.

Commands print results on stdout and progress on stderr; libraries that log every trial or
migration are quieted to warnings, since the progress bars and summaries say the same.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

from optimize.study import StudyProgress

if TYPE_CHECKING:
    import optuna

    from optimize.recommend import Recommendation
    from optimize.study import StudyOutcome

__all__ = [
    "get_console",
    "quiet_libraries",
    "RichProgress",
    "params_table",
    "fmt",
    "print_summary",
    "print_recommendation",
]


def quiet_libraries() -> None:
    # Optuna logs every trial and MLflow its database migrations at INFO; the progress bars and
    # the summary say the same for a command-line user.
    import os

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a URL per trial run; the summary has one
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # linear_operator (under BoTorch) decorates functions with torch.jit.script at import, which
    # torch 2.14 deprecates: a warning no user of this command can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def get_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class RichProgress(StudyProgress):
    """rich progress bars with time left for :func:`optimize.study.run_study` (an
    ``optimize.study.StudyProgress``) and for ``report``'s replay of the protocol."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
            disable=not console.is_terminal,  # no bars (and no stray blank line) in logs and pipes
        )  # fmt: skip
        self.status = self.bar.add_task("loading models", total=None)
        self.trials: Any = None
        self.rounds: Any = None
        self.work: Any = None

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def begin(self, name: str, budget: int, finished: int, to_run: int) -> None:
        self._drop_work()
        self.bar.update(self.status, visible=False)
        self.trials = self.bar.add_task(f"study {name}: trials", total=budget, completed=finished)

    def baseline(self, n_prompts: int, total_rounds: int) -> None:
        self.bar.update(self.status, visible=False)
        self.work = self.bar.add_task(f"no-feedback baseline, {n_prompts} prompt(s): rounds", total=total_rounds)

    def baseline_round(self) -> None:
        if self.work is not None:
            self.bar.advance(self.work)

    def trial_start(self, number: int, total_rounds: int) -> None:
        if self.rounds is not None:
            self.bar.remove_task(self.rounds)
        self.rounds = self.bar.add_task(f"  trial {number}: rounds", total=total_rounds)

    def round_done(self, number: int, prompt_index: int, round_index: int) -> None:
        if self.rounds is not None:
            self.bar.advance(self.rounds)

    def trial_end(self, trial: optuna.trial.FrozenTrial) -> None:
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

    # report: a spinner for work without a count, a bar with time left for generated rounds
    def evaluating(self, description: str) -> None:
        self._drop_work()
        self.bar.update(self.status, visible=True, description=description)

    def replay(self, description: str, total_rounds: int) -> None:
        """Generated rounds from here on advance one bar of ``total_rounds`` (:meth:`round`)."""
        self._drop_work()
        self.bar.update(self.status, visible=False)
        self.work = self.bar.add_task(description, total=total_rounds)

    def round(self) -> None:
        if self.work is not None:
            self.bar.advance(self.work)

    def phase(self, description: str, completed: int | None = None) -> None:
        """Rename the replay bar (and set its count, e.g. after rounds read from a cache)."""
        if self.work is not None:
            self.bar.update(self.work, description=description)
            if completed is not None:
                self.bar.update(self.work, completed=completed)

    def _drop_work(self) -> None:
        if self.work is not None:
            self.bar.remove_task(self.work)
            self.work = None


def params_table(title: str, columns: dict[str, Any]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("parameter")
    for header in columns:
        table.add_column(header, justify="right")
    names = list(next(iter(columns.values())).to_dict()) if columns else []
    for key in names:
        table.add_row(key, *(fmt(getattr(p, key)) for p in columns.values()))
    return table


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_with_progress(config: Any, **kwargs: Any) -> StudyOutcome:
    """``optimize.run_study(config, **kwargs)`` with progress bars on stderr, then its summary on
    stdout: what ``fabric-opt study`` and ``fabric-opt worker`` print."""
    from optimize.study import run_study

    quiet_libraries()
    with RichProgress(get_console(stderr=True)) as progress:
        outcome = run_study(config, progress=progress, **kwargs)
    print_summary(outcome)
    return outcome


def print_summary(outcome: StudyOutcome) -> None:
    from optuna.trial import TrialState

    from optimize.tracking import ui_command, ui_url
    from optimize.workers import budget_trials

    console = get_console()
    study, config = outcome.study, outcome.config
    counted = budget_trials(study)
    counts = {s: sum(t.state == s for t in counted) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    died = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - counts[TrialState.FAIL]
    finished = len(counted)
    verb = "resumed" if outcome.resumed else "created"
    console.print(f"[bold]Study {study.study_name}[/bold] ({verb}; storage {outcome.storage})")
    lost = f"; {died} lost with their worker, retried and not counted" if died else ""
    console.print(
        f"trials: {finished} of {config.trials} finished ({counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed{lost}); "
        f"{len(outcome.new_trials)} run now"
    )
    if finished >= config.trials and not outcome.new_trials:
        console.print(f"the budget of {config.trials} trials is spent; pass --trials N (> {config.trials}) to run more")
    rec = outcome.recommendation
    if rec is not None:
        print_recommendation(console, rec, len(study.directions))
    if outcome.presets:
        console.print(f"recommended preset: {outcome.presets[0]}  (fabric-opt generate --preset {outcome.presets[0]})")
        others = ", ".join(str(p) for p in outcome.presets[1:])
        console.print(f"exports: {others}", markup=False)
        console.print(
            "  the A1111 and ComfyUI presets apply feedback only with reference images: "
            f"fabric-opt export {study.study_name} --format a1111 --liked IMG --disliked IMG (or --format comfyui)",
            markup=False,
        )
    if outcome.plots:
        console.print(f"plots: {', '.join(str(p) for p in outcome.plots)}")
    if outcome.tracking_uri:
        console.print(
            f"MLflow: {outcome.tracking_uri} (experiment {study.study_name}, study run {outcome.parent_run_id})",
            markup=False,
        )
        if outcome.tracking_url and outcome.tracking_url.startswith("http"):
            console.print(f"  open {outcome.tracking_url}", markup=False)
        else:
            console.print(f"  {ui_command(outcome.tracking_uri)}", markup=False)
            console.print(f"  then open {ui_url(outcome.tracking_uri, outcome.experiment_id)}", markup=False)
    elif outcome.tracking_failure:
        console.print(f"MLflow: tracking failed ({outcome.tracking_failure}); the trials are in {outcome.storage}")
    else:
        console.print("MLflow: tracking disabled")


def print_recommendation(console: Any, rec: Recommendation, n_objectives: int) -> None:
    what = "posterior mean" if rec.method == "posterior_mean" else rec.method.replace("_", " ")
    objective = " (first objective)" if n_objectives > 1 else ""
    console.print(
        f"recommended: trial {rec.best.trial_number} by {what}{objective}, estimate {rec.best.estimate:.4g}; "
        f"noisy best: trial {rec.noisy_best.trial_number}, observed {rec.noisy_best.observed:.4g}"
    )
    columns = {"recommended": rec.params}
    if rec.noisy_best.trial_number != rec.best.trial_number:
        columns["noisy best"] = rec.noisy_best.params
    console.print(params_table("Parameters", columns))
