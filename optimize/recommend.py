"""Noise-aware recommendation of the best parameters of a study.

Trial values are noisy (a few prompts, a few seeds), so the trial with the best *observed*
value is usually a lucky draw. :func:`recommend` instead fits a GP (the sampler's, categorical
parameters included) to every complete trial and recommends the evaluated point with the best
*posterior mean*, reporting the noisy best beside it. Optionally it re-evaluates the top-k on
fresh seeds first, and compares the recommendation with the paper's and the A1111 defaults on
held-out prompts as paired per-prompt differences with a seeded bootstrap confidence interval.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fabric.errors import ConfigError, FabricOptError
from fabric.params import FabricParams
from optimize.samplers.warm_start import DEFAULT_PRESETS
from optimize.space import SearchSpace

if TYPE_CHECKING:
    import optuna

    from optimize.protocol import Split, TrialEvaluator

__all__ = [
    "Candidate",
    "Comparison",
    "Recommendation",
    "recommend",
    "compare",
    "posterior_at_points",
    "posterior_means",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One evaluated point.

    Attributes:
        trial_number: the Optuna trial.
        values: its search values.
        params: the FABRIC parameters they give.
        observed: the trial's (noisy) value.
        posterior_mean: the GP's mean at the point (``None`` if no GP could be fitted).
        posterior_std: the GP's standard deviation of the latent function there.
        reevaluated: values on extra seeds (replicates 1..k), when re-evaluated.
    """

    trial_number: int
    values: Mapping[str, Any]
    params: FabricParams
    observed: float
    posterior_mean: float | None = None
    posterior_std: float | None = None
    reevaluated: tuple[float, ...] = ()

    @property
    def estimate(self) -> float:
        """Best estimate of the point's value: mean over all its evaluations, else the GP mean."""
        if self.reevaluated:
            return (self.observed + sum(self.reevaluated)) / (1 + len(self.reevaluated))
        return self.posterior_mean if self.posterior_mean is not None else self.observed


@dataclass(frozen=True)
class Comparison:
    """Recommended minus reference parameters, paired per prompt on the same seeds.

    Attributes:
        reference: the reference's label (``"paper"``, ``"a1111"``, ...).
        split: the prompts compared on.
        per_prompt: per-prompt differences (recommended - reference).
        mean_difference: their mean.
        ci_low, ci_high: percentile bootstrap confidence interval of the mean.
        confidence: the interval's level.
        direction: the objective's direction; a positive difference is better for
            ``"maximize"``.
        quantity: what is compared: ``"value"`` (the trial value, after a guard's penalty) or
            ``"guard"`` (the final round's guard score, e.g. prompt adherence; higher is better).
        seed_sets: how many seed sets each prompt was replayed on (its difference is their mean).
    """

    reference: str
    split: str
    per_prompt: tuple[float, ...]
    mean_difference: float
    ci_low: float
    ci_high: float
    confidence: float
    direction: str = "maximize"
    quantity: str = "value"
    seed_sets: int = 1

    @property
    def better(self) -> bool:
        """The whole interval lies on the better side of zero."""
        return self.ci_low > 0 if self.direction == "maximize" else self.ci_high < 0

    @property
    def worse(self) -> bool:
        """The whole interval lies on the worse side of zero."""
        return self.ci_high < 0 if self.direction == "maximize" else self.ci_low > 0

    @property
    def verdict(self) -> str:
        """``"better"``, ``"worse"`` or ``"no difference shown"`` (the interval holds 0)."""
        return "better" if self.better else "worse" if self.worse else "no difference shown"


@dataclass(frozen=True)
class Recommendation:
    """What :func:`recommend` found.

    Attributes:
        best: the recommended point.
        noisy_best: the trial with the best observed value.
        candidates: the points ranked (best first) by the recommendation's criterion.
        method: ``"posterior_mean"``, ``"reevaluated"`` or ``"observed"`` (no GP could be fitted).
        comparisons: against the reference parameters on held-out prompts.
        guard_comparisons: with a guarded study, the same pairs compared on the guard's final
            round score (``quantity="guard"``): is the recommendation's adherence worse?
    """

    best: Candidate
    noisy_best: Candidate
    candidates: tuple[Candidate, ...]
    method: str
    comparisons: tuple[Comparison, ...] = ()
    guard_comparisons: tuple[Comparison, ...] = ()

    @property
    def params(self) -> FabricParams:
        return self.best.params


def posterior_means(
    study: optuna.Study, space: SearchSpace, *, objective: int = 0, device: str = "cpu", seed: int = 0
) -> list[Candidate]:
    """Complete trials of ``study`` with the GP posterior mean and std at their points.

    Returns:
        One :class:`Candidate` per complete trial inside ``space``; their posterior fields are
        ``None`` when the GP could not be fitted (a warning says why).
    """
    from optimize.samplers.botorch import is_model_failure

    candidates = _complete(study, space, objective)
    if len(candidates) < 2:
        return candidates
    try:
        fitted = posterior_at_points(
            space.distributions(),
            [c.values for c in candidates],
            [c.observed for c in candidates],
            seed=seed,
            device=device,
        )
    except Exception as exc:  # noqa: BLE001 - model failures only, re-raised otherwise
        if not is_model_failure(exc):
            raise
        warnings.warn(
            f"no GP for the recommendation ({type(exc).__name__}); falling back to the best observed value. "
            "More trials or re-evaluation (extra_seeds) make it reliable",
            RuntimeWarning,
            stacklevel=2,
        )
        return candidates
    if fitted is None:
        return candidates
    mean, std = fitted
    return [_replace(c, posterior_mean=m, posterior_std=s) for c, m, s in zip(candidates, mean, std)]


def posterior_at_points(
    distributions: Mapping[str, Any],
    points: Sequence[Mapping[str, Any]],
    values: Sequence[float],
    *,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[list[float], list[float]] | None:
    """GP posterior mean and standard deviation (of the latent function) at evaluated points.

    The GP is the sampler's (:func:`~optimize.samplers.botorch.fit_gp`), categorical
    parameters included, fitted to ``values`` at ``points``.

    Args:
        distributions: ``name -> optuna distribution`` of the searched parameters (single-valued
            ones are left out).
        points: the evaluated points (``name -> value``), ``n`` of them.
        values: their observed values.
        seed: seeds the fit.
        device: where the GP is fitted.

    Returns:
        ``(mean, std)``, two lists of ``n`` floats in the units of ``values``, or ``None`` when
        the values are all equal (nothing to fit).

    Raises:
        Exception: a model failure (see :func:`~optimize.samplers.botorch.is_model_failure`).
    """
    import torch

    from optimize.samplers.botorch import fit_gp
    from optimize.space import CubeEncoding

    encoding = CubeEncoding({name: d for name, d in distributions.items() if not d.single()})
    X = encoding.encode(points, dtype=torch.float64, device=torch.device(device))  # (n, d)
    Y = torch.tensor([[float(v)] for v in values], dtype=torch.float64, device=X.device)  # (n, 1)
    if len(Y) < 2 or float(Y.std()) == 0.0:
        return None
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.simplefilter("ignore")
        model = fit_gp(X, Y, encoding.bounds(dtype=X.dtype, device=X.device), cat_dims=list(encoding.cat_dims))
        with torch.no_grad():
            posterior = model.posterior(X)
            mean = posterior.mean.squeeze(-1).cpu().tolist()
            std = posterior.variance.clamp_min(0).sqrt().squeeze(-1).cpu().tolist()
    return mean, std


def recommend(
    study: optuna.Study,
    space: SearchSpace,
    *,
    evaluator: TrialEvaluator | None = None,
    objective: int = 0,
    top_k: int = 3,
    extra_seeds: int = 0,
    references: Mapping[str, FabricParams] | Sequence[str] | None = ("paper", "a1111"),
    split: Split = "validation",
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    device: str = "cpu",
    seed_sets: int = 1,
) -> Recommendation:
    """Recommend the best parameters of ``study`` (see module docs).

    Args:
        study: a study whose trials sampled ``space``.
        space: the search space.
        evaluator: needed for ``extra_seeds`` and for the comparisons.
        objective: which objective of a multi-objective study.
        top_k: how many points (by posterior mean) to re-evaluate.
        extra_seeds: fresh seed sets to re-evaluate each of the top-k on (train prompts); the
            recommendation is then the best mean over all of a point's evaluations.
        references: labels of :data:`~optimize.samplers.DEFAULT_PRESETS` or ``label ->
            FabricParams`` to compare with (mapped into ``space``, so fixed and left-out fields
            are the study's); ``None`` or empty for none. Needs ``evaluator`` and a ``split``
            with prompts.
        split: where to compare (``"validation"``: held-out prompts).
        n_bootstrap: bootstrap resamples of the per-prompt differences.
        confidence: level of the interval.
        seed: seeds the GP fit and the bootstrap.
        device: where the GP is fitted.
        seed_sets: replay each compared prompt on this many seed sets (the study's, then fresh
            ones) and difference the means: a noisy user's random likes average out.

    Raises:
        ConfigError: no complete trial, or options that need an evaluator without one.
    """
    if evaluator is None and (extra_seeds > 0 or references):
        what = "re-evaluating on extra seeds" if extra_seeds > 0 else "comparing with reference parameters"
        raise ConfigError(f"{what} needs an evaluator (or pass references=None)")
    direction = _direction(study, objective)
    sign = 1.0 if direction == "maximize" else -1.0
    candidates = posterior_means(study, space, objective=objective, device=device, seed=seed)
    if not candidates:
        raise ConfigError("the study has no complete trial inside the search space to recommend from")
    noisy_best = max(candidates, key=lambda c: sign * c.observed)
    has_gp = candidates[0].posterior_mean is not None
    ranked = sorted(candidates, key=lambda c: -sign * c.estimate)
    method = "posterior_mean" if has_gp else "observed"
    if extra_seeds > 0:
        assert evaluator is not None
        top = []
        for c in ranked[: max(1, top_k)]:
            values = tuple(
                evaluator.evaluate(c.params, replicate=k).values[objective] for k in range(1, extra_seeds + 1)
            )
            top.append(_replace(c, reevaluated=values))
        ranked = sorted(top, key=lambda c: -sign * c.estimate) + ranked[len(top) :]
        method = "reevaluated"
    best = ranked[0]
    comparisons: list[Comparison] = []
    guard_comparisons: list[Comparison] = []
    if references:
        assert evaluator is not None
        refs = (
            {name: DEFAULT_PRESETS[name] for name in references}
            if not isinstance(references, Mapping)
            else dict(references)
        )
        for label, ref in refs.items():
            ref_params = space.to_params(space.from_params(ref, clip=True))
            comparisons.append(
                compare(
                    evaluator,
                    best.params,
                    ref_params,
                    label=label,
                    split=split,
                    objective=objective,
                    n_bootstrap=n_bootstrap,
                    confidence=confidence,
                    seed=seed,
                    seed_sets=seed_sets,
                )
            )
            if evaluator.guard is not None:
                guard_comparisons.append(
                    compare(
                        evaluator,
                        best.params,
                        ref_params,
                        label=label,
                        split=split,
                        n_bootstrap=n_bootstrap,
                        confidence=confidence,
                        seed=seed,
                        quantity="guard",
                        seed_sets=seed_sets,
                    )
                )
    logger.info(
        "recommended trial %d (%s, estimate %.4g); noisy best trial %d (observed %.4g)",
        best.trial_number,
        method,
        best.estimate,
        noisy_best.trial_number,
        noisy_best.observed,
    )
    return Recommendation(best, noisy_best, tuple(ranked), method, tuple(comparisons), tuple(guard_comparisons))


def compare(
    evaluator: TrialEvaluator,
    params: FabricParams,
    reference: FabricParams,
    *,
    label: str = "reference",
    split: Split = "validation",
    objective: int = 0,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    quantity: str = "value",
    seed_sets: int = 1,
) -> Comparison:
    """Paired comparison of ``params`` against ``reference`` on one split (same seeds).

    ``quantity="guard"`` compares the guard's final-round score per prompt instead of the value
    (the evaluator needs a guard; evaluations are shared, see ``TrialEvaluator``).
    ``seed_sets`` > 1 replays every prompt on that many seed sets (replicate 0 is the study's
    seeds) and compares the per-prompt means; the bootstrap still resamples prompts.
    """
    import numpy as np

    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 1:
        raise ConfigError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if quantity not in ("value", "guard"):
        raise ConfigError(f"quantity must be 'value' or 'guard', got {quantity!r}")
    if quantity == "guard" and evaluator.guard is None:
        raise ConfigError("a guard comparison needs an evaluator with a guard")
    if seed_sets < 1:
        raise ConfigError(f"seed_sets must be >= 1, got {seed_sets}")

    def per_prompt(p: FabricParams) -> list[float]:
        rows = []
        for replicate in range(seed_sets):
            result = evaluator.evaluate(p, split=split, replicate=replicate)
            if quantity == "guard":
                rows.append([prompt.guard[-1] for prompt in result.prompts])
            else:
                rows.append(result.per_prompt(objective))
        return np.asarray(rows).mean(axis=0).tolist()

    ours, theirs = per_prompt(params), per_prompt(reference)
    diffs = np.asarray(ours) - np.asarray(theirs)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_bootstrap, len(diffs)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Comparison(
        reference=label,
        split=split,
        per_prompt=tuple(float(d) for d in diffs),
        mean_difference=float(diffs.mean()),
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        direction=evaluator.directions[objective] if quantity == "value" else "maximize",
        quantity=quantity,
        seed_sets=seed_sets,
    )


def _direction(study: optuna.Study, objective: int) -> str:
    from optuna.study import StudyDirection

    if not 0 <= objective < len(study.directions):
        raise ConfigError(f"objective index {objective} out of range for {len(study.directions)} objective(s)")
    return "minimize" if study.directions[objective] == StudyDirection.MINIMIZE else "maximize"


def _complete(study: optuna.Study, space: SearchSpace, objective: int) -> list[Candidate]:
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if any(name not in t.params for name in space.names) or not math.isfinite(t.values[objective]):
            continue
        values = {name: t.params[name] for name in space.names}
        try:
            params = space.to_params(values)
        except FabricOptError:  # a point of an older, wider space
            continue
        out.append(Candidate(t.number, values, params, float(t.values[objective])))
    return out


def _replace(candidate: Candidate, **changes: Any) -> Candidate:
    import dataclasses

    return dataclasses.replace(candidate, **changes)
