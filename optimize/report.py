"""Study reports: best and recommended parameters, the held-out comparison with the defaults,
parameter importances, and plots (PNG, matplotlib's Agg canvas; pyplot is never imported, so no
global backend state is touched).

Plots (:func:`save_plots`):

* ``history.png``: every trial's value (pruned and failed trials marked), the best value so far,
  warm-start and recommended trials labelled; one panel per objective;
* ``importances.png``: fANOVA importances of the searched parameters (first objective);
* ``pareto.png`` (several objectives): all complete trials of the first two objectives, the
  Pareto front highlighted;
* ``comparison.png`` (with a held-out comparison): recommended minus each reference, mean and
  bootstrap confidence interval.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric.errors import ConfigError
from fabric.files import replacing, write_text_atomic
from optimize.workers import finished_states

if TYPE_CHECKING:
    import optuna

    from optimize.config import StudyConfig
    from optimize.protocol import TrialEvaluator
    from optimize.recommend import Comparison, Recommendation

__all__ = [
    "StudyReport",
    "build_report",
    "objective_labels",
    "param_importances",
    "plot_comparison",
    "plot_history",
    "plot_importances",
    "plot_pareto",
    "save_plots",
    "small_sample_caution",
    "write_report",
    "write_trial_table",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyReport:
    """Everything ``fabric-opt report`` shows.

    Attributes:
        study_name: the study.
        objective_names: its objectives.
        directions: ``"maximize"`` / ``"minimize"`` per objective.
        states: trial counts by state (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ...).
        best: the best observed trials (one; the Pareto front for several objectives), each
            ``{"number", "values", "params"}`` with the FABRIC parameters.
        recommendation: the noise-aware recommendation (``None`` without a complete trial).
        importances: parameter -> importance (sums to 1), or ``None`` when not computable.
        config: a summary of the study's settings.
        failures: ``(trial number, one-line reason)`` of every failed trial.
    """

    study_name: str
    objective_names: tuple[str, ...]
    directions: tuple[str, ...]
    states: Mapping[str, int]
    best: tuple[Mapping[str, Any], ...]
    recommendation: Recommendation | None
    importances: Mapping[str, float] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    failures: tuple[tuple[int, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable data (written as ``report.json``)."""
        rec = self.recommendation
        out: dict[str, Any] = {
            "study": self.study_name,
            "objectives": list(self.objective_names),
            "directions": list(self.directions),
            "trials": dict(self.states),
            "best": [dict(b) for b in self.best],
            "importances": dict(self.importances) if self.importances is not None else None,
            "config": dict(self.config),
            "failures": [{"trial": n, "reason": r} for n, r in self.failures],
            "recommendation": None,
        }
        if rec is not None:
            out["recommendation"] = {
                "method": rec.method,
                "trial": rec.best.trial_number,
                "estimate": _num(rec.best.estimate),
                "observed": _num(rec.best.observed),
                "posterior_mean": _num(rec.best.posterior_mean),
                "posterior_std": _num(rec.best.posterior_std),
                "reevaluated": list(rec.best.reevaluated),
                "params": rec.params.to_dict(),
                "noisy_best": {
                    "trial": rec.noisy_best.trial_number,
                    "observed": _num(rec.noisy_best.observed),
                    "params": rec.noisy_best.params.to_dict(),
                },
                "comparisons": [_comparison_record(c) for c in rec.comparisons],
                "guard_comparisons": [_comparison_record(c) for c in rec.guard_comparisons],
            }
        return out

    def to_markdown(self) -> str:
        """A readable summary (written as ``report.md``)."""
        lines = [f"# Study `{self.study_name}`", ""]
        lines.append("Trials: " + ", ".join(f"{n} {s.lower()}" for s, n in self.states.items() if n) + ".")
        objectives = ", ".join(f"{n} ({d})" for n, d in zip(self.objective_names, self.directions))
        lines += [f"Objective(s): {objectives}.", ""]
        guard = self.config.get("guard")
        if guard:
            lines += [
                f"Guard: {guard}: a constraint by penalty; trial values and the held-out comparison are the "
                "objective's value minus that penalty.",
                "",
            ]
        rec = self.recommendation
        if rec is not None:
            lines += [
                "## Recommended parameters",
                "",
                f"Trial {rec.best.trial_number}, chosen by {rec.method.replace('_', ' ')} "
                f"(estimate {rec.best.estimate:.4g}; observed {rec.best.observed:.4g}). "
                f"The noisy best is trial {rec.noisy_best.trial_number} (observed {rec.noisy_best.observed:.4g}).",
                "",
                "| parameter | recommended | noisy best |",
                "|---|---|---|",
            ]
            for key, value in rec.params.to_dict().items():
                lines.append(f"| {key} | {_fmt(value)} | {_fmt(getattr(rec.noisy_best.params, key))} |")
            lines.append("")
            if rec.comparisons:
                lines += [
                    "## Held-out comparison",
                    "",
                    "Recommended minus reference, paired per prompt on the same seeds"
                    + _seed_sets_note(rec.comparisons)
                    + ".",
                    "",
                ]
                lines += ["| reference | mean difference | CI | better |", "|---|---|---|---|"]
                for c in rec.comparisons:
                    lines.append(
                        f"| {c.reference} | {c.mean_difference:+.4g} | [{c.ci_low:+.4g}, {c.ci_high:+.4g}] "
                        f"({c.confidence:.0%}) | "
                        f"{'yes' if c.better else 'not shown'} |"
                    )
                lines.append("")
                caution = small_sample_caution(rec.comparisons)
                if caution:
                    lines += [f"Caution: {caution}", ""]
            if rec.guard_comparisons:
                name = self.config.get("guard_objective", "guard")
                lines += [
                    f"## Held-out guard: {name}",
                    "",
                    f"The final round's {name} of the recommendation minus the reference's, paired per prompt on "
                    "the same seeds and user" + _seed_sets_note(rec.guard_comparisons) + ": a tuned preset that "
                    "bought its value by losing the guard shows here as worse.",
                    "",
                    "| reference | mean difference | CI | verdict |",
                    "|---|---|---|---|",
                ]
                for c in rec.guard_comparisons:
                    lines.append(
                        f"| {c.reference} | {c.mean_difference:+.4g} | [{c.ci_low:+.4g}, {c.ci_high:+.4g}] "
                        f"({c.confidence:.0%}) | {c.verdict} |"
                    )
                lines.append("")
        if len(self.best) > 1:
            lines += [
                "## Pareto front",
                "",
                "| trial | " + " | ".join(self.objective_names) + " |",
                "|---" * (1 + len(self.objective_names)) + "|",
            ]
            for b in self.best:
                lines.append(f"| {b['number']} | " + " | ".join(f"{v:.4g}" for v in b["values"]) + " |")
            lines.append("")
        if self.importances:
            lines += ["## Parameter importances (fANOVA)", "", "| parameter | importance |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in self.importances.items()]
            lines.append("")
        if self.failures:
            lines += ["## Failed trials", "", "| trial | reason |", "|---|---|"]
            lines += [f"| {n} | {reason.replace('|', '/')} |" for n, reason in self.failures]
            lines.append("")
        return "\n".join(lines)


# Below this many held-out prompts a bootstrap interval says little about new prompts.
MIN_PROMPTS_FOR_CI = 5


def _comparison_record(c: Comparison) -> dict[str, Any]:
    return {
        "reference": c.reference,
        "split": c.split,
        "quantity": c.quantity,
        "mean_difference": c.mean_difference,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "confidence": c.confidence,
        "better": c.better,
        "verdict": c.verdict,
        "per_prompt": list(c.per_prompt),
    }


def small_sample_caution(comparisons: Sequence[Comparison]) -> str | None:
    """A warning when the held-out comparison rests on too few prompts to mean much."""
    n = min((len(c.per_prompt) for c in comparisons), default=0)
    if 0 < n < MIN_PROMPTS_FOR_CI:
        return (
            f"the comparison uses {n} held-out prompt(s); a bootstrap interval over so few prompts is not evidence. "
            f"Use {MIN_PROMPTS_FOR_CI} or more validation prompts"
        )
    return None


def _num(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- computing --------------------------------------------------------------------------------


def param_importances(study: optuna.Study, *, objective: int = 0, seed: int = 0) -> dict[str, float] | None:
    """fANOVA importances of the searched parameters for one objective, or ``None`` when there
    are too few complete trials (or no variation) to compute them."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) < 2 or len({t.values[objective] for t in complete}) < 2:
        return None
    target = None if len(study.directions) == 1 else (lambda t: t.values[objective])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), target=target)
    except (RuntimeError, ValueError, ZeroDivisionError, optuna.exceptions.OptunaError) as exc:
        logger.info("no parameter importances: %s", exc)
        return None
    return {k: float(v) for k, v in values.items()}


def _seed_sets_note(comparisons: Sequence[Any]) -> str:
    k = max((c.seed_sets for c in comparisons), default=1)
    return f" (each prompt's mean over {k} seed sets)" if k > 1 else ""


def build_report(
    study: optuna.Study,
    config: StudyConfig,
    *,
    evaluator: TrialEvaluator | None = None,
    references: Sequence[str] | None = None,
    extra_seeds: int = 0,
    top_k: int = 3,
    n_bootstrap: int = 2000,
    objective: int = 0,
    seed_sets: int = 1,
) -> StudyReport:
    """Collect a study's report.

    Args:
        study: the Optuna study.
        config: its configuration.
        evaluator: needed for the held-out comparison and ``extra_seeds``; without it only the
            trials already run are used (no generation).
        references: presets to compare with on the validation prompts (default
            ``config.compare_with``; needs ``evaluator`` and validation prompts).
        extra_seeds: re-evaluate the top-k on this many fresh seed sets before recommending.
        top_k: how many candidates to re-evaluate.
        n_bootstrap: bootstrap resamples of the comparison.
        objective: which objective recommends (several objectives: the first by default).
        seed_sets: seed sets each held-out prompt is replayed on for the comparison.
    """
    from optuna.trial import TrialState

    from optimize.recommend import recommend

    states = {
        s.name: 0
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    }
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    space = config.space
    best_trials = (
        [study.best_trial]
        if len(study.directions) == 1 and states["COMPLETE"]
        else (study.best_trials if states["COMPLETE"] else [])
    )
    best = []
    for t in best_trials:
        try:
            params = space.to_params({n: t.params[n] for n in space.names}).to_dict()
        except (KeyError, ConfigError):
            params = dict(t.params)
        best.append({"number": t.number, "values": list(t.values), "params": params})
    refs: Sequence[str] | None = config.compare_with if references is None else references
    if evaluator is None or not config.protocol.validation_prompts:
        if refs and evaluator is not None:
            logger.warning("study %s has no validation prompts: no held-out comparison", study.study_name)
        refs = None
    recommendation = None
    if states["COMPLETE"]:
        recommendation = recommend(
            study, space, evaluator=evaluator if (refs or extra_seeds) else None, objective=objective, top_k=top_k,
            extra_seeds=extra_seeds if evaluator is not None else 0, references=list(refs) if refs else None,
            n_bootstrap=n_bootstrap, seed=config.seed, seed_sets=seed_sets,
        )  # fmt: skip
    names = objective_labels(config, len(study.directions))
    directions = tuple("minimize" if d.name == "MINIMIZE" else "maximize" for d in study.directions)
    summary = {
        "model": config.model,
        "objective": config.objective,
        "sampler": config.sampler,
        "trials": config.trials,
        "rounds": config.protocol.rounds,
        "n_images": config.protocol.n_images,
        "steps": config.steps,
        "train_prompts": len(config.protocol.prompts),
        "validation_prompts": len(config.protocol.validation_prompts),
    }
    if config.guard is not None:
        g = config.guard
        summary["guard_objective"] = g.objective
        summary["guard"] = (
            f"mean final-round {g.objective} may fall at most {g.tolerance:g} below the {g.reference} run's; "
            f"each unit below costs {g.penalty:g}"
        )
    return StudyReport(
        study_name=study.study_name,
        objective_names=names,
        directions=directions,
        states={k: v for k, v in states.items()},
        best=tuple(best),
        recommendation=recommendation,
        importances=param_importances(study, objective=objective, seed=config.seed),
        config=summary,
        failures=tuple(
            (t.number, str(t.user_attrs.get("error") or t.system_attrs.get("fail_reason") or "no reason recorded"))
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        ),
    )


def objective_labels(config: StudyConfig, n: int) -> tuple[str, ...]:
    """Display names of a study's ``n`` objectives (the parts of its spec)."""
    parts = [p.strip() for p in config.objective.split(",")]
    return tuple(parts) if len(parts) == n else tuple(f"objective {j}" for j in range(n))


# ---- plots --------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    with replacing(path) as tmp:  # every study worker draws the same plots at the end
        fig.savefig(tmp, format="png")  # a bare Figure renders through the Agg canvas
    return path


def plot_history(study: optuna.Study, path: Path, *, names: Sequence[str] = (), recommended: int | None = None) -> Path:
    """Trial values by trial number, best so far, warm starts and the recommendation."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    m = len(study.directions)
    fig = _figure(7.0, 2.6 * m + 0.4)
    axes = fig.subplots(m, 1, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        maximize = study.directions[j].name == "MAXIMIZE"
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        xs = [t.number for t in complete]
        ys = [t.values[j] for t in complete]
        ax.scatter(xs, ys, s=22, color="tab:blue", label="complete", zorder=3)
        pruned = [
            (t.number, t.intermediate_values[max(t.intermediate_values)])
            for t in trials
            if t.state == TrialState.PRUNED and t.intermediate_values and j == 0
        ]
        if pruned:
            ax.scatter(
                *zip(*pruned),
                s=22,
                facecolors="none",
                edgecolors="tab:orange",
                label="pruned (last running mean)",
                zorder=3,
            )
        failed = [t.number for t in trials if t.state == TrialState.FAIL]
        for k, number in enumerate(failed):
            ax.axvline(number, color="tab:red", alpha=0.25, lw=1, label="failed" if k == 0 else None)
        if m == 1 and ys:
            best, running = [], None
            for y in ys:
                running = y if running is None else (max(running, y) if maximize else min(running, y))
                best.append(running)
            ax.step(xs, best, where="post", color="tab:green", label="best so far")
        for t in complete:
            label = t.user_attrs.get("warm_start")
            if label:
                ax.annotate(str(label), (t.number, t.values[j]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if recommended is not None and recommended in xs:
            ax.scatter(
                [recommended],
                [ys[xs.index(recommended)]],
                marker="*",
                s=160,
                color="gold",
                edgecolors="black",
                label="recommended",
                zorder=4,
            )
        name = names[j] if j < len(names) else f"objective {j}"
        ax.set_ylabel(f"trial value: {name}\n({'higher' if maximize else 'lower'} is better)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("trial")
    axes[0].set_title(f"Optimisation history: {study.study_name}", fontsize=10)
    return _save(fig, path)


def plot_importances(importances: Mapping[str, float], path: Path, *, title: str = "") -> Path:
    """Horizontal bars, most important on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = _figure(6.0, 0.35 * len(items) + 1.2)
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, first objective)")
    ax.set_title(title or "Parameter importances", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_pareto(study: optuna.Study, path: Path, *, names: Sequence[str] = ()) -> Path:
    """Complete trials on the first two objectives, the Pareto front highlighted."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in study.best_trials}
    fig = _figure(5.5, 4.5)
    ax = fig.subplots()
    others = [t for t in complete if t.number not in front]
    on_front = sorted((t for t in complete if t.number in front), key=lambda t: t.values[0])
    if others:
        ax.scatter(
            [t.values[0] for t in others],
            [t.values[1] for t in others],
            s=20,
            color="tab:gray",
            alpha=0.6,
            label="trials",
        )
    if on_front:
        ax.plot(
            [t.values[0] for t in on_front],
            [t.values[1] for t in on_front],
            "-o",
            color="tab:red",
            ms=5,
            label="Pareto front",
        )
        for t in on_front:
            ax.annotate(
                str(t.number), (t.values[0], t.values[1]), textcoords="offset points", xytext=(3, 3), fontsize=7
            )
    labels = [names[j] if j < len(names) else f"objective {j}" for j in range(2)]
    for j, setter in enumerate((ax.set_xlabel, ax.set_ylabel)):
        direction = "higher" if study.directions[j].name == "MAXIMIZE" else "lower"
        setter(f"{labels[j]} ({direction} is better)", fontsize=8)
    ax.set_title(f"Pareto front: {study.study_name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_comparison(comparisons: Sequence[Comparison], path: Path) -> Path:
    """Recommended minus each reference: mean difference and bootstrap interval."""
    fig = _figure(5.5, 0.6 * len(comparisons) + 1.4)
    ax = fig.subplots()
    for i, c in enumerate(comparisons):
        ax.errorbar(
            [c.mean_difference],
            [i],
            xerr=[[c.mean_difference - c.ci_low], [c.ci_high - c.mean_difference]],
            fmt="o",
            color="tab:green" if c.better else "tab:gray",
            capsize=4,
        )
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(comparisons)), [f"vs {c.reference}" for c in comparisons])
    ax.set_ylim(-0.6, len(comparisons) - 0.4)
    ax.set_title("Recommended parameters against the defaults", fontsize=10)
    level = comparisons[0].confidence if comparisons else 0.95
    ax.set_xlabel(f"recommended - reference on held-out prompts ({level:.0%} bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def save_plots(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    importances: Mapping[str, float] | None = None,
    recommendation: Recommendation | None = None,
    names: Sequence[str] = (),
) -> list[Path]:
    """Write every plot that the study's data allows into ``out_dir``; returns the files."""
    from optuna.trial import TrialState

    out_dir = Path(out_dir)
    paths: list[Path] = []
    if not study.get_trials(deepcopy=False, states=finished_states()):
        return paths
    recommended = recommendation.best.trial_number if recommendation is not None else None
    paths.append(plot_history(study, out_dir / "history.png", names=names, recommended=recommended))
    if importances:
        paths.append(plot_importances(importances, out_dir / "importances.png"))
    if len(study.directions) > 1 and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        paths.append(plot_pareto(study, out_dir / "pareto.png", names=names))
    if recommendation is not None and recommendation.comparisons:
        paths.append(plot_comparison(recommendation.comparisons, out_dir / "comparison.png"))
    return paths


def write_trial_table(study: optuna.Study, names: Sequence[str], path: str | Path) -> Path:
    """``trials.csv``: one row per trial (number, state, value per objective, warm start, FABRIC
    parameters), the flat table MLflow's artifact viewer shows on the study run."""
    import csv
    import io

    trials = study.get_trials(deepcopy=False)
    fields: list[str] = []
    for t in trials:
        fields += [k for k in t.user_attrs.get("fabric_params", {}) if k not in fields]
    value_names = [f"value/{n}" for n in names] if len(names) > 1 else ["value"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "state", *value_names, "warm_start", *fields])
    for t in trials:
        values = list(t.values) if t.values else []
        params = t.user_attrs.get("fabric_params", {})
        writer.writerow([
            t.number, t.state.name, *(f"{v:.6g}" for v in values), *([""] * (len(value_names) - len(values))),
            t.user_attrs.get("warm_start", ""), *(params.get(k, "") for k in fields),
        ])  # fmt: skip
    return write_text_atomic(path, buffer.getvalue())


def write_report(report: StudyReport, study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """``report.json``, ``report.md`` and the plots into ``out_dir``; returns the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = save_plots(
        study,
        out_dir,
        importances=report.importances,
        recommendation=report.recommendation,
        names=report.objective_names,
    )
    json_path = write_text_atomic(out_dir / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    md_path = write_text_atomic(out_dir / "report.md", report.to_markdown() + "\n")
    return [json_path, md_path, *files]
