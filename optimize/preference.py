"""Preferential Bayesian optimisation: FABRIC presets tuned from a person's choices.

A reward model is not needed when a person can say which of two results they prefer. The
person is shown a *query*: ``k`` rounds of images made with ``k`` presets on the same prompt,
seeds and reference images, and answers with the one they prefer (``k = 2``: "which do you
prefer?", ``k > 2``: a best-of-k pick). From the answers a preference model learns a latent
utility over the search space:

1. **points**: every preset shown is a point of a :class:`~optimize.space.SearchSpace` (the class
   the studies use), encoded onto the unit cube with :meth:`SearchSpace.to_unit`;
2. **model**: BoTorch's ``PairwiseGP`` (a GP on the utility with a probit likelihood of the
   comparisons), fitted with ``PairwiseLaplaceMarginalLogLikelihood``. A best-of-k answer is
   ``k - 1`` comparisons, the winner against each other option;
3. **next query**: the ``k`` points that maximise the expected utility of the best option
   (EUBO, Lin et al. 2022: ``AnalyticExpectedUtilityOfBestOption`` for ``k = 2``,
   ``qExpectedUtilityOfBestOption`` otherwise), optimised jointly on the unit cube and snapped
   to the space's integer and categorical values. The first queries are space-filling (the
   first pits the paper's defaults against a Sobol point); ``acquisition="random"`` keeps
   drawing Sobol points, the baseline of ``bench/prefer.py``;
4. **recommendation**: the shown preset with the best posterior mean utility
   (:meth:`PreferenceTuner.recommend`), exported like a study's (:func:`optimize.export.export_params`).

Storage: each tuner lives in an **Optuna study** (the storages of :mod:`optimize.study`: a journal
file by default, or an RDB URL), marked with the user attribute ``fabric_opt_kind = "preference"``
and holding its :class:`PreferenceConfig` (``fabric_opt_preference``). Every query is one user
attribute ``preference_query/<index>`` (a JSON object: the options' search values, the answer or
``null``, the context the driver gave, where the options came from). A query is written when it
is asked and written again when it is answered, each an append to the journal, so a closed
browser or a crashed process reopens the tuner on the same answers and the same unanswered
query (:meth:`PreferenceTuner.ask` returns it again instead of proposing a new one).

The tuner knows nothing about images: a driver turns a query's presets into rounds (the web
app, :class:`optimize.simulated_person.SimulatedPerson`, a script) and calls
:meth:`PreferenceTuner.tell`. :func:`run_queries` is the loop for a function that answers.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from fabric.checks import check_int
from fabric.errors import ConfigError, FabricOptError
from fabric.params import FabricParams
from optimize.space import SearchSpace

if TYPE_CHECKING:
    import optuna
    import torch

    from optimize.export import Export, ExportContext
    from optimize.study import StorageSpec

__all__ = [
    "KIND_ATTR",
    "CONFIG_ATTR",
    "QUERY_PREFIX",
    "PreferenceConfig",
    "Query",
    "RankedPreset",
    "PreferenceRecommendation",
    "PreferenceTuner",
    "Answer",
    "run_queries",
    "query_rounds",
    "FRONTEND_KNOBS",
    "frontend_space",
]

logger = logging.getLogger(__name__)

KIND_ATTR = "fabric_opt_kind"
CONFIG_ATTR = "fabric_opt_preference"
QUERY_PREFIX = "preference_query/"
_KIND = "preference"
_ROUND = 9  # decimals of unit-cube coordinates that identify a point (duplicates share a row)

Acquisition = Literal["eubo", "random"]

#: The knobs every FABRIC frontend has (A1111: start, end, min and max weight, negative scale;
#: ComfyUI all but the minimum weight), in the reparameterised form of :meth:`SearchSpace.default`.
FRONTEND_KNOBS = ("feedback_start", "feedback_span", "max_weight", "min_weight_ratio", "neg_scale")


def frontend_space(base: FabricParams | None = None) -> SearchSpace:
    """FABRIC's action space cut to :data:`FRONTEND_KNOBS` (the rest from ``base``, the paper's
    defaults unless given): five knobs a person can tell apart in a few dozen comparisons, and a
    preset the A1111 extension carries whole.
    """
    base = base or FabricParams.paper()
    return SearchSpace(tuple(p for p in SearchSpace.default(base=base).params if p.name in FRONTEND_KNOBS), base=base)


@dataclass(frozen=True)
class PreferenceConfig:
    """What a preference tuner searches and how it picks queries. Validated on construction.

    Args:
        space: the search space (``SearchSpace.default()``: FABRIC's whole action space with the
            paper's steps and guidance).
        options: presets per query; 2 asks "which do you prefer?", more asks for the best of k.
        acquisition: ``"eubo"`` (expected utility of the best option) or ``"random"`` (Sobol
            points throughout: queries chosen at random, the baseline).
        initial_queries: space-filling queries before the model chooses (at least 1).
        anchor: ``"paper"``, ``"a1111"`` or ``None``: a default preset shown as one option of
            the first query, so the person starts from something known.
        seed: seeds the Sobol sequence and the acquisition's optimiser.
        num_restarts: starting points of the acquisition's L-BFGS-B.
        raw_samples: random points the starting points are chosen from.
        mc_samples: quasi-Monte-Carlo samples of the q-EUBO (``options > 2``).
    """

    space: SearchSpace = field(default_factory=SearchSpace.default)
    options: int = 2
    acquisition: Acquisition = "eubo"
    initial_queries: int = 2
    anchor: str | None = "paper"
    seed: int = 0
    num_restarts: int = 8
    raw_samples: int = 256
    mc_samples: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.space, SearchSpace):
            raise ConfigError(f"space must be a SearchSpace, got {type(self.space).__name__}")
        if not self.space.names:
            raise ConfigError("the search space searches no parameter; there is nothing to prefer")
        check_int("options", self.options, minimum=2, error=ConfigError)
        if self.options > 8:
            raise ConfigError(f"options must be at most 8 presets per query, got {self.options}")
        if self.acquisition not in ("eubo", "random"):
            raise ConfigError(f"acquisition must be 'eubo' or 'random', got {self.acquisition!r}")
        check_int("initial_queries", self.initial_queries, minimum=1, error=ConfigError)
        if self.anchor not in (None, "paper", "a1111"):
            raise ConfigError(f"anchor must be 'paper', 'a1111' or None, got {self.anchor!r}")
        for name in ("seed", "num_restarts", "raw_samples", "mc_samples"):
            check_int(name, getattr(self, name), minimum=0 if name == "seed" else 1, error=ConfigError)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back into an equal config."""
        return {
            "space": self.space.to_dict(),
            "options": self.options,
            "acquisition": self.acquisition,
            "initial_queries": self.initial_queries,
            "anchor": self.anchor,
            "seed": self.seed,
            "num_restarts": self.num_restarts,
            "raw_samples": self.raw_samples,
            "mc_samples": self.mc_samples,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreferenceConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a preference config must be a mapping, got {type(data).__name__}")
        known = {"space", "options", "acquisition", "initial_queries", "anchor", "seed", "num_restarts"}
        known |= {"raw_samples", "mc_samples"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preference config key(s) {', '.join(unknown)}")
        values = dict(data)
        if "space" in values:
            values["space"] = SearchSpace.from_dict(values["space"])
        return cls(**values)

    def anchor_params(self) -> FabricParams | None:
        if self.anchor is None:
            return None
        return FabricParams.a1111() if self.anchor == "a1111" else FabricParams.paper()


@dataclass(frozen=True)
class Query:
    """One question to the person: which of these presets' rounds do you prefer?

    Attributes:
        index: position in the tuner's queries (0, 1, ...).
        options: the presets' search values (mappings over ``space.names``), in display order.
        winner: index into ``options`` of the preferred one; ``None`` while unanswered.
        context: what the driver showed, as JSON (prompt, seeds, references, ...); the tuner
            only stores it, so a resumed driver can show the same query again.
        source: how the options were chosen: ``"anchor"``, ``"sobol"``, ``"eubo"``,
            ``"random"`` or ``"sobol-fallback"`` (no model could be fitted).
        asked_at, answered_at: Unix times.
    """

    index: int
    options: tuple[Mapping[str, Any], ...]
    winner: int | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    source: str = "sobol"
    asked_at: float = 0.0
    answered_at: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(dict(o) for o in self.options))
        object.__setattr__(self, "context", dict(self.context))
        if self.winner is not None and not 0 <= self.winner < len(self.options):
            raise ConfigError(f"query {self.index}: the answer must be an option 0..{len(self.options) - 1}")

    @property
    def answered(self) -> bool:
        return self.winner is not None

    def params(self, space: SearchSpace) -> list[FabricParams]:
        """The options as :class:`~fabric.params.FabricParams` (fixed and base values applied)."""
        return [space.to_params(o) for o in self.options]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "options": [dict(o) for o in self.options],
            "winner": self.winner,
            "context": dict(self.context),
            "source": self.source,
            "asked_at": self.asked_at,
            "answered_at": self.answered_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Query:
        try:
            return cls(
                index=int(data["index"]),
                options=tuple(data["options"]),
                winner=None if data.get("winner") is None else int(data["winner"]),
                context=data.get("context") or {},
                source=str(data.get("source", "sobol")),
                asked_at=float(data.get("asked_at", 0.0)),
                answered_at=None if data.get("answered_at") is None else float(data["answered_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"a stored preference query is malformed ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class RankedPreset:
    """One preset the person has seen, with what the model believes of it.

    Attributes:
        values: its search values.
        params: the FABRIC parameters they give.
        utility: posterior mean of the latent utility (``nan`` without a model).
        utility_std: posterior standard deviation.
        wins, shown: how often it was preferred, and shown, in answered queries.
    """

    values: Mapping[str, Any]
    params: FabricParams
    utility: float
    utility_std: float
    wins: int
    shown: int


@dataclass(frozen=True)
class PreferenceRecommendation:
    """What :meth:`PreferenceTuner.recommend` found.

    Attributes:
        best: the recommended preset (the best posterior mean utility among those shown).
        ranked: every preset shown, best first.
        answers: answered queries the model was fitted on.
        method: ``"posterior_mean"``, or ``"wins"`` when no model could be fitted (then the
            preset with the most wins per showing is recommended).
    """

    best: RankedPreset
    ranked: tuple[RankedPreset, ...]
    answers: int
    method: str

    @property
    def params(self) -> FabricParams:
        return self.best.params


# ---- storage ------------------------------------------------------------------------------


class _MemoryStore:
    """Queries kept in memory only (tests, benchmarks)."""

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.queries: dict[int, dict[str, Any]] = {}

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        return self.config, [self.queries[i] for i in sorted(self.queries)]

    def write_config(self, data: dict[str, Any]) -> None:
        self.config = data

    def write_query(self, data: dict[str, Any]) -> None:
        self.queries[int(data["index"])] = json.loads(json.dumps(data))


class _OptunaStore:
    """Queries as user attributes of an Optuna study (see module docs)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        attrs = self.study.user_attrs
        queries = [attrs[k] for k in sorted(attrs) if k.startswith(QUERY_PREFIX)]
        return attrs.get(CONFIG_ATTR), queries

    def write_config(self, data: dict[str, Any]) -> None:
        self.study.set_user_attr(KIND_ATTR, _KIND)
        self.study.set_user_attr(CONFIG_ATTR, data)

    def write_query(self, data: dict[str, Any]) -> None:
        self.study.set_user_attr(f"{QUERY_PREFIX}{int(data['index']):05d}", data)


# ---- the tuner ----------------------------------------------------------------------------


class PreferenceTuner:
    """Asks queries, stores the answers, fits the preference model and recommends a preset.

    Use :meth:`open` for a stored tuner (created on first use, resumed afterwards) or the
    constructor for one kept in memory. Safe to call from several threads of one process (one
    lock); one process at a time should drive a stored tuner.

    Args:
        config: what to search and how.
        name: the tuner's name (the Optuna study's).

    Example:
        >>> tuner = PreferenceTuner(PreferenceConfig(space=SearchSpace.default()))
        >>> query = tuner.ask(context={"prompt": "a red fox"})
        >>> tuner.tell(query.index, winner=1)          # the person preferred the second option
        >>> tuner.recommend().params
    """

    def __init__(self, config: PreferenceConfig | None = None, *, name: str = "preference", _store: Any = None):
        self.config = config if config is not None else PreferenceConfig()
        self.name = name
        self._store = _store if _store is not None else _MemoryStore()
        self._lock = threading.RLock()
        stored, raw = self._store.read()
        if stored is None:
            self._store.write_config(self.config.to_dict())
        self._queries: list[Query] = [Query.from_dict(q) for q in raw]
        for i, q in enumerate(self._queries):
            if q.index != i:
                raise ConfigError(f"preference tuner {name!r}: stored queries are not numbered 0..n-1")
        self._model: Any = None
        self._model_answers = -1  # answers the cached model was fitted on

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        name: str,
        storage: StorageSpec | optuna.storages.BaseStorage,
        config: PreferenceConfig | None = None,
    ) -> PreferenceTuner:
        """Create the tuner ``name`` in ``storage``, or resume it.

        Args:
            name: the Optuna study name.
            storage: a :class:`~optimize.study.StorageSpec` (journal file or RDB URL) or an
                opened Optuna storage.
            config: required to create; when resuming, ``None`` takes the stored config and any
                other must equal it.

        Raises:
            ConfigError: the name holds a study that is not a preference tuner, the stored config
                differs from ``config``, or a new tuner has no config.
        """
        import optuna

        opened = storage.open() if hasattr(storage, "open") and hasattr(storage, "kind") else storage
        exists = name in optuna.get_all_study_names(opened)
        if not exists and config is None:
            raise ConfigError(f"no preference tuner named {name!r} in {storage}; give a config to create it")
        study = optuna.create_study(study_name=name, storage=opened, direction="maximize", load_if_exists=True)
        if exists:
            kind = study.user_attrs.get(KIND_ATTR)
            stored = study.user_attrs.get(CONFIG_ATTR)
            if kind != _KIND or not isinstance(stored, Mapping):
                raise ConfigError(f"{name!r} in {storage} is a study, not a preference tuner; choose another name")
            try:
                stored_config = PreferenceConfig.from_dict(stored)
            except FabricOptError as exc:
                raise ConfigError(f"the config stored with preference tuner {name!r} is invalid: {exc}") from None
            if config is not None and config.to_dict() != stored_config.to_dict():
                changed = sorted(k for k, v in config.to_dict().items() if stored[k] != v)
                raise ConfigError(
                    f"preference tuner {name!r} was created with other settings ({', '.join(changed)}); "
                    "resume it with its own settings or choose another name"
                )
            config = stored_config
            logger.info("resuming preference tuner %s from %s", name, storage)
        return cls(config, name=name, _store=_OptunaStore(study))

    # ---- views ---------------------------------------------------------------------------
    @property
    def space(self) -> SearchSpace:
        return self.config.space

    @property
    def queries(self) -> tuple[Query, ...]:
        """Every query asked so far, in order."""
        return tuple(self._queries)

    @property
    def answered(self) -> tuple[Query, ...]:
        return tuple(q for q in self._queries if q.answered)

    @property
    def pending(self) -> Query | None:
        """The query asked and not answered yet, if any (at most one)."""
        return next((q for q in self._queries if not q.answered), None)

    # ---- asking and answering ------------------------------------------------------------
    def ask(self, context: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None) -> Query:
        """The next query: the pending one if there is one, else a new one (stored first).

        Args:
            context: JSON data stored with a new query (what the driver will show), or a
                function of the query's index that returns it. Ignored for a pending query,
                which keeps the context it was asked with.
        """
        with self._lock:
            pending = self.pending
            if pending is not None:
                return pending
            index = len(self._queries)
            data = context(index) if callable(context) else (context or {})
            try:
                json.dumps(data)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"a query's context must be JSON data: {exc}") from None
            options, source = self._propose(index)
            query = Query(index, tuple(options), None, data, source, asked_at=time.time())
            self._store.write_query(query.to_dict())
            self._queries.append(query)
            return query

    def tell(self, query: Query | int, winner: int) -> Query:
        """Record the person's answer: ``winner`` is the index of the preferred option.

        Raises:
            ConfigError: no such query, an answered one, or ``winner`` out of range.
        """
        with self._lock:
            index = query.index if isinstance(query, Query) else query
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self._queries):
                raise ConfigError(f"no query {index!r}: {len(self._queries)} asked")
            current = self._queries[index]
            if current.answered:
                raise ConfigError(f"query {index} is answered already (option {current.winner})")
            if isinstance(winner, bool) or not isinstance(winner, int) or not 0 <= winner < len(current.options):
                raise ConfigError(
                    f"the answer must be one of the options 0..{len(current.options) - 1}, got {winner!r}"
                )
            done = replace(current, winner=winner, answered_at=time.time())
            self._store.write_query(done.to_dict())
            self._queries[index] = done
            return done

    # ---- model ---------------------------------------------------------------------------
    def data(self, **tensor_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """The answered queries as ``PairwiseGP`` training data.

        Returns:
            ``X``, an ``n x d``-dim Tensor of the distinct presets shown, on the unit cube;
            ``comparisons``, an ``m x 2``-dim long Tensor of (preferred row, other row); and the
            ``n`` presets' search values.
        """
        import torch

        tensor_kwargs.setdefault("dtype", torch.float64)
        rows: dict[tuple[float, ...], int] = {}
        points: list[list[float]] = []
        values: list[dict[str, Any]] = []
        pairs: list[list[int]] = []
        for q in self._queries:
            if not q.answered:
                continue
            ids = []
            for option in q.options:
                key = self._point_key(option)
                if key not in rows:
                    rows[key] = len(points)
                    points.append(list(key))
                    values.append(dict(option))
                ids.append(rows[key])
            assert q.winner is not None
            pairs += [[ids[q.winner], i] for j, i in enumerate(ids) if j != q.winner and i != ids[q.winner]]
        X = torch.tensor(points, **tensor_kwargs).reshape(len(points), len(self.space))
        comparisons = torch.tensor(pairs, dtype=torch.long).reshape(len(pairs), 2)
        return X, comparisons, values

    def _point_key(self, values: Mapping[str, Any]) -> tuple[float, ...]:
        """A preset's unit-cube coordinates, rounded: presets that agree to 1e-9 are one point."""
        return tuple(round(u, _ROUND) for u in self.space.to_unit(values)[0].tolist())

    def model(self) -> Any:
        """The ``PairwiseGP`` fitted to every answer so far (cached), or ``None`` when there is
        no comparison yet or the fit failed (a warning says why)."""
        import torch

        with self._lock:
            n = len(self.answered)
            if n == self._model_answers:
                return self._model
            X, comparisons, _ = self.data()
            model = None
            if len(comparisons):
                try:
                    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                        torch.manual_seed(_derive(self.config.seed, "fit", n))
                        _quiet_botorch_warnings()
                        model = fit_pairwise_gp(X, comparisons)
                except Exception as exc:  # noqa: BLE001 - model failures only, re-raised otherwise
                    from optimize.samplers.botorch import is_model_failure

                    if not is_model_failure(exc):
                        raise
                    warnings.warn(
                        f"no preference model after {n} answers ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:160]}); queries are space-filling until a fit succeeds",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            self._model, self._model_answers = model, n
            return model

    def utility(self, values: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
        """Posterior mean and standard deviation of the utility at search values (``nan`` without a model)."""
        import torch

        model = self.model()
        if model is None or not values:
            return [math.nan] * len(values), [math.nan] * len(values)
        X = self.space.to_unit(list(values))
        with torch.no_grad():
            posterior = model.posterior(X)
            mean = posterior.mean.reshape(-1).tolist()
            std = posterior.variance.clamp_min(0).sqrt().reshape(-1).tolist()
        return mean, std

    def recommend(self) -> PreferenceRecommendation:
        """The shown preset with the best posterior mean utility (see module docs).

        Raises:
            ConfigError: no query is answered yet.
        """
        with self._lock:
            answered = self.answered
            if not answered:
                raise ConfigError("no answers yet: answer a query before asking for a recommendation")
            _, _, values = self.data()
            wins = [0] * len(values)
            shown = [0] * len(values)
            index = {self._point_key(v): i for i, v in enumerate(values)}
            for q in answered:
                for j, option in enumerate(q.options):
                    i = index[self._point_key(option)]
                    shown[i] += 1
                    wins[i] += j == q.winner
            mean, std = self.utility(values)
            method = "posterior_mean" if not math.isnan(mean[0]) else "wins"
            ranked = [
                RankedPreset(v, self.space.to_params(v), m, s, w, n)
                for v, m, s, w, n in zip(values, mean, std, wins, shown)
            ]
            if method == "posterior_mean":
                ranked.sort(key=lambda r: -r.utility)
            else:
                ranked.sort(key=lambda r: (-r.wins / r.shown, -r.wins))
            return PreferenceRecommendation(ranked[0], tuple(ranked), len(answered), method)

    def export(self, format: str, context: ExportContext | None = None) -> Export:
        """The recommended preset in an export format (:func:`optimize.export.export_params`)."""
        from optimize.export import ExportContext, export_params

        rec = self.recommend()
        context = context or ExportContext()
        source = {
            "preference_tuner": self.name,
            "answers": rec.answers,
            "method": rec.method,
            "utility": None if math.isnan(rec.best.utility) else round(rec.best.utility, 4),
            **context.source,
        }
        return export_params(rec.params, format, replace(context, source=source))

    # ---- proposals -----------------------------------------------------------------------
    def _propose(self, index: int) -> tuple[list[dict[str, Any]], str]:
        cfg = self.config
        k = cfg.options
        if index == 0 and cfg.anchor is not None:
            anchor = self.space.from_params(cfg.anchor_params(), clip=True)  # type: ignore[arg-type]
            return [anchor, *self._sobol(index, k - 1)], "anchor"
        if index < cfg.initial_queries or cfg.acquisition == "random":
            return self._sobol(index, k), "sobol" if index < cfg.initial_queries else "random"
        model = self.model()
        if model is None:
            return self._sobol(index, k), "sobol-fallback"
        try:
            return self._eubo(model, index), "eubo"
        except Exception as exc:  # noqa: BLE001 - model failures only, re-raised otherwise
            from optimize.samplers.botorch import is_model_failure

            if not is_model_failure(exc):
                raise
            warnings.warn(
                f"EUBO failed for query {index} ({type(exc).__name__}); asking a space-filling query instead",
                RuntimeWarning,
                stacklevel=2,
            )
            return self._sobol(index, k), "sobol-fallback"

    def _sobol(self, index: int, n: int) -> list[dict[str, Any]]:
        """``n`` points of the scrambled Sobol sequence, ``k`` per query index (distinct per index)."""
        import torch
        from torch.quasirandom import SobolEngine

        engine = SobolEngine(len(self.space), scramble=True, seed=self.config.seed)
        start = index * self.config.options
        if start:
            engine.fast_forward(start)
        unit = engine.draw(n, dtype=torch.float64)
        return self.space.from_unit(unit)

    def _eubo(self, model: Any, index: int) -> list[dict[str, Any]]:
        import torch
        from botorch.optim import optimize_acqf

        cfg = self.config
        d = len(self.space)
        bounds = torch.stack([torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)])
        seed = _derive(cfg.seed, "eubo", index)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)
            _quiet_botorch_warnings()
            if cfg.options == 2:
                from botorch.acquisition.preference import AnalyticExpectedUtilityOfBestOption

                acqf: Any = AnalyticExpectedUtilityOfBestOption(pref_model=model)
            else:
                from botorch.acquisition.preference import qExpectedUtilityOfBestOption
                from botorch.sampling import SobolQMCNormalSampler

                sampler = SobolQMCNormalSampler(sample_shape=torch.Size([cfg.mc_samples]), seed=seed)
                acqf = qExpectedUtilityOfBestOption(pref_model=model, sampler=sampler)
            candidates, _ = optimize_acqf(
                acqf, bounds=bounds, q=cfg.options, num_restarts=cfg.num_restarts, raw_samples=cfg.raw_samples
            )  # (k, d) on the unit cube
        options = self.space.from_unit(candidates.detach())
        # Snapping to integers can make two options equal; then the second becomes a Sobol point.
        seen: set[str] = set()
        for j, option in enumerate(options):
            key = json.dumps(option, sort_keys=True)
            if key in seen:
                options[j] = self._sobol(index, cfg.options)[j]
            seen.add(json.dumps(options[j], sort_keys=True))
        return options


def fit_pairwise_gp(X: torch.Tensor, comparisons: torch.Tensor) -> Any:
    """A ``PairwiseGP`` on presets ``X`` (``n x d``, unit cube) and ``comparisons`` (``m x 2``,
    preferred row first), fitted with ``PairwiseLaplaceMarginalLogLikelihood``."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models.pairwise_gp import PairwiseGP, PairwiseLaplaceMarginalLogLikelihood

    model = PairwiseGP(X, comparisons)
    fit_gpytorch_mll(PairwiseLaplaceMarginalLogLikelihood(model.likelihood, model))
    return model


# ---- drivers ------------------------------------------------------------------------------

#: ``answer(query, params) -> winner``: the person (or a function standing in for one) looks at
#: the query's options (``params[i]`` is option ``i`` as FabricParams) and returns the index of
#: the preferred one.
Answer = Callable[[Query, list[FabricParams]], int]


def run_queries(
    tuner: PreferenceTuner,
    answer: Answer,
    budget: int,
    *,
    context: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    on_answer: Callable[[Query], None] | None = None,
) -> PreferenceRecommendation:
    """Ask and answer queries until ``budget`` queries are answered in all (a resumed tuner
    continues where it stopped, its pending query first), then recommend.

    Args:
        tuner: the tuner.
        answer: returns the preferred option of a query (see :data:`Answer`).
        budget: total answered queries wanted (not additional ones).
        context: context of new queries (see :meth:`PreferenceTuner.ask`).
        on_answer: called with every answered query.
    """
    check_int("budget", budget, minimum=0, error=ConfigError)
    while len(tuner.answered) < budget:
        query = tuner.ask(context)
        winner = answer(query, query.params(tuner.space))
        done = tuner.tell(query, winner)
        logger.info("query %d (%s): option %d preferred", done.index, done.source, winner)
        if on_answer is not None:
            on_answer(done)
    if not tuner.answered:
        raise ConfigError("no answers yet: give a budget of at least one query")
    return tuner.recommend()


def query_rounds(
    generator: Any,
    params: Sequence[FabricParams],
    *,
    prompt: str,
    seeds: Sequence[int],
    negative_prompt: str = "",
    liked: Sequence[Any] = (),
    disliked: Sequence[Any] = (),
    height: int | None = None,
    width: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[Any]]:
    """One round per preset on the same prompt, seeds and references: what a query shows.

    Args:
        generator: a :class:`~fabric.fabric_generator.FabricGenerator` (or anything with its
            ``generate``).
        params: one preset per option.
        seeds: one seed per image (the same for every option).
        progress: ``progress(done, total)`` over all options' denoising steps.

    Returns:
        ``[option][image]`` PIL images.
    """
    rounds = []
    total = sum(p.steps for p in params)
    done = 0
    for p in params:

        def step(i: int, _total: int, offset: int = done) -> None:
            if progress is not None:
                progress(offset + i, total)

        rounds.append(
            generator.generate(
                prompt,
                negative_prompt=negative_prompt,
                liked=list(liked),
                disliked=list(disliked),
                params=p,
                n_images=len(seeds),
                seed=list(seeds),
                height=height,
                width=width,
                **({"progress": step} if progress is not None else {}),
            )
        )
        done += p.steps
    return rounds


def _derive(*parts: object) -> int:
    from fabric.seeds import stable_seed

    return stable_seed("preference", *parts) % (2**31)


# Copied from optimize.samplers.botorch._quiet_botorch_warnings
def _quiet_botorch_warnings() -> None:
    from botorch.exceptions.warnings import InputDataWarning, OptimizationWarning
    from linear_operator.utils.warnings import NumericalWarning

    # Expected and harmless here: tiny data sets, jitter on near-duplicate points, L-BFGS
    # stopping early on flat acquisitions (BoTorch retries from new starting points itself).
    warnings.simplefilter("ignore", InputDataWarning)
    warnings.simplefilter("ignore", OptimizationWarning)
    warnings.simplefilter("ignore", NumericalWarning)
    warnings.filterwarnings("ignore", message="Optimization failed", category=RuntimeWarning)
