"""A noise-aware Bayesian-optimisation sampler for Optuna, built on BoTorch.

:class:`BoTorchSampler` is an ordinary ``optuna.samplers.BaseSampler``: studies, storages,
several workers, ask/tell and pruners work as with any Optuna sampler. Per trial it

1. waits until every earlier trial that is still choosing its parameters has published them
   (see *Parallel workers*);
2. draws point ``trial.number`` of a scrambled Sobol design (:mod:`optimize.samplers.design`,
   uniform over integer and categorical values) while fewer than ``n_startup_trials`` trials are
   complete;
3. otherwise fits a ``SingleTaskGP`` (``Normalize`` input transform onto the unit cube,
   ``Standardize`` outcome transform, BoTorch's dimension-scaled priors, inferred noise) to the
   complete trials, reusing recent hyperparameters (see *Cost*);
4. maximises ``qLogNoisyExpectedImprovement`` (one objective) or
   ``qLogNoisyExpectedHypervolumeImprovement`` (several; reference point from the data), with
   running, failed and pruned trials as pending points and, once a trial has failed, weighted by
   the probability that a point does not fail (see *Failures*);
5. stores the parameters on the trial at once, so later asks see them.

The noisy EI variants integrate over the GP's belief about the incumbent instead of trusting
the best *observed* value, which is what a noisy reward like FABRIC's needs.

Trials by state:

* COMPLETE trials are the observations.
* FAIL trials (an exception, a NaN or infinite value) are **failures**, except those enqueued
  again because their worker died (user attribute ``retry_of`` on the retry). Under common random
  numbers a parameter setting that failed once fails again, so the sampler must not return
  there. Two mechanisms, both cheap: (a) a second GP is fitted to the indicator "did not fail"
  (1) / "failed" (0) over every finished trial, and the acquisition is multiplied by
  ``P(indicator > 1/2)`` under it (a failing region is learned as a region, and random,
  scattered failures only lower it a little everywhere); (b) failed points join the pending
  points, so the acquisition gains nothing near a failed point even when (a) attributes the
  failure to noise.
* PRUNED trials are stopped early because they looked worse than others; their partial value is
  biased by that decision and noisier than a full one. By default (``pruned="pending"``) they
  are left out of the GP and kept as pending points, so the sampler does not propose their
  neighbourhood again without counting them as evidence. ``"ignore"`` drops them entirely;
  ``"last_value"`` (the earlier behaviour) observes them at their last intermediate value.
* RUNNING trials, and WAITING ones (enqueued: warm starts, retries), are pending points.

Minimised objectives are negated internally.

Parallel workers: a model-based ask takes a few hundred milliseconds, and a trial that does not
know about another worker's trial may propose the same point. So every trial marks itself as
asking when it starts (system attribute ``fabric_opt:asking``), and an ask first waits, by
polling the storage, until every lower-numbered running trial that is still asking has stored
its parameters (at most ``ask_timeout`` seconds per stuck trial, e.g. of a killed worker; a
trial created less than 5 seconds ago and not yet marked counts as asking). Asks
of one study are therefore serialised through the storage, on one machine or several, and each
sees all the others' points as pending.

Cost: the GP's hyperparameters are fitted (from BoTorch's defaults) when the number of
complete trials has grown by 20 % (at least 2) since the last fit; in between, the model keeps
them and is only conditioned on the new data (milliseconds instead of a fit that takes about
as long as the rest of the ask). With ``warm_start`` a fit starts from the previous fit's
hyperparameters instead of BoTorch's defaults; with ``reuse_hyperparameters=False`` as well, the
hyperparameters are fitted at every ask, each fit a short continuation of the last. The
acquisition is maximised from the best of ``raw_samples`` Sobol points and perturbations of
the best observed points, by a short L-BFGS-B run on ``num_restarts`` starts with discrete
values relaxed, then a coordinate search over the allowed values of each integer and
categorical parameter. Suggestions are reproducible for the
same seed and the same sequence of asks in one process (which hyperparameters are reused depends
on that process's earlier asks).

When a model cannot be fitted (``ModelFittingError``, a non-PSD covariance, constant values) the
sampler warns with a :class:`SamplerFallbackWarning` and returns a Sobol point instead of
failing the trial.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from fabric.errors import ConfigError
from optimize.samplers.design import sobol_point
from optimize.space import CubeEncoding

if TYPE_CHECKING:
    import torch
    from optuna.study import Study

__all__ = [
    "ASK_ATTR",
    "BoTorchSampler",
    "SamplerFallbackWarning",
    "default_startup_trials",
    "fit_gp",
    "is_model_failure",
]

logger = logging.getLogger(__name__)

_RELATIVE_PARAMS_KEY = "fabric_opt:relative_params"
_FIT_MAXITER = 100
_MARK_GRACE_S = 5.0
_ASKING_KEY = "fabric_opt:asking"
# What the sampler did for a trial: {"kind": "sobol" | "gp" | "fallback", "pending": [numbers of
# the running trials it treated as pending], "failed": n, "cpu_s": CPU seconds of the ask, "at": the
# time (time.time()) it read the study}. For diagnosis, tests and benchmarks.
ASK_ATTR = "fabric_opt:ask"


class SamplerFallbackWarning(UserWarning):
    """The GP could not be used for a trial; a space-filling point was sampled instead."""


class _ConstantValues(Exception):
    """Every observed value of an objective is the same: nothing for a GP to learn."""


def default_startup_trials(dim: int) -> int:
    """Sobol trials before the GP: ``d // 2 + 2``, at least 3, at most 10.

    A small initial design leaves more of a short budget to the model: on noisy Hartmann-6
    (``bench.samplers``, the sampler of 2026-11-22) 5 startup trials gave a median regret of 0.73
    at 20 trials against 1.00 with ``d + 1 = 7``.
    """
    return min(10, max(3, dim // 2 + 2))


def _derive_seed(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


@dataclass
class _History:
    """A study's trials as the model sees them (points are ``name -> value`` mappings).

    Attributes:
        observed: complete trials (and pruned ones under ``pruned="last_value"``).
        values: their values, one list per point, signs flipped so every objective is maximised.
        failed: failed trials.
        pending: running and enqueued trials, then pruned ones (``pruned="pending"``).
        pending_numbers: trial numbers of the running and enqueued trials in ``pending``.
    """

    observed: list[dict[str, Any]] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    pending_numbers: list[int] = field(default_factory=list)


@dataclass
class _FitState:
    """Hyperparameters of the last fit (model-specific state entries) and its number of points."""

    state: dict[str, Any]
    n_at_full_fit: int


class BoTorchSampler(BaseSampler):
    """Sobol initial design, then a GP with qLogNEI / qLogNEHVI (see module docs).

    Args:
        seed: seeds the Sobol design, the acquisition optimiser and the fallback sampler;
            ``None`` draws one.
        n_startup_trials: complete trials before the GP takes over; ``None``:
            :func:`default_startup_trials` of the space's dimension.
        search_space: the distributions to search (a ``SearchSpace`` or its
            ``distributions()``). With it, even the first trial is a Sobol point; without it
            the space is inferred from earlier trials (the first trial is then sampled at random).
        num_restarts: L-BFGS-B starts of the acquisition optimiser.
        raw_samples: Sobol points scored to choose those starts.
        maxiter: L-BFGS-B iterations per acquisition optimisation.
        mc_samples: quasi-Monte-Carlo samples of the acquisition function.
        pruned: ``"pending"``, ``"ignore"`` or ``"last_value"``: how PRUNED trials enter
            (module docs).
        ask_timeout: seconds an ask waits at most for an earlier trial of another worker to
            publish its parameters; 0 turns the wait off.
        reuse_hyperparameters: keep fitted hyperparameters until the data grew by 20 % (module
            docs, *Cost*); ``False`` fits them at every ask.
        warm_start: start each fit of the hyperparameters from the previous fit's instead of
            BoTorch's defaults (module docs, *Cost*).
        device: where the GP is fitted and the acquisition optimised (``"cpu"``, ``"cuda"``).
        dtype: floating type of the GP; float64 is what BoTorch is tuned for.
        warn_independent_sampling: log when a parameter outside the relative search space is
            sampled independently (at random).
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        n_startup_trials: int | None = None,
        search_space: Mapping[str, BaseDistribution] | None = None,
        num_restarts: int = 4,
        raw_samples: int = 1024,
        maxiter: int = 25,
        mc_samples: int = 128,
        pruned: Literal["pending", "ignore", "last_value"] = "pending",
        ask_timeout: float = 60.0,
        reuse_hyperparameters: bool = True,
        warm_start: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        warn_independent_sampling: bool = True,
    ) -> None:
        if n_startup_trials is not None and n_startup_trials < 1:
            raise ConfigError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        if pruned not in ("pending", "ignore", "last_value"):
            raise ConfigError(f"pruned must be 'pending', 'ignore' or 'last_value', got {pruned!r}")
        for name, value in (
            ("num_restarts", num_restarts),
            ("raw_samples", raw_samples),
            ("maxiter", maxiter),
            ("mc_samples", mc_samples),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(ask_timeout, (int, float)) or not ask_timeout >= 0:
            raise ConfigError(f"ask_timeout must be a number of seconds >= 0, got {ask_timeout!r}")
        if search_space is not None and hasattr(search_space, "distributions"):
            search_space = search_space.distributions()  # a SearchSpace
        self._seed = secrets.randbits(31) if seed is None else int(seed)
        self._n_startup_trials = n_startup_trials
        self._search_space = dict(search_space) if search_space is not None else None
        self._num_restarts = num_restarts
        self._raw_samples = raw_samples
        self._maxiter = maxiter
        self._mc_samples = mc_samples
        self._pruned = pruned
        self._ask_timeout = float(ask_timeout)
        self._reuse = bool(reuse_hyperparameters)
        self._warm_start = bool(warm_start)
        self._device = device
        self._dtype = dtype
        self._warn_independent_sampling = warn_independent_sampling
        self._independent_sampler = RandomSampler(seed=self._seed)
        self._intersection = IntersectionSearchSpace(include_pruned=True)
        self._fits: dict[tuple, _FitState] = {}

    # ---- BaseSampler ---------------------------------------------------------------------
    def reseed_rng(self) -> None:
        # Suggestions derive their randomness from (seed, trial number), which already differ
        # between workers; only the fallback sampler keeps a stream of its own.
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self._search_space if self._search_space is not None else self._intersection.calculate(study)
        return {name: dist for name, dist in space.items() if not dist.single()}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)
        if self._ask_timeout > 0 and "fixed_params" not in trial.system_attrs:
            # Right after the trial was created: later trials wait for this one's parameters.
            study._storage.set_trial_system_attr(trial._trial_id, _ASKING_KEY, time.time())

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            if self._ask_timeout > 0:  # nothing to choose: release later asks at once
                study._storage.set_trial_system_attr(trial._trial_id, _RELATIVE_PARAMS_KEY, "{}")
            return {}
        cpu = time.process_time()
        self._wait_for_earlier_asks(study, trial)
        encoding = CubeEncoding(search_space)
        collected_at = time.time()
        history = self._collect(study, trial, search_space)
        n_startup = self._n_startup_trials or default_startup_trials(encoding.dim)
        kind = "sobol"
        if len(history.observed) < n_startup:
            params = sobol_point(encoding, self._seed, trial.number)
        else:
            kind = "gp"
            try:
                params = self._optimize(study, trial, encoding, history)
            except Exception as exc:  # noqa: BLE001 - only model failures are absorbed, see below
                if not is_model_failure(exc):
                    raise
                warnings.warn(
                    f"BoTorchSampler: no GP for trial {trial.number} ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:160]}); sampled a Sobol point instead. Constant or "
                    "duplicate objective values cause this; check the objective if it persists",
                    SamplerFallbackWarning,
                    stacklevel=2,
                )
                kind = "fallback"
                params = sobol_point(encoding, self._seed, trial.number)
        # Other workers read these to treat this trial as pending before its params are stored.
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, _RELATIVE_PARAMS_KEY, json.dumps(params))
        record: dict[str, Any] = {
            "kind": kind,
            "pending": history.pending_numbers,
            "failed": len(history.failed),
            "cpu_s": round(time.process_time() - cpu, 4),
            "at": collected_at,
        }
        storage.set_trial_system_attr(trial._trial_id, ASK_ATTR, record)
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if self._warn_independent_sampling and trial.number > 0 and self._search_space is None:
            logger.warning(
                "BoTorchSampler samples '%s' of trial %d at random: it is not in every earlier trial. "
                "Pass search_space=... to search it with the GP",
                param_name,
                trial.number,
            )
        return self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)

    # ---- internals -----------------------------------------------------------------------
    def _wait_for_earlier_asks(self, study: Study, trial: FrozenTrial) -> None:
        """Poll the storage until no lower-numbered running trial is still choosing its parameters."""
        if self._ask_timeout <= 0:
            return
        delay, waited = 0.02, False
        while True:
            now = time.time()
            asking = [
                t.number
                for t in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if t.number < trial.number and self._still_asking(t, now)
            ]
            if not asking:
                if waited:
                    logger.debug("trial %d: earlier asks done", trial.number)
                return
            waited = True
            time.sleep(delay)
            delay = min(0.25, delay * 1.5)

    def _still_asking(self, trial: FrozenTrial, now: float) -> bool:
        """Whether a running trial may still be choosing parameters that an ask should wait for."""
        attrs = trial.system_attrs
        if _RELATIVE_PARAMS_KEY in attrs or "fixed_params" in attrs or trial.params:
            return False
        if _ASKING_KEY in attrs:
            return now - float(attrs[_ASKING_KEY]) < self._ask_timeout
        # Created so recently that its worker may not have marked it yet (between Optuna creating
        # the trial and calling before_trial): wait a little for the mark.
        started = trial.datetime_start.timestamp() if trial.datetime_start is not None else -math.inf
        return now - started < min(self._ask_timeout, _MARK_GRACE_S)

    def _collect(self, study: Study, trial: FrozenTrial, search_space: Mapping[str, BaseDistribution]) -> _History:
        """Observed points with their values (maximisation sign), failures and pending points."""
        sign = [-1.0 if d == StudyDirection.MINIMIZE else 1.0 for d in study.directions]
        single = len(sign) == 1
        history = _History()
        pruned: list[dict[str, Any]] = []
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        # A trial whose worker died is enqueued again (optimize.workers, user attribute retry_of):
        # its failure says nothing about its parameters.
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            if t.number == trial.number or (t.state == TrialState.FAIL and t.number in retried):
                continue
            params = _trial_params(t)
            if not all(name in params and _contains(dist, params[name]) for name, dist in search_space.items()):
                continue
            point = {name: params[name] for name in search_space}
            if t.state in (TrialState.RUNNING, TrialState.WAITING):  # waiting: enqueued, runs soon
                history.pending.append(point)
                history.pending_numbers.append(t.number)
                continue
            if t.state == TrialState.FAIL:
                history.failed.append(point)
                continue
            if t.state == TrialState.COMPLETE:
                raw = list(t.values)
            elif self._pruned == "last_value" and single and t.intermediate_values:
                raw = [t.intermediate_values[max(t.intermediate_values)]]
            else:
                if self._pruned == "pending":
                    pruned.append(point)
                continue
            if not all(math.isfinite(v) for v in raw):
                history.failed.append(point)
                continue
            history.observed.append(point)
            history.values.append([s * v for s, v in zip(sign, raw)])
        history.pending += pruned
        return history

    def _optimize(self, study: Study, trial: FrozenTrial, encoding: CubeEncoding, history: _History) -> dict[str, Any]:
        import torch

        device = torch.device(self._device)
        dtype = self._dtype or torch.float64
        tkw: dict[str, Any] = {"dtype": dtype, "device": device}
        X = encoding.encode(history.observed, **tkw)  # (n, d), model space
        Y = torch.tensor(history.values, **tkw)  # (n, m), to maximise
        if len(Y) < 2 or bool((Y.std(dim=0) <= 1e-12 * Y.abs().amax(dim=0).clamp_min(1.0)).any()):
            raise _ConstantValues("all observed values are equal")
        X_failed = encoding.encode(history.failed, **tkw) if history.failed else None
        pending = history.pending + history.failed
        X_pending = encoding.encode(pending, **tkw) if pending else None  # (p, d)
        bounds = encoding.bounds(**tkw)
        seed = _derive_seed(self._seed, trial.number)
        cat_dims = list(encoding.cat_dims)
        devices = [device] if device.type == "cuda" else []
        key = (study.study_name, tuple(encoding.names), len(study.directions))
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # Seeded inside a forked RNG: reproducible without touching the caller's global state.
            torch.manual_seed(seed)
            _quiet_botorch_warnings()
            model = self._fit(("objective", *key), X, Y, bounds, cat_dims)
            acqf = _acquisition(model, X, Y, X_pending, self._mc_samples, seed)
            if X_failed is not None:
                X_all = torch.cat([X, X_failed])
                ok = torch.cat([torch.ones(len(X), 1, **tkw), torch.zeros(len(X_failed), 1, **tkw)])
                feasibility = self._fit(("feasibility", *key), X_all, ok, bounds, cat_dims)
                acqf = _FeasibilityWeighted(acqf, feasibility)
            candidate = _maximize(
                acqf,
                bounds,
                encoding,
                X_best=X[Y.sum(dim=-1).argsort(descending=True)[:5]],
                num_restarts=self._num_restarts,
                raw_samples=self._raw_samples,
                maxiter=self._maxiter,
                seed=seed,
            )
        return encoding.decode(candidate)[0]

    def _fit(self, key: tuple, X: torch.Tensor, Y: torch.Tensor, bounds: torch.Tensor, cat_dims: list[int]):
        """:func:`fit_gp`, or the hyperparameters of the last fit under ``key`` reused (module docs, *Cost*)."""
        previous = self._fits.get(key)
        n = len(X)
        if (
            self._reuse
            and previous is not None
            and previous.n_at_full_fit <= n < _next_full_fit(previous.n_at_full_fit)
        ):
            try:
                return fit_gp(X, Y, bounds, cat_dims, init=previous.state, optimize=False)
            except RuntimeError:  # e.g. a state that no longer fits the model: fit afresh
                pass
        model = None
        if self._warm_start and previous is not None:
            try:
                model = fit_gp(X, Y, bounds, cat_dims, init=previous.state)
            except RuntimeError:  # as above; a fresh fit follows
                pass
        if model is None:
            model = fit_gp(X, Y, bounds, cat_dims)
        self._fits[key] = _FitState(hyperparameters(model), n)
        return model


def _next_full_fit(n: int) -> int:
    """Complete trials at which hyperparameters fitted on ``n`` are refitted: 20 % more, at least 2."""
    return n + max(2, math.ceil(0.2 * n))


def fit_gp(
    X: torch.Tensor,
    Y: torch.Tensor,
    bounds: torch.Tensor,
    cat_dims: Sequence[int] = (),
    *,
    init: Mapping[str, Any] | None = None,
    optimize: bool = True,
):
    """A GP on ``X`` (``n x d``, model space) and ``Y`` (``n x m``), fitted by marginal likelihood.

    Args:
        X: inputs in model space (see :class:`~optimize.space.CubeEncoding`).
        Y: outputs, one column per objective.
        bounds: ``2 x d`` model-space bounds; ``Normalize`` maps them onto the unit cube.
        cat_dims: categorical columns (choice indices). With any, the model is a
            ``MixedSingleTaskGP`` whose categorical kernel does not pretend the choices are
            ordered; otherwise a ``SingleTaskGP``.
        init: hyperparameters to start the fit from (:func:`hyperparameters` of an earlier fit
            of the same kind of model); the defaults otherwise.
        optimize: fit the hyperparameters; ``False`` keeps ``init`` as they are and only
            conditions the model on the data (a few milliseconds instead of a fit).
    """
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from botorch.models.transforms import Normalize, Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    d = X.shape[-1]
    outcome = Standardize(m=Y.shape[-1])
    if cat_dims:
        cont = [i for i in range(d) if i not in set(cat_dims)]
        normalize = Normalize(d=d, indices=cont, bounds=bounds[:, cont]) if cont else None
        model = MixedSingleTaskGP(X, Y, cat_dims=list(cat_dims), input_transform=normalize, outcome_transform=outcome)
    else:
        model = SingleTaskGP(X, Y, input_transform=Normalize(d=d, bounds=bounds), outcome_transform=outcome)
    if init is not None:
        model.load_state_dict(dict(init), strict=False)
    if optimize:
        # L-BFGS-B stops at 100 iterations: on 35 points in 9-D the marginal likelihood is then
        # within 1e-4 per point of its converged value, at half the cost.
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": _FIT_MAXITER}})
    return model.eval()


def hyperparameters(model) -> dict[str, Any]:
    """The fitted hyperparameters of ``model`` (kernel, mean, likelihood), without its data
    transforms, whose statistics belong to the data they were fitted on."""
    return {
        name: value.detach().clone()
        for name, value in model.state_dict().items()
        if not name.startswith(("outcome_transform", "input_transform"))
    }


class _FeasibilityWeighted:
    """``log a(x) + log P(g(x) > 1/2)`` for an acquisition ``a`` and a GP ``g`` of the 0/1
    indicator "did not fail" (failures: module docs). Called like an acquisition function on a
    ``b x q x d``-dim Tensor (here ``q = 1``); returns a ``b``-dim Tensor."""

    def __init__(self, acqf, feasibility_model) -> None:
        self.acqf = acqf
        self.model = feasibility_model

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        import torch

        posterior = self.model.posterior(X)  # mean, variance: (b, q, 1)
        mean = posterior.mean.squeeze(-1)
        std = posterior.variance.clamp_min(1e-12).sqrt().squeeze(-1)
        log_feasible = torch.special.log_ndtr((mean - 0.5) / std).sum(dim=-1)  # (b,)
        return self.acqf(X) + log_feasible


def _acquisition(model, X: torch.Tensor, Y: torch.Tensor, X_pending, mc_samples: int, seed: int):
    import torch
    from botorch.sampling import SobolQMCNormalSampler

    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([mc_samples]), seed=seed)
    if Y.shape[-1] == 1:
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement

        return qLogNoisyExpectedImprovement(
            model, X_baseline=X, sampler=sampler, X_pending=X_pending, prune_baseline=True
        )
    from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement

    # Just below the worst observed value of each objective, so every observed trade-off counts.
    span = (Y.amax(dim=0) - Y.amin(dim=0)).clamp_min(1e-9)
    ref_point = Y.amin(dim=0) - 0.1 * span
    return qLogNoisyExpectedHypervolumeImprovement(
        model, ref_point=ref_point.tolist(), X_baseline=X, sampler=sampler, X_pending=X_pending, prune_baseline=True
    )


def _maximize(
    acqf,
    bounds: torch.Tensor,
    encoding: CubeEncoding,
    *,
    X_best: torch.Tensor,
    num_restarts: int,
    raw_samples: int,
    maxiter: int,
    seed: int,
) -> torch.Tensor:
    """The acquisition's maximiser over the search space, a ``1 x d``-dim Tensor in model space.

    1. Score ``raw_samples`` Sobol points (uniform over discrete values) and as many Gaussian
       perturbations of ``X_best`` (``k x d``, the best observed points) as there are
       ``raw_samples // 8``; keep the ``num_restarts`` best as starts.
    2. L-BFGS-B from the starts for at most ``maxiter`` iterations, discrete columns relaxed to
       real values within their bounds.
    3. Snap discrete columns to allowed values, then for each discrete or categorical column in
       turn, try every allowed value (at most the 16 nearest) at every start and keep the best.
    """
    import torch
    from botorch.generation.gen import gen_candidates_scipy
    from torch.quasirandom import SobolEngine

    d = bounds.shape[-1]
    tkw: dict[str, Any] = {"dtype": bounds.dtype, "device": bounds.device}
    generator = torch.Generator().manual_seed(seed)
    unit = SobolEngine(d, scramble=True, seed=seed).draw(raw_samples, dtype=torch.float64).to(**tkw)
    raw = [encoding.from_cells(unit)]
    if len(X_best):
        span = bounds[1] - bounds[0]
        n_spray = max(1, raw_samples // 8)
        centres = X_best[torch.arange(n_spray) % len(X_best)]
        noise = torch.randn(n_spray, d, generator=generator, dtype=torch.float64).to(**tkw)
        raw.append(torch.minimum(torch.maximum(centres + 0.05 * span * noise, bounds[0]), bounds[1]))
    candidates = _snap(torch.cat(raw), encoding)  # (r, d)
    with torch.no_grad():
        values = _evaluate(acqf, candidates)
    starts = candidates[values.argsort(descending=True)[:num_restarts]].unsqueeze(-2)  # (k, 1, d)

    with warnings.catch_warnings(record=True):  # BoTorch forces its L-BFGS-B warnings on; a short run expects them
        relaxed, _ = gen_candidates_scipy(
            starts, acqf, lower_bounds=bounds[0], upper_bounds=bounds[1], options={"maxiter": maxiter}
        )
    X = _snap(relaxed.detach().squeeze(-2), encoding)  # (k, d)
    with torch.no_grad():
        best = _evaluate(acqf, X)  # (k,)
        for i, allowed in {**encoding.discrete_dims, **encoding.cat_dims}.items():
            options = torch.tensor(allowed, **tkw)  # (v,)
            a = min(16, len(options))
            nearest = (options[None, :] - X[:, i, None]).abs().argsort(dim=-1)[:, :a]  # (k, a)
            trial = X[:, None, :].repeat(1, a, 1)  # (k, a, d)
            trial[..., i] = options[nearest]
            scores = _evaluate(acqf, trial.reshape(-1, d)).reshape(len(X), a)  # (k, a)
            top, j = scores.max(dim=-1)
            better = top > best
            X[better] = trial[torch.arange(len(X)), j][better]
            best = torch.where(better, top, best)
    return X[int(best.argmax())].unsqueeze(0)


def _evaluate(acqf, X: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Acquisition values of the ``n x d``-dim Tensor ``X`` as ``q = 1`` batches; a ``n``-dim Tensor."""
    import torch

    return torch.cat([acqf(X[i : i + chunk].unsqueeze(-2)) for i in range(0, len(X), chunk)])


def _snap(X: torch.Tensor, encoding: CubeEncoding) -> torch.Tensor:
    """``X`` (``n x d``, model space) with discrete and categorical columns at their nearest allowed value."""
    import torch

    X = X.clone()
    for i, allowed in {**encoding.discrete_dims, **encoding.cat_dims}.items():
        options = torch.tensor(allowed, dtype=X.dtype, device=X.device)
        X[:, i] = options[(X[:, i, None] - options).abs().argmin(dim=-1)]
    return X


def _quiet_botorch_warnings() -> None:
    from botorch.exceptions.warnings import InputDataWarning, OptimizationWarning
    from linear_operator.utils.warnings import NumericalWarning

    # Expected and harmless here: tiny data sets, jitter on near-duplicate points, L-BFGS
    # stopping early on flat acquisitions or at maxiter, BoTorch falling back from low-rank updates.
    warnings.simplefilter("ignore", InputDataWarning)
    warnings.simplefilter("ignore", OptimizationWarning)
    warnings.simplefilter("ignore", NumericalWarning)
    warnings.filterwarnings("ignore", message="Optimization failed", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message="Low-rank cholesky updates failed")


def is_model_failure(exc: BaseException) -> bool:
    from botorch.exceptions.errors import BotorchError, ModelFittingError
    from linear_operator.utils.errors import NanError, NotPSDError

    if isinstance(exc, (_ConstantValues, ModelFittingError, NotPSDError, NanError, BotorchError)):
        return True
    # Cholesky and other linear-algebra failures surface as RuntimeError subclasses.
    import torch

    return isinstance(exc, torch.linalg.LinAlgError) or (
        isinstance(exc, RuntimeError)
        and any(w in str(exc).lower() for w in ("cholesky", "positive", "singular", "nan"))
    )


def _trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters, including those a running trial has chosen but not suggested yet
    (relative parameters stored by this sampler, or the fixed parameters of an enqueued trial)."""
    params = dict(trial.params)
    if not trial.state.is_finished():
        stored = trial.system_attrs.get(_RELATIVE_PARAMS_KEY)
        if stored is not None:
            params = {**json.loads(stored), **params}
        fixed = trial.system_attrs.get("fixed_params")
        if isinstance(fixed, Mapping):
            params = {**fixed, **params}
    return params


def _contains(dist: BaseDistribution, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
