"""``fabric-opt report``: best and recommended parameters, the held-out comparison, plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from fabric.errors import ConfigError
from fabric.files import replacing
from fabric_opt_cli import options
from fabric_opt_cli.console import RichProgress, get_console, print_recommendation, quiet_libraries

if TYPE_CHECKING:
    from rich.table import Table

    from optimize.recommend import Comparison

__all__ = ["report"]


def report(
    name: str = typer.Argument(..., help="Study name."),
    storage: Optional[str] = options.STORAGE,
    runs_dir: Path = options.RUNS_DIR,
    tracking_uri: Optional[str] = options.TRACKING_URI,
    compare: bool = typer.Option(
        True,
        "--compare/--no-compare",
        help="Score the recommendation against the defaults on the held-out prompts (generates images).",
    ),
    extra_seeds: int = typer.Option(
        0, "--extra-seeds", help="Re-evaluate the top candidates on this many fresh seed sets before recommending."
    ),
    top_k: int = typer.Option(3, "--top-k", help="Candidates to re-evaluate with --extra-seeds."),
    compare_seeds: int = typer.Option(
        1,
        "--compare-seeds",
        help="Replay each held-out prompt on this many seed sets in the comparison (narrows a noisy user's CI).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default <runs-dir>/<name>/report)."),
    showcase: int = typer.Option(
        1,
        "--showcase",
        help=(
            "Held-out prompts in showcase.png (first and final rounds, no feedback vs the defaults vs tuned); 0 "
            "for none."
        ),
    ),
    device: Optional[str] = options.DEVICE,
    dtype: Optional[str] = options.DTYPE,
    token_cache_gb: Optional[float] = options.TOKEN_CACHE_GB,
) -> None:
    """Report on a study: best and recommended parameters, held-out comparison with the paper's and
    the A1111 defaults (paired difference, bootstrap CI), parameter importances, plots."""
    from optimize.report import build_report, write_report
    from optimize.study import StorageSpec, check_objectives, load_components, make_evaluator, open_study
    from optimize.tracking import make_tracker

    if extra_seeds < 0 or top_k < 1 or showcase < 0 or compare_seeds < 1:
        raise ConfigError("--extra-seeds and --showcase must be >= 0, --top-k and --compare-seeds >= 1")
    spec = StorageSpec.parse(storage, runs_dir)
    tracker = make_tracker(options.tracking_uri(tracking_uri, runs_dir))
    dev, dt = options.resolve_device_dtype(device, dtype)
    cache_bytes = options.token_cache_bytes(token_cache_gb)
    opt_study, config = open_study(name, spec)
    quiet_libraries()
    needs_models = (compare and config.protocol.validation_prompts and config.compare_with) or extra_seeds > 0
    evaluator = None
    with RichProgress(get_console(stderr=True)) as progress:
        plan = _replay_plan(
            opt_study,
            config,
            compare=compare,
            extra_seeds=extra_seeds,
            top_k=top_k,
            showcase=showcase,
            compare_seeds=compare_seeds,
        )
        if needs_models:
            check_objectives(config)
            components = load_components(config, dev, dt, cache_bytes=cache_bytes)
            evaluator = make_evaluator(config, components, Path(runs_dir) / name / "baseline-cache.json")
            # the protocol replayed: baselines, held-out comparison, showcase; one bar of generated rounds
            evaluator.on_progress = progress.round
            progress.replay("replay: no-feedback baselines", plan["total"])
            if config.protocol.value == "improvement":
                if compare and config.protocol.validation_prompts and config.compare_with:
                    for replicate in range(compare_seeds):
                        evaluator.baseline("validation", replicate)
                for replicate in range(1, extra_seeds + 1):
                    evaluator.baseline("train", replicate)
            progress.phase("replay: held-out comparison", completed=plan["baseline"])
        else:
            progress.evaluating("fitting the recommendation")
        result = build_report(
            opt_study,
            config,
            evaluator=evaluator,
            references=config.compare_with if compare else (),
            extra_seeds=extra_seeds,
            top_k=top_k,
            seed_sets=compare_seeds,
        )
        out_dir = out or Path(runs_dir) / name / "report"
        files = write_report(result, opt_study, out_dir)
        n_showcase = min(showcase, len(config.protocol.validation_prompts))
        if evaluator is not None and result.recommendation is not None and compare and n_showcase:
            from optimize.showcase import feedback_showcase, showcase_candidates

            progress.phase("replay: showcase", completed=plan["baseline"] + plan["compare"])
            rows = showcase_candidates(result.recommendation, config.space, config.compare_with)
            image = feedback_showcase(evaluator, rows, prompts=range(n_showcase))
            with replacing(out_dir / "showcase.png") as tmp:
                image.save(tmp, format="PNG")
            files.append(out_dir / "showcase.png")
        progress.evaluating("logging the report to MLflow")
        if tracker.attach(opt_study):
            tracker.log_artifacts(files, "report")
    print_report(result, files)


def _replay_plan(
    opt_study: Any, config: Any, *, compare: bool, extra_seeds: int, top_k: int, showcase: int, compare_seeds: int = 1
) -> dict:
    """Rounds the report will generate, per phase (for the progress bar's time left)."""
    from optuna.trial import TrialState

    p = config.protocol
    rounds, held_out, train = p.rounds, len(p.validation_prompts), len(p.prompts)
    refs = len(config.compare_with) if compare and held_out else 0
    complete = len(opt_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    improvement = p.value == "improvement"
    baseline = (held_out * rounds * compare_seeds if refs and improvement else 0) + (
        extra_seeds * train * rounds if improvement else 0
    )
    # each comparison evaluates the recommendation (once) and the reference, per seed set; extra
    # seeds re-run the top candidates
    comparison = (1 + refs) * held_out * rounds * compare_seeds + min(top_k, complete) * extra_seeds * train * rounds
    shown = min(showcase, held_out) * (2 + refs) * rounds if refs else 0  # no feedback, references, tuned
    return {"baseline": baseline, "compare": comparison, "total": baseline + comparison + shown}


def print_report(result: Any, files: list[Path]) -> None:
    from rich.table import Table

    from optimize.report import small_sample_caution

    console = get_console()
    states = ", ".join(f"{n} {s.lower()}" for s, n in result.states.items() if n)
    console.print(f"[bold]Study {result.study_name}[/bold]: {states}")
    for number, reason in result.failures:
        console.print(f"  trial {number} failed: {reason}", markup=False)
    rec = result.recommendation
    if rec is None:
        console.print("no complete trial yet: nothing to recommend")
    else:
        print_recommendation(console, rec, len(result.directions))
        if rec.comparisons:
            title = "Held-out comparison (recommended - reference, paired per prompt)"
            console.print(_comparison_table(title, rec.comparisons, "better"))
            caution = small_sample_caution(rec.comparisons)
            if caution:
                console.print(f"caution: {caution}")
        if rec.guard_comparisons:
            title = "Held-out guard (recommended - reference, final round, paired per prompt)"
            console.print(_comparison_table(title, rec.guard_comparisons, "verdict"))
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


def _comparison_table(title: str, comparisons: Sequence[Comparison], last: str) -> Table:
    """One row per reference: mean difference, CI and ``better`` (yes / not shown) or ``verdict``."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("reference", "mean difference", "CI", last):
        table.add_column(col, justify="right" if col != "reference" else "left")
    for c in comparisons:
        table.add_row(
            c.reference,
            f"{c.mean_difference:+.4g}",
            f"[{c.ci_low:+.4g}, {c.ci_high:+.4g}] ({c.confidence:.0%})",
            ("yes" if c.better else "not shown") if last == "better" else c.verdict,
        )
    return table
