"""A noise-aware Bayesian-optimisation sampler for Optuna, built on BoTorch.

:class:`BoTorchSampler` is an ordinary ``optuna.samplers.BaseSampler``: studies, storages,
several workers, ask/tell and pruners work as with any Optuna sampler. Per trial it

1. draws a scrambled Sobol point while fewer than ``n_startup_trials`` trials are observed;
2. otherwise fits a ``SingleTaskGP`` (``Normalize`` input transform onto the unit cube,
   ``Standardize`` outcome transform, BoTorch's dimension-scaled priors, inferred noise) to the
   observed trials;
3. maximises ``qLogNoisyExpectedImprovement`` (one objective) or
   ``qLogNoisyExpectedHypervolumeImprovement`` (several; reference point from the data), with the
   parameters of running trials as pending points, so parallel workers spread out;
4. integer, stepped and categorical parameters are optimised as discrete dimensions with
   ``optimize_acqf_mixed_alternating``, continuous ones with L-BFGS-B.

The noisy EI variants integrate over the GP's belief about the incumbent instead of trusting
the best *observed* value, which is what a noisy reward like FABRIC's needs.

Trials by state: COMPLETE trials are observations; FAIL trials are ignored; PRUNED trials are,
by default (``pruned="last_value"``), observed at their last reported intermediate value (for
the FABRIC protocol: the running mean over the prompts scored before pruning). That keeps the
sampler from proposing the pruned region again; ``pruned="ignore"`` drops them instead.
Several objectives have no intermediate values, so there pruned trials are always ignored.
Minimised objectives are negated internally.

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
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from fabric.errors import ConfigError
from optimize.space import CubeEncoding

if TYPE_CHECKING:
    import torch
    from optuna.study import Study

__all__ = ["BoTorchSampler", "SamplerFallbackWarning", "default_startup_trials", "fit_gp", "is_model_failure"]

logger = logging.getLogger(__name__)

_RELATIVE_PARAMS_KEY = "fabric_opt:relative_params"


class SamplerFallbackWarning(UserWarning):
    """The GP could not be used for a trial; a space-filling point was sampled instead."""


class _ConstantValues(Exception):
    """Every observed value of an objective is the same: nothing for a GP to learn."""


def default_startup_trials(dim: int) -> int:
    """Sobol trials before the GP: ``d // 2 + 2``, at least 3, at most 10.

    A small initial design leaves more of a short budget to the model: on noisy Hartmann-6
    (``bench.samplers``) 5 startup trials gave a median regret of 0.73 at 20 trials against 1.00
    with ``d + 1 = 7``.
    """
    return min(10, max(3, dim // 2 + 2))


def _derive_seed(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


class BoTorchSampler(BaseSampler):
    """Sobol initial design, then a GP with qLogNEI / qLogNEHVI (see module docs).

    Args:
        seed: seeds the Sobol sequence, the acquisition optimiser and the fallback sampler;
            ``None`` draws one. The same seed and the same observations give the same
            suggestions.
        n_startup_trials: observed trials before the GP takes over; ``None``:
            :func:`default_startup_trials` of the space's dimension.
        search_space: the distributions to search (a ``SearchSpace`` or its
            ``distributions()``). With it, even the first trial is a Sobol point; without it the space is inferred from
            earlier trials (the first trial is then sampled at random).
        num_restarts: starting points of the acquisition optimiser.
        raw_samples: random points scored to choose those starting points.
        mc_samples: quasi-Monte-Carlo samples of the acquisition function.
        pruned: ``"last_value"`` or ``"ignore"``: how PRUNED trials enter the model.
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
        num_restarts: int = 8,
        raw_samples: int = 256,
        mc_samples: int = 128,
        pruned: Literal["last_value", "ignore"] = "last_value",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        warn_independent_sampling: bool = True,
    ) -> None:
        if n_startup_trials is not None and n_startup_trials < 1:
            raise ConfigError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        if pruned not in ("last_value", "ignore"):
            raise ConfigError(f"pruned must be 'last_value' or 'ignore', got {pruned!r}")
        for name, value in (("num_restarts", num_restarts), ("raw_samples", raw_samples), ("mc_samples", mc_samples)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if search_space is not None and hasattr(search_space, "distributions"):
            search_space = search_space.distributions()  # a SearchSpace
        self._seed = secrets.randbits(31) if seed is None else int(seed)
        self._n_startup_trials = n_startup_trials
        self._search_space = dict(search_space) if search_space is not None else None
        self._num_restarts = num_restarts
        self._raw_samples = raw_samples
        self._mc_samples = mc_samples
        self._pruned = pruned
        self._device = device
        self._dtype = dtype
        self._warn_independent_sampling = warn_independent_sampling
        self._independent_sampler = RandomSampler(seed=self._seed)
        self._intersection = IntersectionSearchSpace(include_pruned=True)

    # ---- BaseSampler ---------------------------------------------------------------------
    def reseed_rng(self) -> None:
        # Suggestions derive their randomness from (seed, trial number), which already differ
        # between workers; only the fallback sampler keeps a stream of its own.
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self._search_space if self._search_space is not None else self._intersection.calculate(study)
        return {name: dist for name, dist in space.items() if not dist.single()}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        encoding = CubeEncoding(search_space)
        observed, values, pending = self._collect(study, trial, search_space)
        n_startup = self._n_startup_trials or default_startup_trials(encoding.dim)
        if len(observed) < n_startup:
            params = self._sobol(encoding, trial.number)
        else:
            try:
                params = self._optimize(study, trial, encoding, observed, values, pending)
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
                params = self._sobol(encoding, trial.number)
        # Other workers read these to treat this trial as pending before its params are stored.
        study._storage.set_trial_system_attr(trial._trial_id, _RELATIVE_PARAMS_KEY, json.dumps(params))
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

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)

    # ---- internals -----------------------------------------------------------------------
    def _collect(
        self, study: Study, trial: FrozenTrial, search_space: Mapping[str, BaseDistribution]
    ) -> tuple[list[dict[str, Any]], list[list[float]], list[dict[str, Any]]]:
        """Observed points with their values (maximisation sign) and pending points."""
        sign = [-1.0 if d == StudyDirection.MINIMIZE else 1.0 for d in study.directions]
        single = len(sign) == 1
        observed: list[dict[str, Any]] = []
        values: list[list[float]] = []
        pending: list[dict[str, Any]] = []
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        for t in study.get_trials(deepcopy=False, states=states):
            if t.number == trial.number:
                continue
            params = _trial_params(t)
            if not all(name in params and _contains(dist, params[name]) for name, dist in search_space.items()):
                continue
            point = {name: params[name] for name in search_space}
            if t.state == TrialState.RUNNING:
                pending.append(point)
                continue
            if t.state == TrialState.COMPLETE:
                raw = list(t.values)
            elif single and self._pruned == "last_value" and t.intermediate_values:
                raw = [t.intermediate_values[max(t.intermediate_values)]]
            else:
                continue
            if not all(math.isfinite(v) for v in raw):
                continue
            observed.append(point)
            values.append([s * v for s, v in zip(sign, raw)])
        return observed, values, pending

    def _sobol(self, encoding: CubeEncoding, index: int) -> dict[str, Any]:
        import torch
        from torch.quasirandom import SobolEngine

        engine = SobolEngine(encoding.dim, scramble=True, seed=self._seed)
        if index > 0:
            engine.fast_forward(index)
        unit = engine.draw(1, dtype=torch.float64)
        return encoding.decode(encoding.from_unit(unit))[0]

    def _optimize(
        self,
        study: Study,
        trial: FrozenTrial,
        encoding: CubeEncoding,
        observed: list[dict[str, Any]],
        values: list[list[float]],
        pending: list[dict[str, Any]],
    ) -> dict[str, Any]:
        import torch

        device = torch.device(self._device)
        dtype = self._dtype or torch.float64
        tkw = {"dtype": dtype, "device": device}
        X = encoding.encode(observed, **tkw)  # (n, d), model space
        Y = torch.tensor(values, **tkw)  # (n, m), to maximise
        if len(Y) < 2 or bool((Y.std(dim=0) <= 1e-12 * Y.abs().amax(dim=0).clamp_min(1.0)).any()):
            raise _ConstantValues("all observed values are equal")
        X_pending = encoding.encode(pending, **tkw) if pending else None
        bounds = encoding.bounds(**tkw)
        seed = _derive_seed(self._seed, trial.number)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # Seeded inside a forked RNG: reproducible without touching the caller's global state.
            torch.manual_seed(seed)
            _quiet_botorch_warnings()
            model = fit_gp(X, Y, bounds, cat_dims=list(encoding.cat_dims))
            acqf = _acquisition(model, X, Y, X_pending, self._mc_samples, seed)
            candidate = _maximize(acqf, bounds, encoding, self._num_restarts, self._raw_samples)
        return encoding.decode(candidate)[0]


def fit_gp(X: torch.Tensor, Y: torch.Tensor, bounds: torch.Tensor, cat_dims: Sequence[int] = ()):
    """A GP on ``X`` (``n x d``, model space) and ``Y`` (``n x m``), fitted by marginal likelihood.

    Args:
        X: inputs in model space (see :class:`~optimize.space.CubeEncoding`).
        Y: outputs, one column per objective.
        bounds: ``2 x d`` model-space bounds; ``Normalize`` maps them onto the unit cube.
        cat_dims: categorical columns (choice indices). With any, the model is a
            ``MixedSingleTaskGP`` whose categorical kernel does not pretend the choices are
            ordered; otherwise a ``SingleTaskGP``.
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
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


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


def _maximize(acqf, bounds: torch.Tensor, encoding: CubeEncoding, num_restarts: int, raw_samples: int):
    """The acquisition's maximiser, a ``1 x d``-dim Tensor in model space."""
    from botorch.optim import optimize_acqf, optimize_acqf_mixed_alternating

    if encoding.discrete_dims or encoding.cat_dims:
        candidate, _ = optimize_acqf_mixed_alternating(
            acqf,
            bounds=bounds,
            discrete_dims=encoding.discrete_dims or None,
            cat_dims=encoding.cat_dims or None,
            q=1,
            num_restarts=num_restarts,
            raw_samples=raw_samples,
        )
    else:
        candidate, _ = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=num_restarts, raw_samples=raw_samples)
    return candidate


def _quiet_botorch_warnings() -> None:
    from botorch.exceptions.warnings import InputDataWarning, OptimizationWarning
    from linear_operator.utils.warnings import NumericalWarning

    # Expected and harmless here: tiny data sets, jitter on near-duplicate points, L-BFGS
    # stopping early on flat acquisitions (BoTorch retries from new starting points itself).
    warnings.simplefilter("ignore", InputDataWarning)
    warnings.simplefilter("ignore", OptimizationWarning)
    warnings.simplefilter("ignore", NumericalWarning)
    warnings.filterwarnings("ignore", message="Optimization failed", category=RuntimeWarning)


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
    """A trial's parameters, including relative ones a running trial has not suggested yet."""
    params = dict(trial.params)
    if not trial.state.is_finished():
        stored = trial.system_attrs.get(_RELATIVE_PARAMS_KEY)
        if stored is not None:
            params = {**json.loads(stored), **params}
    return params


def _contains(dist: BaseDistribution, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
